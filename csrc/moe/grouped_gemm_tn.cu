// Grouped GEMM kTN: d[e] = a[rows_e]^T @ b[rows_e], bf16 (backward: weight gradients, K = the group's rows).
#include "moe/grouped_gemm_sm90.cuh"

namespace nk::moe {
namespace {

using namespace sm90;
using Tile = Shape<_128, _256, _64>;
using Config = GroupedGemm<Bf16, ColumnMajor, RowMajor, void, EpiIdentity, Tile>;

}  // namespace

size_t grouped_gemm_tn_workspace(int groups, int sm_count) {
  return sm90::workspace_bytes<Config>(groups, sm_count);
}

const char* grouped_gemm_tn_run(const GroupedGemmParams& p) {
  return sm90::run<Config, GemmKind::kTN>(p);
}

}  // namespace nk::moe
