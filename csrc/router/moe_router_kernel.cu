// Router CUDA kernel: one warp per token, fused from the fp32 logits to (topk_idx, topk_weight, counts).
//
// Lane l holds experts e = l + 32 j (j < VPT = ceil(E / 32) rounded up to a power of two) in registers:
// its sigmoid score and its 64-bit selection key (moe_router_common.h). Each of the k rounds takes the
// warp's largest key (warp_max: two redux.sync), so ties go to the lower expert index exactly as on
// the CPU. The logits of a warp's next token are loaded while it selects for the current one.
// Counts: a per-block shared histogram, written straight out when one block covers all tokens (no memset),
// otherwise added with integer atomics into a zeroed buffer (deterministic): zeroed by the logits GEMV before it
// when the host entry runs both (moe_router_few), else by a memset.
// Permutation mode (moe_router_permute_cuda): no counts and no memset; each block ranks its own assignments after
// selecting them and writes its expert histogram, then place_kernel (a second launch) sums the histograms into
// counts and offsets and writes the expert-sorted permutation, bitwise what moe_permute's ranking launches write.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <cub/block/block_scan.cuh>

#include "moe/moe_device.cuh"
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
//   [grouped] group_key u64[G], selection f32[E];   always: res_score f32[k], res_index i32[k];
// then, in permutation mode, warp_count int[warps][E] (rank_round's).
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
  const bool permute = a.block_hist != nullptr;
  int32_t* warp_count = reinterpret_cast<int32_t*>(smem + align8(4 * num_experts) + num_warps * warp_smem_bytes);
  for (int e = threadIdx.x; e < num_experts * (permute ? num_warps + 1 : 1); e += blockDim.x) {
    if (e < num_experts) hist[e] = 0;
    else warp_count[e - num_experts] = 0;
  }
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
      if (!permute) atomicAdd(hist + e, 1);
    }
    __syncwarp();  // res_* and selection are rewritten for the next token
  }

  __syncthreads();
  if (permute) {  // the block's assignments, in index order, ranked per expert (topk_idx of this block's warps)
    const int64_t a_begin = t_begin * top_k, a_end = t_end * top_k;
    for (int64_t base = a_begin; base < a_end; base += blockDim.x) {  // uniform trip count: the barriers match
      const int64_t i = base + threadIdx.x;
      int e = i < a_end ? a.topk_idx[i] : -1;
      if (e < 0 || e >= num_experts) e = -1;
      const int r = moe::rank_round(e, hist, warp_count, num_experts, num_warps);
      if (i < a_end) a.local_rank[i] = r;
    }
    for (int e = threadIdx.x; e < num_experts; e += blockDim.x)
      a.block_hist[int64_t(e) * gridDim.x + blockIdx.x] = hist[e];
    return;
  }
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    if (counts_direct) {
      a.counts[e] = hist[e];
    } else if (hist[e] != 0) {
      atomicAdd(a.counts + e, hist[e]);
    }
  }
}

// The launch shape for `a`: warps per block, tokens per block, blocks, shared memory, whether one block writes the
// counts directly.
struct Grid {
  int warps, warp_smem;
  int64_t tokens_per_block, blocks;
  size_t smem;
  bool counts_direct;
};

// permute: the permutation mode's shape (each warp also holds a row of warp_count), whether or not a.block_hist
// is set yet (the host entry sizes block_hist from it before setting it).
template <int VPT>
Grid grid_for(const RouterArgs& a, int num_sms, bool permute) {
  const bool grouped = a.n_group > 1;
  Grid g;
  g.warp_smem = align8((grouped ? 8 * a.n_group + 4 * a.num_experts : 0) + 8 * a.top_k);
  const int hist_smem = align8(4 * a.num_experts);
  const int per_warp = g.warp_smem + (permute ? 4 * a.num_experts : 0);   // + its row of warp_count
  const int warps_fit = std::min(kMaxThreads<VPT> / 32, (kSharedBudget - hist_smem) / per_warp);
  // One block writes the counts directly (no memset launch) but puts every token's fp64 sigmoids on one SM: at 64
  // tokens that took 12.2 us against 6.1 us for 1024 tokens spread out (bench/NOTES.md), so only a few tokens.
  if (a.num_tokens <= std::min<int64_t>(kOneBlockMaxTokens, 2 * warps_fit)) {
    g.warps = static_cast<int>(std::min<int64_t>(warps_fit, a.num_tokens));
    g.tokens_per_block = a.num_tokens;
    g.counts_direct = true;
  } else {  // ~32 warps per SM; each warp takes tokens_per_block / warps tokens
    g.warps = std::min(warps_fit, 8);
    const int64_t warps_wanted = 32LL * std::max(num_sms, 1);
    const int64_t tokens_per_warp = std::clamp<int64_t>((a.num_tokens + warps_wanted - 1) / warps_wanted, 1, 16);
    g.tokens_per_block = g.warps * tokens_per_warp;
    g.counts_direct = false;
  }
  g.blocks = (a.num_tokens + g.tokens_per_block - 1) / g.tokens_per_block;
  g.smem = static_cast<size_t>(hist_smem) + static_cast<size_t>(g.warps) * per_warp;
  return g;
}

