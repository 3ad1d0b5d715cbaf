// Grouped GEMM kFp8NTReLU2: d[rows_e] = relu(a[rows_e] @ b[e]^T * a_scale[row] * b_scale[e, col])^2, e4m3
// operands (FP8 up projection). 128x192 tiles: N = 1856 takes 10 of them (3% padding; 128x256 pads 10%), and
// 1.5% faster than 128x256 at T = 16384 (bench/NOTES.md, session 18).
#include "moe/grouped_gemm_sm90.cuh"

NK_GROUPED_GEMM_TU(fp8_nt_relu2, kFp8NTReLU2, 128, 192, 128,
                   GroupedGemm<Fp8, RowMajor, ColumnMajor, EpiDequantReLU2<Tile>, Tile>)
