// Grouped GEMM kNT: d[rows_e] = a[rows_e] @ b[e]^T, bf16
// (forward projection without activation: the down projection).
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(nt, kNT, 128, 192, 64,
                   GroupedGemm<Bf16, RowMajor, ColumnMajor, EpiIdentity, Tile, false, Shape<_1, _2, _1>>)
