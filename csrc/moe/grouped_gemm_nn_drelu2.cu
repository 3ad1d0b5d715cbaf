// Grouped GEMM kNNdReLU2: d[rows_e] = (a[rows_e] @ b[e]) * 2 sqrt(c[rows_e]), bf16, c = relu(pre)^2
// (backward: through the down projection into the up projection's pre-activation).
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(nn_drelu2, kNNdReLU2, 128, 192, 64,
                   GroupedGemm<Bf16, RowMajor, RowMajor, Bf16, EpiReLU2Grad, Tile>)
