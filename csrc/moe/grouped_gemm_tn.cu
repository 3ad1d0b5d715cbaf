// Grouped GEMM kTN: d[e] = a[rows_e]^T @ b[rows_e], bf16 (backward: weight gradients, K = the group's rows).
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(tn, kTN, 128, 256, 64,
                   GroupedGemm<Bf16, ColumnMajor, RowMajor, EpiIdentity, Tile>)
