// Grouped GEMM kFp8NTReLU2: as grouped_gemm_fp8_nt_relu2.cu, for few rows per expert (decode):
// 64x64x128 tiles on ping-pong warp groups, so that even T = 1 (6 experts) spreads each expert's
// weights over many CTAs.
#include "moe/grouped_gemm_sm90.cuh"

namespace nk::moe {
namespace {

using namespace sm90;
using Tile = Shape<_64, _64, _128>;
using Config = GroupedGemm<Fp8, RowMajor, ColumnMajor, void, EpiDequantReLU2<Tile>, Tile, /*PingPong=*/true>;

}  // namespace

size_t grouped_gemm_fp8_nt_relu2_small_workspace(int groups, int sm_count) {
  return sm90::workspace_bytes<Config>(groups, sm_count);
}

const char* grouped_gemm_fp8_nt_relu2_small_run(const GroupedGemmParams& p) {
  return sm90::run<Config, GemmKind::kFp8NTReLU2>(p);
}

}  // namespace nk::moe
