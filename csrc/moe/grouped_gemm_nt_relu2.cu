// Grouped GEMM kNTReLU2: d[rows_e] = relu(a[rows_e] @ b[e]^T)^2, bf16
// (forward up projection, squared ReLU fused).
#include "moe/grouped_gemm_sm90.cuh"

namespace nk::moe {
namespace {

using namespace sm90;
using Tile = Shape<_128, _256, _64>;
using Config = GroupedGemm<Bf16, RowMajor, ColumnMajor, void, EpiReLU2, Tile>;

}  // namespace

size_t grouped_gemm_nt_relu2_workspace(int groups, int sm_count) {
  return sm90::workspace_bytes<Config>(groups, sm_count);
}

const char* grouped_gemm_nt_relu2_run(const GroupedGemmParams& p) {
  return sm90::run<Config, GemmKind::kNTReLU2>(p);
}

}  // namespace nk::moe
