// Grouped GEMM kNTScaled with swapped operands, for a few rows per expert (decode batches): d^T = b[e] @
// a[rows_e]^T on the 128x32x128 tiles of kNT's swapped kernel, each row's scale applied to d^T's column.
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(nt_scaled_swap, kNTScaled, 128, 32, 128,
                   GroupedGemm<Bf16, RowMajor, ColumnMajor, EpiRowScaleSwap<Tile>, Tile, /*SwapAB=*/true>)
