// Router logits for a few tokens: logits[T, E] = x[T, K] (bf16) @ w[E, K]^T (fp32), in fp32 FMAs (never TF32).
//
// At decode sizes cuBLAS's SGEMM took 6.7 us at T = 1 and 13 us at T = 64 for a 1.4 MB weight (bench/NOTES.md,
// session 8), after a cast kernel for x. Here a CTA owns kCh experts and kRows tokens; its 8 warps split K, each
// lane taking every 256-th 16-byte piece of the weight rows (4 floats), two pieces of each weight row and of each
// row of x (4 bf16, 8 bytes, L1/L2 hits) in flight before any math. Lane sums meet in a scatter-reduce, the warps'
// in shared memory in a fixed order: deterministic, the products summed in another order than cuBLAS's.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "router/moe_router_common.h"

namespace nk::router {
namespace {

constexpr int kWarps = 8;
constexpr int kCh = 4;  // experts per CTA

// 4 bf16 (8 bytes) as fp32.
__device__ __forceinline__ float4 widen4(uint2 raw) {
  return make_float4(__uint_as_float(raw.x << 16), __uint_as_float(raw.x & 0xffff0000u), __uint_as_float(raw.y << 16),
                     __uint_as_float(raw.y & 0xffff0000u));
}

__device__ __forceinline__ float dot4(float4 a, float4 b, float acc) {
  return fmaf(a.w, b.w, fmaf(a.z, b.z, fmaf(a.y, b.y, fmaf(a.x, b.x, acc))));
}

// Sums each of N values (N a power of two <= 32) over the warp in N - 1 + 5 - log2(N) shuffles, where a butterfly
// per value takes 5 N (160 at 8 rows against 31): each step a lane keeps half of its values and adds its partner's
// copies of that half. Returns which sum the lane ends with, in v[0]; the 32 / N lanes after each
// multiple of 32 / N hold the same one. Fixed lanes and order: deterministic.
template <int N, int kOff = 16>
__device__ __forceinline__ int warp_sum_scatter(float* v, int lane) {
  static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0);
  if constexpr (kOff == 0) {
    return 0;
  } else if constexpr (N > 1) {
    const bool upper = lane & kOff;                             // keeps [N/2, N), sends [0, N/2)
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      const float send = upper ? v[i] : v[i + N / 2];
      v[i] = (upper ? v[i + N / 2] : v[i]) + __shfl_xor_sync(0xffffffffu, send, kOff);
    }
    return (upper ? N / 2 : 0) + warp_sum_scatter<N / 2, kOff / 2>(v, lane);
  } else {
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], kOff);
    return warp_sum_scatter<1, kOff / 2>(v, lane);
  }
}

// grid (ceil(E / kCh), ceil(T / kRows)), kWarps * 32 threads.
template <int kRows>
__global__ void __launch_bounds__(kWarps * 32)
    router_logits_kernel(const __nv_bfloat16* __restrict__ x, const float* __restrict__ w, float* __restrict__ logits,
                         int tokens, int experts, int k, int32_t* __restrict__ zero_counts) {
  __shared__ float part[kWarps][kCh * kRows];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int e0 = blockIdx.x * kCh, r0 = blockIdx.y * kRows;
  const int rows = min(kRows, tokens - r0);
  const int pieces = k / 4;                                     // 16-byte pieces of a weight row
  constexpr int kStride = kWarps * 32;                          // pieces per trip of the CTA
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  float acc[kCh * kRows] = {};                                  // sum c * kRows + m: channel c, row m
  for (int p0 = warp * 32 + lane; p0 < pieces; p0 += 2 * kStride) {
    const int p1 = p0 + kStride;
    float4 w0[kCh], w1[kCh];                                    // both pieces of kCh weight rows
#pragma unroll
    for (int c = 0; c < kCh; ++c) {
      const float4* row = reinterpret_cast<const float4*>(w + int64_t(min(e0 + c, experts - 1)) * k);
      w0[c] = __ldcs(row + p0);
      w1[c] = p1 < pieces ? __ldcs(row + p1) : zero;
    }
    uint2 x0[kRows], x1[kRows];                                 // and of every row of x (rows past the end re-read
#pragma unroll                                                  // the last one; their sums are never stored)
    for (int m = 0; m < kRows; ++m) {
      const uint2* xr = reinterpret_cast<const uint2*>(x + int64_t(r0 + min(m, rows - 1)) * k);
      x0[m] = __ldg(xr + p0);
      x1[m] = p1 < pieces ? __ldg(xr + p1) : make_uint2(0u, 0u);
    }
    // The branch (always taken) keeps ptxas from sinking loads between the FMAs: without it every load went out
    // first only at some row counts (SASS). A branch per row (`m < rows`, before) put the rows' L2 round trips in
    // series: T = 8 took 5.5 us against 2.0 at T = 1 (bench/NOTES.md, session 16).
    if (rows > 0) {
#pragma unroll
      for (int m = 0; m < kRows; ++m) {
        const float4 xa = widen4(x0[m]), xb = widen4(x1[m]);
#pragma unroll
        for (int c = 0; c < kCh; ++c) acc[c * kRows + m] = dot4(w1[c], xb, dot4(w0[c], xa, acc[c * kRows + m]));
      }
    }
  }
  constexpr int kSums = kCh * kRows;
  const int mine = warp_sum_scatter<kSums>(acc, lane);
  if (lane % (32 / kSums) == 0) part[warp][mine] = acc[0];
  __syncthreads();
  if (threadIdx.x < kCh * kRows) {
    const int c = threadIdx.x / kRows, m = threadIdx.x % kRows;
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) sum += part[i][threadIdx.x];
    if (m < rows && e0 + c < experts) logits[int64_t(r0 + m) * experts + e0 + c] = sum;
  }
  // After the math, so the loads above keep their schedule; the next kernel in the stream sees the zeros.
  if (zero_counts != nullptr && blockIdx.x == 0 && blockIdx.y == 0) {
    for (int e = threadIdx.x; e < experts; e += kWarps * 32) zero_counts[e] = 0;
  }
}

template <int kRows>
cudaError_t launch(const LogitsArgs& a, cudaStream_t stream) {
  const dim3 grid((a.experts + kCh - 1) / kCh, (a.tokens + kRows - 1) / kRows);
  router_logits_kernel<kRows><<<grid, kWarps * 32, 0, stream>>>(static_cast<const __nv_bfloat16*>(a.x), a.w,
                                                                 a.logits, a.tokens, a.experts, a.k, a.zero_counts);
  return cudaGetLastError();
}

}  // namespace

cudaError_t moe_router_logits_cuda(const LogitsArgs& a, cudaStream_t stream) {
  if (a.tokens == 0 || a.experts == 0) return cudaSuccess;
  if (a.tokens <= 1) return launch<1>(a, stream);
  if (a.tokens <= 2) return launch<2>(a, stream);
  if (a.tokens <= 4) return launch<4>(a, stream);
  return launch<8>(a, stream);                                  // 8 tokens per CTA row: the weights re-read per 8
}

}  // namespace nk::router
