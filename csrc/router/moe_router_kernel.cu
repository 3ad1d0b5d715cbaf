// Router CUDA kernel: one warp per token, fused from the fp32 logits to (topk_idx, topk_weight, counts).
//
// Lane l holds experts e = l + 32 j (j < VPT = ceil(E / 32) rounded up to a power of two) in registers:
// its sigmoid score and its 64-bit selection key (moe_router_common.h). Each of the k rounds takes the
// warp's largest key (warp_max: two redux.sync), so ties go to the lower expert index exactly as on
// the CPU. The logits of a warp's next token are loaded while it selects for the current one.
// Counts: a per-block shared histogram, written straight out when one block covers all tokens (no memset),
// otherwise added with integer atomics into a zeroed buffer (deterministic): zeroed by the logits GEMV before it
// when the host entry runs both (moe_router_few), else by a memset.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "router/moe_router_common.h"

namespace nk::router {
namespace {

constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kSharedBudget = 48 * 1024;  // default dynamic shared memory limit, no opt-in needed
constexpr int64_t kOneBlockMaxTokens = 16;

// Threads per block the kernel is built for: more scores per lane need more registers (no spills at these).
template <int VPT>
constexpr int kMaxThreads = VPT <= 4 ? 1024 : (VPT <= 8 ? 256 : 128);

__host__ __device__ constexpr int align8(int bytes) { return (bytes + 7) & ~7; }

// sigmoid evaluated in fp64 and rounded once to fp32 (the CPU kernel and the reference do the same).
__device__ __forceinline__ float sigmoid_rn(float x) {
  return static_cast<float>(1.0 / (1.0 + exp(-static_cast<double>(x))));
}

// The warp's largest 64-bit key: two 32-bit redux.sync (sm_80+), the high words, then the low words of the lanes
// holding the largest high word; a butterfly of 64-bit shuffles took 10 shuffles per round.
__device__ __forceinline__ uint64_t warp_max(uint64_t v) {
#if __CUDA_ARCH__ >= 800
  const uint32_t hi = __reduce_max_sync(kFullMask, static_cast<uint32_t>(v >> 32));
  const uint32_t mine = static_cast<uint32_t>(v >> 32) == hi ? static_cast<uint32_t>(v) : 0u;
  const uint32_t lo = __reduce_max_sync(kFullMask, mine);
  return (static_cast<uint64_t>(hi) << 32) | lo;
#else
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const uint64_t other = __shfl_xor_sync(kFullMask, static_cast<unsigned long long>(v), offset);
    v = other > v ? other : v;
  }
  return v;
#endif
}

template <int VPT>
__device__ __forceinline__ void load_row(float (&raw)[VPT], const float* __restrict__ row, int num_experts,
                                         int lane) {
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const int e = lane + 32 * j;
    raw[j] = e < num_experts ? __ldg(row + e) : 0.f;
  }
}

// Group-limited selection for one token (n_group > 1): lane l scores groups g = l + 32 m from the
// selection scores in shared memory, the warp keeps the best `topk_group` groups, and every lane masks its
// own experts outside them to -inf. Only the owner lane touches group_key[g], so no cross-lane hazards there.
template <int VPT>
__device__ __forceinline__ void mask_groups(const RouterArgs& a, uint64_t (&key)[VPT], const float* selection,
                                            uint64_t* group_key, int lane) {
  const int group_size = a.num_experts / a.n_group;
  for (int g = lane; g < a.n_group; g += 32) {
    uint64_t key1 = 0, key2 = 0;
    float top1 = 0.f, top2 = 0.f;
    for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
      const float v = selection[e];
      const uint64_t k = make_key(v, e);
      if (k > key1) {
        key2 = key1, top2 = top1;
        key1 = k, top1 = v;
      } else if (k > key2) {
        key2 = k, top2 = v;
      }
    }
    group_key[g] = make_key(group_size >= 2 ? top1 + top2 : top1, g);
  }
  uint32_t keep = 0;  // bit j: expert lane + 32 j lies in a kept group
  for (int r = 0; r < a.topk_group; ++r) {
    uint64_t best = 0;
    for (int g = lane; g < a.n_group; g += 32) best = group_key[g] > best ? group_key[g] : best;
    const uint64_t win = warp_max(best);
    const int g_win = static_cast<int>(key_index(win));
    if ((g_win & 31) == lane) group_key[g_win] = 0;
#pragma unroll
    for (int j = 0; j < VPT; ++j)
      if ((lane + 32 * j) / group_size == g_win) keep |= 1u << j;
  }
  const float masked = -__int_as_float(0x7f800000);  // -inf
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const int e = lane + 32 * j;
    if (e < a.num_experts && !(keep & (1u << j))) key[j] = make_key(masked, e);
  }
}

