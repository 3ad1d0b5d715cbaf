// Row-wise FP8 e4m3 quantisation: scale[r] = amax(|x[r, :]|) / 448 (1 for an all-zero row),
// q[r, c] = e4m3_rn_satfinite(x[r, c] / scale[r]). The same rounding as the reference (fp32 division, then
// round-to-nearest-even), so the kernel and the reference agree bit for bit. Rows of up to 3,072 bf16 (the hidden
// size 2,688, the experts' 1,856): one warp per row, the row held in registers between its amax and its quantisation
// (one read of x, no block barrier); longer or unaligned rows: one block per row, reading x twice.
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

// max(amax, |p|) over a packet; bf16 / fp16 pairwise in their own type (exact for a max; NaNs ignored, as fmaxf),
// so the row's fp32 values need not stay live between the amax and the quantisation (registers).
template <typename T, int N>
__device__ __forceinline__ float packet_amax(const Packet<T, N>& p, float amax) {
  if constexpr (std::is_same_v<T, float> || N % 2 != 0) {  // fp32, or single elements (unaligned rows)
#pragma unroll
    for (int i = 0; i < N; ++i) amax = fmaxf(amax, fabsf(to_f32(p.v[i])));
    return amax;
  } else {
    using T2 = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
    const T2* v2 = reinterpret_cast<const T2*>(p.v);
    T2 m = __habs2(v2[0]);
#pragma unroll
    for (int i = 1; i < N / 2; ++i) m = __hmax2(m, __habs2(v2[i]));
    return fmaxf(amax, fmaxf(to_f32(m.x), to_f32(m.y)));
  }
}

// x / s rounded to e4m3 (RN, saturating) after an fp32 __fdiv_rn, as the reference divides. A zero dividend is
// answered without the division: __fdiv_rn's fast-path check sends it to the slow path, and relu² rows (the
// experts' h) are about half exact zeros. 0 / s = 0 with x's sign, so this is bitwise the division.
__device__ __forceinline__ __nv_fp8_e4m3 e4m3_div(float x, float s) {
  return __nv_fp8_e4m3(x == 0.f ? x : __fdiv_rn(x, s));
}

template <typename T, int N>
__global__ void __launch_bounds__(kQuantThreads)
quantize_rows_fp8_kernel(const T* __restrict__ x, int64_t cols, __nv_fp8_e4m3* __restrict__ q,
                         float* __restrict__ scale) {
  __shared__ float s_warp[kQuantThreads / 32];
  const int64_t row = blockIdx.x;
  const int64_t n_vec = cols / N;
  const Packet<T, N>* src = reinterpret_cast<const Packet<T, N>*>(x + row * cols);
  float amax = 0.f;
  for (int64_t v = threadIdx.x; v < n_vec; v += kQuantThreads) amax = packet_amax(src[v], amax);
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
    for (int i = 0; i < N; ++i) o.v[i] = e4m3_div(to_f32(p.v[i]), s);
    reinterpret_cast<Packet<__nv_fp8_e4m3, N>*>(dst)[v] = o;
  }
}

// One warp per row, the row's packets in registers: lane l holds packets l, l + 32, ... (< 32 * kMaxPackets).
template <typename T, int N, int kMaxPackets>
__global__ void __launch_bounds__(kQuantThreads, 2)  // <= 128 registers: 16 warps per SM keep enough bytes in flight
quantize_rows_fp8_warp_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, __nv_fp8_e4m3* __restrict__ q,
                              float* __restrict__ scale) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * (kQuantThreads / 32) + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps: the shuffles below see all 32 lanes
  const int n_vec = int(cols / N);
  const Packet<T, N>* src = reinterpret_cast<const Packet<T, N>*>(x + row * cols);
  Packet<T, N> p[kMaxPackets];
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxPackets; ++j) {
    if (j * 32 + lane < n_vec) {
      p[j] = src[j * 32 + lane];
      amax = packet_amax(p[j], amax);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float s = amax > 0.f ? __fdiv_rn(amax, kE4m3Max) : 1.f;
  if (lane == 0) scale[row] = s;
  auto* dst = reinterpret_cast<Packet<__nv_fp8_e4m3, N>*>(q + row * cols);
#pragma unroll
  for (int j = 0; j < kMaxPackets; ++j) {
    if (j * 32 + lane < n_vec) {
      Packet<__nv_fp8_e4m3, N> o;
#pragma unroll
      for (int i = 0; i < N; ++i) o.v[i] = e4m3_div(to_f32(p[j].v[i]), s);
      dst[j * 32 + lane] = o;
    }
  }
}

template <typename T>
void quantize_typed(const void* x, int64_t rows, int64_t cols, void* q, float* scale, cudaStream_t stream) {
  const auto* xt = static_cast<const T*>(x);
  auto* qt = static_cast<__nv_fp8_e4m3*>(q);
  constexpr int kWide = 16 / sizeof(T);  // one 16-byte load of x per packet
  // x and q moved in packets of kWide elements (16 bytes of x)
  const bool packets = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0 &&
                       cols % kWide == 0 && cols % 8 == 0;
  constexpr int kMaxPackets = 12;  // a warp holds rows of up to 12 x 32 packets: 3,072 bf16 / fp16, 1,536 fp32
  if (packets && cols / kWide <= 32 * kMaxPackets) {
    constexpr int kRowsPerBlock = kQuantThreads / 32;
    quantize_rows_fp8_warp_kernel<T, kWide, kMaxPackets><<<(rows + kRowsPerBlock - 1) / kRowsPerBlock, kQuantThreads,
                                                           0, stream>>>(xt, rows, cols, qt, scale);
  } else if (packets)
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
