// Grouped GEMM kNTReLU2: d[rows_e] = relu(a[rows_e] @ b[e]^T)^2, bf16
// (forward up projection, squared ReLU fused).
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(nt_relu2, kNTReLU2, 128, 192, 64,
                   GroupedGemm<Bf16, RowMajor, ColumnMajor, EpiReLU2, Tile, false, Shape<_1, _2, _1>>)
