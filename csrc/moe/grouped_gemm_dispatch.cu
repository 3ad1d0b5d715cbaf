// Dispatch from GemmKind to the translation unit that instantiates it; the multiprocessor-count cache.
#include "moe/moe_kernels.h"

namespace nk::moe {

#define NK_GEMM_TU(name)                                           \
  size_t grouped_gemm_##name##_workspace(int groups, int sm_count); \
  const char* grouped_gemm_##name##_run(const GroupedGemmParams& p);
NK_GEMM_TU(nt)
NK_GEMM_TU(nt_relu2)
NK_GEMM_TU(nn)
NK_GEMM_TU(tn)
NK_GEMM_TU(fp8_nt)
NK_GEMM_TU(fp8_nt_relu2)
NK_GEMM_TU(nt_swap)
NK_GEMM_TU(nt_relu2_swap)
NK_GEMM_TU(fp8_nt_swap)
NK_GEMM_TU(fp8_nt_relu2_swap)
NK_GEMM_TU(nt_scaled)
NK_GEMM_TU(nt_scaled_swap)
#undef NK_GEMM_TU

namespace {

struct GemmEntry {
  size_t (*workspace)(int, int);
  const char* (*run)(const GroupedGemmParams&);
};

#define NK_ENTRY(name) GemmEntry{grouped_gemm_##name##_workspace, grouped_gemm_##name##_run}
GemmEntry entry_of(GemmKind kind, GemmPath path) {
  const bool swap = path == GemmPath::kSwapAB;
  switch (kind) {
    case GemmKind::kNT: return swap ? NK_ENTRY(nt_swap) : NK_ENTRY(nt);
    case GemmKind::kNTReLU2: return swap ? NK_ENTRY(nt_relu2_swap) : NK_ENTRY(nt_relu2);
    case GemmKind::kNN: return NK_ENTRY(nn);
    case GemmKind::kTN: return NK_ENTRY(tn);
    case GemmKind::kFp8NT: return swap ? NK_ENTRY(fp8_nt_swap) : NK_ENTRY(fp8_nt);
    case GemmKind::kFp8NTReLU2: return swap ? NK_ENTRY(fp8_nt_relu2_swap) : NK_ENTRY(fp8_nt_relu2);
    case GemmKind::kNTScaled: return swap ? NK_ENTRY(nt_scaled_swap) : NK_ENTRY(nt_scaled);
    case GemmKind::kW8NT:
    case GemmKind::kW8NTReLU2:
    case GemmKind::kW8NTScaled: break;                   // the GEMV only (grouped_gemv_run)
  }
  return GemmEntry{nullptr, nullptr};
}
#undef NK_ENTRY

}  // namespace

size_t grouped_gemm_workspace_bytes(GemmKind kind, GemmPath path, int groups, int sm_count) {
  if (path == GemmPath::kGemv) return 0;
  const GemmEntry entry = entry_of(kind, path);
  return entry.workspace ? entry.workspace(groups, sm_count) : 0;
}

const char* grouped_gemm_run(const GroupedGemmParams& p) {
  if (p.path == GemmPath::kGemv) return grouped_gemv_run(p);
  const GemmEntry entry = entry_of(p.kind, p.path);
  return entry.run ? entry.run(p) : "unknown grouped GEMM kind";
}

namespace {

__global__ void zero_empty_groups_kernel(const int32_t* __restrict__ offsets, int64_t m_rows, int64_t group_vec,
                                         uint4* __restrict__ d) {
  const int e = blockIdx.y;
  const int64_t start = min(max(int64_t(offsets[e]), int64_t(0)), m_rows);
  const int64_t end = min(max(int64_t(offsets[e + 1]), start), m_rows);
  if (end > start) return;
  uint4* dst = d + int64_t(e) * group_vec;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < group_vec; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = make_uint4(0, 0, 0, 0);
}

}  // namespace

void zero_empty_groups(const GroupedGemmParams& p) {
  const int64_t group_vec = int64_t(p.n) * p.k / 8;  // uint4 = 8 bf16; n % 8 == 0 is checked by the caller
  zero_empty_groups_kernel<<<dim3(32, p.groups), 256, 0, p.stream>>>(p.offsets, p.m_rows, group_vec,
                                                                      static_cast<uint4*>(p.d));
}

int sm_count_of(int device) {
  constexpr int kMaxDevices = 64;
  static int cache[kMaxDevices] = {};
  if (device >= 0 && device < kMaxDevices && cache[device] > 0) return cache[device];
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  if (device >= 0 && device < kMaxDevices) cache[device] = n;
  return n;
}

}  // namespace nk::moe