// Shared memory: hist int[E] (8-aligned), then per warp:
//   [grouped] group_key u64[G], selection f32[E];   always: res_score f32[k], res_index i32[k].
template <int VPT>
__global__ void __launch_bounds__(kMaxThreads<VPT>)
    moe_router_kernel(const RouterArgs a, int64_t tokens_per_block, int warp_smem_bytes, bool counts_direct) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int num_experts = a.num_experts, top_k = a.top_k;
  const bool grouped = a.n_group > 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = blockDim.x >> 5;

  int* hist = reinterpret_cast<int*>(smem);  // [E]
  unsigned char* warp_smem = smem + align8(4 * num_experts) + warp * warp_smem_bytes;
  uint64_t* group_key = reinterpret_cast<uint64_t*>(warp_smem);                            // [G]
  float* selection = reinterpret_cast<float*>(warp_smem + 8 * a.n_group);                 // [E]
  float* res_score = reinterpret_cast<float*>(warp_smem + (grouped ? 8 * a.n_group + 4 * num_experts : 0));
  int* res_index = reinterpret_cast<int*>(res_score + top_k);                             // [k]

  // The first token's logits and the bias asked for together, before the barrier (no round trip after it)
  const int64_t t_begin = blockIdx.x * tokens_per_block;
  const int64_t t_end = a.num_tokens < t_begin + tokens_per_block ? a.num_tokens : t_begin + tokens_per_block;
  float raw[VPT];  // logits of the warp's current token
  if (t_begin + warp < t_end) load_row<VPT>(raw, a.logits + (t_begin + warp) * num_experts, num_experts, lane);
  float bias[VPT];
#pragma unroll
  for (int j = 0; j < VPT; ++j) bias[j] = lane + 32 * j < num_experts ? __ldg(a.bias + lane + 32 * j) : 0.f;
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) hist[e] = 0;
  __syncthreads();

  for (int64_t t = t_begin + warp; t < t_end; t += num_warps) {
    float score[VPT];
    uint64_t key[VPT];
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      const int e = lane + 32 * j;
      score[j] = sigmoid_rn(raw[j]);
      const float sel = score[j] + bias[j];
      key[j] = e < num_experts ? make_key(sel, e) : 0;
      if (grouped && e < num_experts) selection[e] = sel;
    }
    if (t + num_warps < t_end) load_row<VPT>(raw, a.logits + (t + num_warps) * num_experts, num_experts, lane);
    if (grouped) {
      __syncwarp();
      mask_groups<VPT>(a, key, selection, group_key, lane);
    }

    float sum = 0.f;  // in selection order, like the CPU kernel
    for (int r = 0; r < top_k; ++r) {
      uint64_t best = 0;
      float best_score = 0.f;
#pragma unroll
      for (int j = 0; j < VPT; ++j) {
        if (key[j] > best) {
          best = key[j];
          best_score = score[j];
        }
      }
      const uint64_t win = warp_max(best);
      const uint32_t e = key_index(win);
      const float s = __shfl_sync(kFullMask, best_score, e & 31);  // the owner lane's best is the winner
#pragma unroll
      for (int j = 0; j < VPT; ++j) key[j] = key[j] == win ? 0 : key[j];
      if (lane == 0) {
        res_score[r] = s;
        res_index[r] = static_cast<int>(e);
      }
      sum += s;
    }
    __syncwarp();
    const float denom = sum + kRenormEps;
    for (int r = lane; r < top_k; r += 32) {
      const int e = res_index[r];
      a.topk_idx[t * top_k + r] = e;
      a.topk_weight[t * top_k + r] = res_score[r] / denom * a.scale;
      atomicAdd(hist + e, 1);
    }
    __syncwarp();  // res_* and selection are rewritten for the next token
  }

  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    if (counts_direct) {
      a.counts[e] = hist[e];
    } else if (hist[e] != 0) {
      atomicAdd(a.counts + e, hist[e]);
    }
  }
}

