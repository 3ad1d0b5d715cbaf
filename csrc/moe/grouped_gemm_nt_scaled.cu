// Grouped GEMM kNTScaled: d[rows_e] = (a[rows_e] @ b[e]^T) * a_scale[row], bf16 (the down projection with each
// row's routing weight applied in the epilogue); the tiles and cluster of kNT.
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(nt_scaled, kNTScaled, 128, 192, 64,
                   GroupedGemm<Bf16, RowMajor, ColumnMajor, EpiRowScale<Tile>, Tile, false, Shape<_1, _2, _1>>)
