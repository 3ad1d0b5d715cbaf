// Grouped GEMM kFp8NT with swapped operands, for a few rows per expert (decode batches): d^T = b[e] @ a[rows_e]^T
// on 128x32x256 cooperative tiles, so each expert's weights fill the MMA's M side and its rows (up to 32 per
// tile) the narrow N side, instead of 128-row tiles holding mostly padding.
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(fp8_nt_swap, kFp8NT, 128, 32, 256,
                   GroupedGemm<Fp8, RowMajor, ColumnMajor, EpiDequantSwap<Tile, Bf16>, Tile, /*SwapAB=*/true>)
