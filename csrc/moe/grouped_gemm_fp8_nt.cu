// Grouped GEMM kFp8NT: d[rows_e] = a[rows_e] @ b[e]^T * a_scale[row] * b_scale[e, col], e4m3 operands
// (FP8 down projection). 128x256 tiles (fast accumulation: one fp32 accumulator, so the wide
// tile fits in registers).
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(fp8_nt, kFp8NT, 128, 256, 128,
                   GroupedGemm<Fp8, RowMajor, ColumnMajor, EpiDequant<Tile, Bf16>, Tile>)
