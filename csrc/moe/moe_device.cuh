// Device helpers shared by the MoE element kernels (permute / unpermute, FP8 quantisation).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace nk::moe {

template <typename T>
__device__ __forceinline__ float to_f32(T v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_f32(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else return __float2bfloat16_rn(v);
}

// One round of stable ranking over a block of num_warps * 32 threads (moe_permute's ranking and the router's
// permutation mode), called by every thread of the block (it holds the barriers): e is this thread's expert (-1:
// none); returns its rank among the block's assignments to e so far, earlier threads first (-1 for e < 0), and
// advances running[E] by the round's counts. warp_count [num_warps][E] is zero on entry and on return.
__device__ __forceinline__ int rank_round(int e, int32_t* running, int32_t* warp_count, int num_experts,
                                          int num_warps) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const unsigned peers = __match_any_sync(0xffffffffu, e);
  const unsigned lower = peers & ((1u << lane) - 1u);
  if (e >= 0 && lower == 0) warp_count[warp * num_experts + e] = __popc(peers);
  __syncthreads();
  int r = -1;
  if (e >= 0) {
    r = running[e] + __popc(lower);
    for (int w = 0; w < warp; ++w) r += warp_count[w * num_experts + e];
  }
  __syncthreads();
  for (int x = tid; x < num_experts; x += num_warps * 32) {
    int c = 0;
#pragma unroll
    for (int w = 0; w < num_warps; ++w) {
      c += warp_count[w * num_experts + x];
      warp_count[w * num_experts + x] = 0;
    }
    running[x] += c;
  }
  __syncthreads();
  return r;
}

// A packet of N elements of T moved as one aligned access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Packet {
  T v[N];
};

}  // namespace nk::moe
