// Grouped GEMM kNT with swapped operands, for a few rows per expert (decode batches): d^T = b[e] @ a[rows_e]^T
// on 128x32x128 cooperative tiles, so each expert's weights fill the MMA's M side and its rows (up to 32 per
// tile) the narrow N side, instead of 128-row tiles holding mostly padding.
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(nt_swap, kNT, 128, 32, 128,
                   GroupedGemm<Bf16, RowMajor, ColumnMajor, EpiIdentity, Tile, /*SwapAB=*/true>)
