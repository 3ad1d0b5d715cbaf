// Row-wise FP8 e4m3 quantisation: scale[r] = amax(|x[r, :]|) / 448 (1 for an all-zero row),
// q[r, c] = e4m3_rn_satfinite(x[r, c] / scale[r]). The same rounding as the reference (fp32 division, then
// round-to-nearest-even), so the kernel and the reference agree bit for bit. One block per row.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <type_traits>

#include "moe/moe_device.cuh"
#include "moe/moe_kernels.h"

namespace nk::moe {
namespace {

constexpr int kQuantThreads = 256;
constexpr float kE4m3Max = 448.f;

template <typename T, int N>
__global__ void __launch_bounds__(kQuantThreads)
quantize_rows_fp8_kernel(const T* __restrict__ x, int64_t cols, __nv_fp8_e4m3* __restrict__ q,
                         float* __restrict__ scale) {
  __shared__ float s_warp[kQuantThreads / 32];
  const int64_t row = blockIdx.x;
  const int64_t n_vec = cols / N;
  const Packet<T, N>* src = reinterpret_cast<const Packet<T, N>*>(x + row * cols);
  float amax = 0.f;
  for (int64_t v = threadIdx.x; v < n_vec; v += kQuantThreads) {
    const Packet<T, N> p = src[v];
#pragma unroll
    for (int i = 0; i < N; ++i) amax = fmaxf(amax, fabsf(to_f32(p.v[i])));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if ((threadIdx.x & 31) == 0) s_warp[threadIdx.x >> 5] = amax;
  __syncthreads();
  amax = 0.f;
#pragma unroll
  for (int w = 0; w < kQuantThreads / 32; ++w) amax = fmaxf(amax, s_warp[w]);
  const float s = amax > 0.f ? __fdiv_rn(amax, kE4m3Max) : 1.f;
  if (threadIdx.x == 0) scale[row] = s;
  __nv_fp8_e4m3* dst = q + row * cols;
  for (int64_t v = threadIdx.x; v < n_vec; v += kQuantThreads) {
    const Packet<T, N> p = src[v];
    Packet<__nv_fp8_e4m3, N> o;
#pragma unroll
    for (int i = 0; i < N; ++i) o.v[i] = __nv_fp8_e4m3(__fdiv_rn(to_f32(p.v[i]), s));  // RN, saturating
    reinterpret_cast<Packet<__nv_fp8_e4m3, N>*>(dst)[v] = o;
  }
}

template <typename T>
void quantize_typed(const void* x, int64_t rows, int64_t cols, void* q, float* scale, cudaStream_t stream) {
  const auto* xt = static_cast<const T*>(x);
  auto* qt = static_cast<__nv_fp8_e4m3*>(q);
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0;
  constexpr int kWide = 16 / sizeof(T);  // one 16-byte load of x per packet
  if (aligned && cols % kWide == 0 && cols % 8 == 0)
    quantize_rows_fp8_kernel<T, kWide><<<rows, kQuantThreads, 0, stream>>>(xt, cols, qt, scale);
  else
    quantize_rows_fp8_kernel<T, 1><<<rows, kQuantThreads, 0, stream>>>(xt, cols, qt, scale);
}

}  // namespace

void quantize_rows_fp8_launch(const void* x, DType dtype, int64_t rows, int64_t cols, void* q, float* scale,
                              cudaStream_t stream) {
  if (rows == 0) return;
  switch (dtype) {
    case DType::kFloat32: quantize_typed<float>(x, rows, cols, q, scale, stream); break;
    case DType::kFloat16: quantize_typed<__half>(x, rows, cols, q, scale, stream); break;
    case DType::kBFloat16: quantize_typed<__nv_bfloat16>(x, rows, cols, q, scale, stream); break;
  }
}

}  // namespace nk::moe
