// Grouped GEMM kNT: d[rows_e] = a[rows_e] @ b[e]^T, bf16
// (forward projection without activation: the down projection).
#include "moe/grouped_gemm_sm90.cuh"

namespace nk::moe {
namespace {

using namespace sm90;
using Tile = Shape<_128, _256, _64>;
using Config = GroupedGemm<Bf16, RowMajor, ColumnMajor, void, EpiIdentity, Tile>;

}  // namespace

size_t grouped_gemm_nt_workspace(int groups, int sm_count) {
  return sm90::workspace_bytes<Config>(groups, sm_count);
}

const char* grouped_gemm_nt_run(const GroupedGemmParams& p) {
  return sm90::run<Config, GemmKind::kNT>(p);
}

}  // namespace nk::moe
