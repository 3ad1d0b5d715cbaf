// Router logits for a few tokens: logits[T, E] = x[T, K] (bf16) @ w[E, K]^T (fp32), in fp32 FMAs (never TF32).
//
// At decode sizes cuBLAS's SGEMM took 6.7 us at T = 1 and 13 us at T = 64 for a 1.4 MB weight (bench/NOTES.md,
// session 8), after a cast kernel for x. Here a CTA owns kCh experts and kRows tokens; its 8 warps split K, each
// lane taking every 256-th 16-byte piece of the weight rows (4 floats), with two pieces' loads in flight before
// any math; x's matching 4 bf16 (8 bytes, L1/L2 hits) are widened in registers. Lane sums meet with shuffles, the
// warps' in shared memory in a fixed order: deterministic, the products summed in another order than cuBLAS's.
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

// grid (ceil(E / kCh), ceil(T / kRows)), kWarps * 32 threads.
template <int kRows>
__global__ void __launch_bounds__(kWarps * 32)
    router_logits_kernel(const __nv_bfloat16* __restrict__ x, const float* __restrict__ w, float* __restrict__ logits,
                         int tokens, int experts, int k) {
  __shared__ float part[kWarps][kCh * kRows];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int e0 = blockIdx.x * kCh, r0 = blockIdx.y * kRows;
  const int rows = min(kRows, tokens - r0);
  const int pieces = k / 4;                                     // 16-byte pieces of a weight row
  constexpr int kStride = kWarps * 32;                          // pieces per trip of the CTA
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  float acc[kCh][kRows] = {};
  for (int p0 = warp * 32 + lane; p0 < pieces; p0 += 2 * kStride) {
    const int p1 = p0 + kStride;
    float4 w0[kCh], w1[kCh];                                    // both pieces asked for before any math
#pragma unroll
    for (int c = 0; c < kCh; ++c) {
      const float4* row = reinterpret_cast<const float4*>(w + int64_t(min(e0 + c, experts - 1)) * k);
      w0[c] = __ldcs(row + p0);
      w1[c] = p1 < pieces ? __ldcs(row + p1) : zero;
    }
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      if (m < rows) {
        const uint2* xr = reinterpret_cast<const uint2*>(x + int64_t(r0 + m) * k);
        const float4 x0 = widen4(__ldg(xr + p0));
        const float4 x1 = p1 < pieces ? widen4(__ldg(xr + p1)) : zero;
#pragma unroll
        for (int c = 0; c < kCh; ++c) acc[c][m] = dot4(w1[c], x1, dot4(w0[c], x0, acc[c][m]));
      }
    }
  }
#pragma unroll
  for (int c = 0; c < kCh; ++c) {
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      float v = acc[c][m];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0) part[warp][c * kRows + m] = v;
    }
  }
  __syncthreads();
  if (threadIdx.x < kCh * kRows) {
    const int c = threadIdx.x / kRows, m = threadIdx.x % kRows;
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) sum += part[i][threadIdx.x];
    if (m < rows && e0 + c < experts) logits[int64_t(r0 + m) * experts + e0 + c] = sum;
  }
}

template <int kRows>
cudaError_t launch(const LogitsArgs& a, cudaStream_t stream) {
  const dim3 grid((a.experts + kCh - 1) / kCh, (a.tokens + kRows - 1) / kRows);
  router_logits_kernel<kRows><<<grid, kWarps * 32, 0, stream>>>(static_cast<const __nv_bfloat16*>(a.x), a.w,
                                                                 a.logits, a.tokens, a.experts, a.k);
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
