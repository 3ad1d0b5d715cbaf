// Grouped GEMM kFp8NTReLU2: d[rows_e] = relu(a[rows_e] @ b[e]^T * a_scale[row] * b_scale[e, col])^2, e4m3
// operands (FP8 up projection). 128x256 tiles (fast accumulation: one fp32 accumulator, so the
// wide tile fits in registers).
#include "moe/grouped_gemm_sm90.cuh"

namespace nk::moe {
namespace {

using namespace sm90;
using Tile = Shape<_128, _256, _128>;
using Config = GroupedGemm<Fp8, RowMajor, ColumnMajor, void, EpiDequantReLU2<Tile>, Tile>;

}  // namespace

size_t grouped_gemm_fp8_nt_relu2_workspace(int groups, int sm_count) {
  return sm90::workspace_bytes<Config>(groups, sm_count);
}

const char* grouped_gemm_fp8_nt_relu2_run(const GroupedGemmParams& p) {
  return sm90::run<Config, GemmKind::kFp8NTReLU2>(p);
}

}  // namespace nk::moe
