// Row-wise FP8 e4m3 quantisation: scale[r] = amax(|x[r, :]|) / 448 (1 for an all-zero row),
// q[r, c] = e4m3_rn_satfinite(x[r, c] / scale[r]). The same rounding as the reference (the fp32 quotient, then
// round-to-nearest-even), so the kernel and the reference agree bit for bit; the quotient is found without a division
// per element (divide_fast). Rows of up to 3,072 bf16 (the hidden
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

// The divisor of a row: s, its reciprocal RN(1 / s) and whether x / s may take the division-free path.
struct RowScale {
  float s, r;
  bool fast;
  // Set in the body: nvcc's host pass keeps a member-initialiser list, where the device intrinsics are undeclared.
  __device__ __forceinline__ explicit RowScale(float amax) {
    s = amax > 0.f ? __fdiv_rn(amax, kE4m3Max) : 1.f;
    r = __frcp_rn(s);
    fast = amax == 0.f || (amax >= 0x1p-60f && amax <= 0x1p100f);
  }
};

// RN(x / s) in fp32, as the reference divides, without a division per element: q0 = RN(x r) is within an ulp of
// x / s, the remainder x - s q0 is exact in one FMA, and one correction q0 + r (x - s q0) rounds to exactly
// RN(x / s) (Markstein's theorem for a correctly rounded r; an emulation agreed with the division on 1e8 values,
// specials included, bench/NOTES.md). A zero quotient keeps q0 for x's sign (-0 / s = -0). Valid without underflow
// or overflow in the remainder: rows with amax outside [2^-60, 2^100] (Inf too) take divide_exact.
__device__ __forceinline__ float divide_fast(float x, const RowScale& d) {
  const float q0 = __fmul_rn(x, d.r);
  const float q1 = fmaf(fmaf(-q0, d.s, x), d.r, q0);
  return q1 == 0.f ? q0 : q1;
}

// A zero dividend skips __fdiv_rn, whose fast-path check sends it to the slow path (relu² rows are half zeros).
__device__ __forceinline__ float divide_exact(float x, const RowScale& d) {
  return x == 0.f ? x : __fdiv_rn(x, d.s);
}

// A packet of x / s in e4m3 (RN, saturating), two values per conversion where N is even. The path is chosen per
// packet (uniform over a row), not per element.
template <typename T, int N>
__device__ __forceinline__ Packet<__nv_fp8_e4m3, N> quantize_packet(const Packet<T, N>& p, const RowScale& d) {
  float q[N];
  if (d.fast) {
#pragma unroll
    for (int i = 0; i < N; ++i) q[i] = divide_fast(to_f32(p.v[i]), d);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) q[i] = divide_exact(to_f32(p.v[i]), d);
  }
  Packet<__nv_fp8_e4m3, N> o;
  if constexpr (N % 2 == 0) {
    auto* pairs = reinterpret_cast<__nv_fp8x2_storage_t*>(o.v);
#pragma unroll
    for (int i = 0; i < N; i += 2)
      pairs[i / 2] = __nv_cvt_float2_to_fp8x2(make_float2(q[i], q[i + 1]), __NV_SATFINITE, __NV_E4M3);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) o.v[i] = __nv_fp8_e4m3(q[i]);
  }
  return o;
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
  const RowScale d(amax);
  if (threadIdx.x == 0) scale[row] = d.s;
  __nv_fp8_e4m3* dst = q + row * cols;
  for (int64_t v = threadIdx.x; v < n_vec; v += kQuantThreads) {
    reinterpret_cast<Packet<__nv_fp8_e4m3, N>*>(dst)[v] = quantize_packet(src[v], d);
  }
}

// One warp per row, the row's packets in registers: lane l holds packets l, l + 32, ... (< 32 * kMaxPackets).
template <typename T, int N, int kMaxPackets>
__global__ void __launch_bounds__(kQuantThreads, 3)  // <= 80 registers: 3 CTAs (24 warps) per SM keep bytes in flight
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
  const RowScale d(amax);
  if (lane == 0) scale[row] = d.s;
  auto* dst = reinterpret_cast<Packet<__nv_fp8_e4m3, N>*>(q + row * cols);
#pragma unroll
  for (int j = 0; j < kMaxPackets; ++j) {
    if (j * 32 + lane < n_vec) dst[j * 32 + lane] = quantize_packet(p[j], d);
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
