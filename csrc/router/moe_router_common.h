// Shared by the router's CPU kernel, CUDA kernel and host entry (no torch headers: the .cu stays light).
//
// Selection order: every (score, expert) pair becomes one 64-bit key, larger = better:
//   high 32 bits: the fp32 score's bits mapped to an unsigned order (NaN above +inf, -0.0 == +0.0)
//   low 32 bits:  0xFFFFFFFF - expert, so equal scores rank the lower expert index first.
// Keys are unique per row, so any exact max/sort over them gives one answer on every device. Key 0 is below
// every real key (the lowest, -inf at the last index, is 0x007FFFFF'xxxxxxxx) and marks "taken".
#pragma once
#include <cstdint>
#include <cstring>

#ifdef NEMOTRON_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifdef __CUDACC__
#define NK_HD __host__ __device__ __forceinline__
#else
#define NK_HD inline
#endif

namespace nk::router {

constexpr float kRenormEps = 1e-20f;  // w / (sum(w) + eps)
constexpr int kCudaMaxExperts = 1024; // 32 scores per lane in registers

NK_HD uint32_t float_bits(float v) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
#endif
}

// Monotone map float -> uint32 (NaN highest, -0.0 == +0.0), matching a stable descending torch.sort.
NK_HD uint32_t ordered_bits(float v) {
  if (v != v) return 0xFFFFFFFFu;
  uint32_t u = float_bits(v);
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

NK_HD uint64_t make_key(float score, uint32_t index) {
  return (static_cast<uint64_t>(ordered_bits(score)) << 32) | static_cast<uint64_t>(0xFFFFFFFFu - index);
}

NK_HD uint32_t key_index(uint64_t key) { return 0xFFFFFFFFu - static_cast<uint32_t>(key); }

// Arguments of one router call after the logits GEMM (all pointers contiguous, row-major).
struct RouterArgs {
  const float* logits;  // [T, E]
  const float* bias;    // [E]
  int32_t* topk_idx;    // [T, k]
  float* topk_weight;   // [T, k]
  int32_t* counts;      // [E]
  int64_t num_tokens;   // T
  int num_experts;      // E
  int top_k;            // k
  int n_group;          // groups of E / n_group consecutive experts
  int topk_group;       // groups kept per token
  float scale;          // routed_scaling_factor
  bool counts_zeroed = false;  // counts already 0 in stream order (the logits GEMV zeroed them): no memset
  // Permutation mode (moe_router_permute_cuda), both set or both null: instead of the counts, each block writes
  // its column of block_hist and the stable rank of each of its assignments among the block's assignments to the
  // same expert (blocks hold whole tokens, so the ranks follow the assignment index a = t * k + j).
  int32_t* block_hist = nullptr;  // [E][blocks] (expert-major), blocks = moe_router_blocks(args, num_sms), the
                                  // permutation mode's count (its blocks can be smaller than the counting mode's)
  int32_t* local_rank = nullptr;  // [T * k]
};

// The expert-sorted permutation the second launch of the permutation mode writes, as moe_permute's ranking does
// (csrc/moe/moe_kernels.h): expert e owns rows [expert_offsets[e], expert_offsets[e+1]), its count rounded up to
// pad_to; inside, its assignments in increasing a; token_of_row -1 for padding rows.
struct PermutationArgs {
  int32_t* row_of_assignment;  // [T * k]
  int32_t* expert_offsets;     // [E + 1]
  int32_t* token_of_row;       // [m_rows]
  int64_t m_rows;              // T * k + (pad_to > 1 ? E * (pad_to - 1) : 0)
  int pad_to;
};

// C++ CPU kernel (moe_router_cpu.cpp): at::parallel_for over tokens.
void moe_router_cpu(const RouterArgs& args);

// Arguments of the logits GEMV for a few tokens (moe_router_logits_kernel.cu), contiguous and row-major; K % 4 == 0,
// x 8-byte and w 16-byte aligned (checked by the host entry).
struct LogitsArgs {
  const void* x;   // [T, K] bf16
  const float* w;  // [E, K]
  float* logits;   // [T, E]
  int tokens;      // T <= kLogitsMaxTokens
  int experts;     // E
  int k;           // K
  int32_t* zero_counts = nullptr;  // [E] set to 0 by the first CTA (the counts of the router kernel after it), or null
};
constexpr int kLogitsMaxTokens = 64;  // beyond it the weights' re-reads per 8 tokens outgrow a GEMM's tiles

#ifdef NEMOTRON_WITH_CUDA
// CUDA kernels (moe_router_kernel.cu, moe_router_logits_kernel.cu), enqueued on `stream`; never synchronise.
// Return the launch status.
cudaError_t moe_router_cuda(const RouterArgs& args, int num_sms, cudaStream_t stream);
// The permutation mode's blocks (block_hist's second dimension) for these arguments, block_hist set or not.
int64_t moe_router_blocks(const RouterArgs& args, int num_sms);
// The router in permutation mode, then one launch that sums the block histograms into counts and offsets and
// places every assignment: (topk_idx, topk_weight, counts, the permutation) in two launches after the logits GEMM.
cudaError_t moe_router_permute_cuda(const RouterArgs& args, const PermutationArgs& perm, int num_sms,
                                    cudaStream_t stream);
cudaError_t moe_router_logits_cuda(const LogitsArgs& args, cudaStream_t stream);
#endif

}  // namespace nk::router
