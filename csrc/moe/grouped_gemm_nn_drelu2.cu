// Grouped GEMM kNNdReLU2: d[rows_e] = (a[rows_e] @ b[e]) * 2 sqrt(c[rows_e]), bf16, c = relu(pre)^2
// (backward: through the down projection into the up projection's pre-activation).
#include "moe/grouped_gemm_sm90.cuh"

namespace nk::moe {
namespace {

using namespace sm90;
using Tile = Shape<_128, _256, _64>;
using Config = GroupedGemm<Bf16, RowMajor, RowMajor, Bf16, EpiReLU2Grad, Tile>;

}  // namespace

size_t grouped_gemm_nn_drelu2_workspace(int groups, int sm_count) {
  return sm90::workspace_bytes<Config>(groups, sm_count);
}

const char* grouped_gemm_nn_drelu2_run(const GroupedGemmParams& p) {
  return sm90::run<Config, GemmKind::kNNdReLU2>(p);
}

}  // namespace nk::moe