template <int VPT>
cudaError_t launch(const RouterArgs& a, int num_sms, cudaStream_t stream) {
  const Grid g = grid_for<VPT>(a, num_sms, a.block_hist != nullptr);
  // a graph node of 0.8 us at T = 17..64 (scripts/prof_router.py) unless the GEMV zeroed the counts
  if (!g.counts_direct && !a.counts_zeroed && a.block_hist == nullptr) {
    const cudaError_t err = cudaMemsetAsync(a.counts, 0, sizeof(int32_t) * a.num_experts, stream);
    if (err != cudaSuccess) return err;
  }
  moe_router_kernel<VPT><<<static_cast<unsigned>(g.blocks), 32 * g.warps, g.smem, stream>>>(
      a, g.tokens_per_block, g.warp_smem, g.counts_direct);
  return cudaGetLastError();
}

// f(std::integral_constant<int, VPT>{}) for the scores per lane that num_experts needs.
template <class F>
auto with_vpt(int num_experts, F&& f) {
  const int per_lane = (num_experts + 31) / 32;
  if (per_lane <= 1) return f(std::integral_constant<int, 1>{});
  if (per_lane <= 2) return f(std::integral_constant<int, 2>{});
  if (per_lane <= 4) return f(std::integral_constant<int, 4>{});
  if (per_lane <= 8) return f(std::integral_constant<int, 8>{});
  if (per_lane <= 16) return f(std::integral_constant<int, 16>{});
  return f(std::integral_constant<int, 32>{});  // E <= kCudaMaxExperts, checked by the host entry
}

// Permutation mode, second launch: CTA c places the assignments of router blocks [c * bpc, (c + 1) * bpc)
// (bpc = place_blocks_per_cta: 16 at E = 128, 8 at E = 1024).
// Every CTA sums the whole block_hist [E][blocks] (a warp per expert, its lanes along the blocks: coalesced) into
// each expert's total and its count before the CTA's first block, scans the padded totals into offsets, and keeps
// each expert's first row for each of its blocks in shared memory; then each assignment's row is that first row +
// its rank. CTA 0 also writes counts, expert_offsets and the padding rows' token_of_row = -1.
constexpr int kPlaceThreads = 1024;

