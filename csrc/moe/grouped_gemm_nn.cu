// Grouped GEMM kNN: d[rows_e] = a[rows_e] @ b[e], bf16 (backward: gradient of the input rows).
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(nn, kNN, 128, 192, 64,
                   GroupedGemm<Bf16, RowMajor, RowMajor, EpiIdentity, Tile>)
