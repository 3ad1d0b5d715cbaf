// Grouped GEMM kFp8NTReLU2: d[rows_e] = relu(a[rows_e] @ b[e]^T * a_scale[row] * b_scale[e, col])^2, e4m3
// operands (FP8 up projection). 128x256 tiles (fast accumulation: one fp32 accumulator, so the
// wide tile fits in registers).
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(fp8_nt_relu2, kFp8NTReLU2, 128, 256, 128,
                   GroupedGemm<Fp8, RowMajor, ColumnMajor, void, EpiDequantReLU2<Tile>, Tile>)
