// Grouped GEMM kFp8NTReLU2: as grouped_gemm_fp8_nt_relu2.cu, for few rows per expert (decode):
// 64x64x128 tiles on ping-pong warp groups, so that even T = 1 (6 experts) spreads each expert's
// weights over many CTAs.
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(fp8_nt_relu2_small, kFp8NTReLU2, 64, 64, 128,
                   GroupedGemm<Fp8, RowMajor, ColumnMajor, void, EpiDequantReLU2<Tile>, Tile, /*PingPong=*/true>)
