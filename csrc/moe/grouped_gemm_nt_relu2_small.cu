// Grouped GEMM kNTReLU2: as grouped_gemm_nt_relu2.cu, for few rows per expert (decode):
// 64x64x128 tiles on ping-pong warp groups, so that even T = 1 (6 experts) spreads each expert's
// weights over many CTAs.
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(nt_relu2_small, kNTReLU2, 64, 64, 128,
                   GroupedGemm<Bf16, RowMajor, ColumnMajor, void, EpiReLU2, Tile, /*PingPong=*/true>)
