// Grouped GEMM kNN: d[rows_e] = a[rows_e] @ b[e], bf16 (backward: gradient of the input rows).
#include "moe/grouped_gemm_sm90.cuh"

namespace nk::moe {
namespace {

using namespace sm90;
using Tile = Shape<_128, _256, _64>;
using Config = GroupedGemm<Bf16, RowMajor, RowMajor, void, EpiIdentity, Tile>;

}  // namespace

size_t grouped_gemm_nn_workspace(int groups, int sm_count) {
  return sm90::workspace_bytes<Config>(groups, sm_count);
}

const char* grouped_gemm_nn_run(const GroupedGemmParams& p) {
  return sm90::run<Config, GemmKind::kNN>(p);
}

}  // namespace nk::moe
