// Grouped GEMM kFp8NT: d[rows_e] = a[rows_e] @ b[e]^T * a_scale[row] * b_scale[e, col], e4m3 operands
// (FP8 down projection). 128x256 tiles (fast accumulation: one fp32 accumulator, so the wide
// tile fits in registers).
#include "moe/grouped_gemm_sm90.cuh"

namespace nk::moe {
namespace {

using namespace sm90;
using Tile = Shape<_128, _256, _128>;
using Config = GroupedGemm<Fp8, RowMajor, ColumnMajor, void, EpiDequant<Tile, Bf16>, Tile>;

}  // namespace

size_t grouped_gemm_fp8_nt_workspace(int groups, int sm_count) {
  return sm90::workspace_bytes<Config>(groups, sm_count);
}

const char* grouped_gemm_fp8_nt_run(const GroupedGemmParams& p) {
  return sm90::run<Config, GemmKind::kFp8NT>(p);
}

}  // namespace nk::moe