__global__ void __launch_bounds__(kPlaceThreads)
    place_kernel(const int32_t* __restrict__ topk_idx, const int32_t* __restrict__ local_rank,
                 const int32_t* __restrict__ block_hist, int blocks, int blocks_per_cta, int64_t tokens_per_block,
                 int64_t num_tokens, int top_k, int num_experts, int32_t* __restrict__ counts,
                 const PermutationArgs p) {
  extern __shared__ int32_t s[];
  int32_t* total = s;                             // [E]
  int32_t* start = s + num_experts;               // [E]: first row of each expert
  int32_t* first = s + 2 * num_experts;           // [bpc][E]: first row of each (block of this CTA, expert)
  using Scan = cub::BlockScan<int32_t, kPlaceThreads>;
  static_assert(sizeof(typename Scan::TempStorage) + 16 <= 5 * 1024, "place_blocks_per_cta leaves 5 KB for it");
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int32_t carry;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int kWarps = kPlaceThreads / 32;
  const int b0 = blockIdx.x * blocks_per_cta, b1 = min(b0 + blocks_per_cta, blocks);

  for (int e = warp; e < num_experts; e += kWarps) {
    int32_t all = 0, before = 0;
    for (int b = lane; b < blocks; b += 32) {
      const int32_t v = block_hist[int64_t(e) * blocks + b];
      all += v;
      before += b < b0 ? v : 0;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      all += __shfl_xor_sync(kFullMask, all, o);
      before += __shfl_xor_sync(kFullMask, before, o);
    }
    if (lane == 0) {
      total[e] = all;
      first[e] = before;  // the block b0 row of `first`, before the offsets are added
    }
  }
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();

  // Exclusive scan of the padded totals over experts, kPlaceThreads at a time.
  for (int e0 = 0; e0 < num_experts; e0 += kPlaceThreads) {
    const int e = e0 + threadIdx.x;
    const int32_t padded = e < num_experts ? (total[e] + p.pad_to - 1) / p.pad_to * p.pad_to : 0;
    int32_t begin, sum;
    Scan(scan_tmp).ExclusiveSum(padded, begin, sum);
    const int32_t before = carry;
    __syncthreads();
    if (e < num_experts) start[e] = before + begin;
    if (threadIdx.x == 0) carry = before + sum;
    __syncthreads();
  }

  // First rows of this CTA's blocks (a thread per expert walks them), and CTA 0's outputs.
  for (int e = threadIdx.x; e < num_experts; e += kPlaceThreads) {
    int32_t row = start[e] + first[e];
    for (int b = b0; b < b1; ++b) {
      first[(b - b0) * num_experts + e] = row;
      row += block_hist[int64_t(e) * blocks + b];
    }
    if (blockIdx.x == 0) {
      counts[e] = total[e];
      p.expert_offsets[e] = start[e];
      const int64_t pad_end = e + 1 < num_experts ? int64_t(start[e + 1]) : int64_t(carry);
      for (int64_t r = start[e] + total[e]; r < pad_end; ++r) p.token_of_row[r] = -1;
    }
  }
  if (blockIdx.x == 0) {
    if (threadIdx.x == 0) p.expert_offsets[num_experts] = carry;
    for (int64_t r = carry + threadIdx.x; r < p.m_rows; r += kPlaceThreads) p.token_of_row[r] = -1;  // spare rows
  }
  __syncthreads();

  const int64_t a_begin = int64_t(b0) * tokens_per_block * top_k;
  const int64_t a_end = min(int64_t(b1) * tokens_per_block, num_tokens) * top_k;
  for (int64_t i = a_begin + threadIdx.x; i < a_end; i += kPlaceThreads) {
    const int e = topk_idx[i];
    if (e < 0 || e >= num_experts) {
      p.row_of_assignment[i] = -1;
      continue;
    }
    const int b = int(i / (tokens_per_block * top_k));
    const int32_t row = first[(b - b0) * num_experts + e] + local_rank[i];
    p.row_of_assignment[i] = row;
    p.token_of_row[row] = int32_t(i / top_k);
  }
}

// Router blocks per place_kernel CTA: every CTA reads all of block_hist, so fewer CTAs read less (at T = 16384:
// 512 blocks x 128 experts = 256 KB, 8 MB of L2 reads in all at 16 blocks per CTA), within the 48 KB of shared
// memory a launch gets without opting in (5 KB left for the scan's static storage: 4,272 B for sm_90a).
int place_blocks_per_cta(int num_experts) {
  return std::max(1, std::min(16, (43 * 1024 / 4 - 2 * num_experts) / num_experts));
}

}  // namespace

cudaError_t moe_router_cuda(const RouterArgs& a, int num_sms, cudaStream_t stream) {
  if (a.num_tokens == 0) return cudaMemsetAsync(a.counts, 0, sizeof(int32_t) * a.num_experts, stream);
  return with_vpt(a.num_experts, [&](auto vpt) { return launch<decltype(vpt)::value>(a, num_sms, stream); });
}

int64_t moe_router_blocks(const RouterArgs& a, int num_sms) {
  if (a.num_tokens == 0) return 0;
  return with_vpt(a.num_experts,
                  [&](auto vpt) { return grid_for<decltype(vpt)::value>(a, num_sms, /*permute=*/true).blocks; });
}

cudaError_t moe_router_permute_cuda(const RouterArgs& a, const PermutationArgs& p, int num_sms, cudaStream_t stream) {
  if (a.num_tokens > 0 && (a.block_hist == nullptr || a.local_rank == nullptr)) return cudaErrorInvalidValue;
  int64_t blocks = 0, tokens_per_block = 1;
  if (a.num_tokens > 0) {
    const Grid g =
        with_vpt(a.num_experts, [&](auto vpt) { return grid_for<decltype(vpt)::value>(a, num_sms, true); });
    blocks = g.blocks;
    tokens_per_block = g.tokens_per_block;
    const cudaError_t err = moe_router_cuda(a, num_sms, stream);
    if (err != cudaSuccess) return err;
  }
  const int bpc = place_blocks_per_cta(a.num_experts);
  const int ctas = std::max<int64_t>(1, (blocks + bpc - 1) / bpc);
  const size_t smem = sizeof(int32_t) * a.num_experts * (2 + bpc);
  place_kernel<<<ctas, kPlaceThreads, smem, stream>>>(a.topk_idx, a.local_rank, a.block_hist, int(blocks), bpc,
                                                      tokens_per_block, a.num_tokens, a.top_k, a.num_experts,
                                                      a.counts, p);
  return cudaGetLastError();
}

}  // namespace nk::router