template <int VPT>
cudaError_t launch(const RouterArgs& a, int num_sms, cudaStream_t stream) {
  const bool grouped = a.n_group > 1;
  const int warp_smem = align8((grouped ? 8 * a.n_group + 4 * a.num_experts : 0) + 8 * a.top_k);
  const int hist_smem = align8(4 * a.num_experts);
  const int warps_fit = std::min(kMaxThreads<VPT> / 32, (kSharedBudget - hist_smem) / warp_smem);
  int warps;
  int64_t tokens_per_block;
  bool counts_direct;
  // One block writes the counts directly (no memset launch) but puts every token's fp64 sigmoids on one SM: at 64
  // tokens that took 12.2 us against 6.1 us for 1024 tokens spread out (bench/NOTES.md), so only a few tokens.
  if (a.num_tokens <= std::min<int64_t>(kOneBlockMaxTokens, 2 * warps_fit)) {
    warps = static_cast<int>(std::min<int64_t>(warps_fit, a.num_tokens));
    tokens_per_block = a.num_tokens;
    counts_direct = true;
  } else {  // ~32 warps per SM; each warp takes tokens_per_block / warps tokens
    warps = std::min(warps_fit, 8);
    const int64_t warps_wanted = 32LL * std::max(num_sms, 1);
    const int64_t tokens_per_warp = std::clamp<int64_t>((a.num_tokens + warps_wanted - 1) / warps_wanted, 1, 16);
    tokens_per_block = warps * tokens_per_warp;
    counts_direct = false;
    if (!a.counts_zeroed) {  // a graph node of 0.8 us at T = 17..64 (scripts/prof_router.py) unless the GEMV did it
      const cudaError_t err = cudaMemsetAsync(a.counts, 0, sizeof(int32_t) * a.num_experts, stream);
      if (err != cudaSuccess) return err;
    }
  }
  const int64_t blocks = (a.num_tokens + tokens_per_block - 1) / tokens_per_block;
  const size_t smem = static_cast<size_t>(hist_smem) + static_cast<size_t>(warps) * warp_smem;
  moe_router_kernel<VPT><<<static_cast<unsigned>(blocks), 32 * warps, smem, stream>>>(a, tokens_per_block, warp_smem,
                                                                                      counts_direct);
  return cudaGetLastError();
}

}  // namespace

cudaError_t moe_router_cuda(const RouterArgs& a, int num_sms, cudaStream_t stream) {
  if (a.num_tokens == 0) return cudaMemsetAsync(a.counts, 0, sizeof(int32_t) * a.num_experts, stream);
  const int per_lane = (a.num_experts + 31) / 32;
  if (per_lane <= 1) return launch<1>(a, num_sms, stream);
  if (per_lane <= 2) return launch<2>(a, num_sms, stream);
  if (per_lane <= 4) return launch<4>(a, num_sms, stream);
  if (per_lane <= 8) return launch<8>(a, num_sms, stream);
  if (per_lane <= 16) return launch<16>(a, num_sms, stream);
  return launch<32>(a, num_sms, stream);  // E <= kCudaMaxExperts, checked by the host entry
}

}  // namespace nk::router
