// Device helpers shared by the MoE element kernels (permute / unpermute, FP8 quantisation).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

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

// A packet of N elements of T moved as one aligned access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Packet {
  T v[N];
};

}  // namespace nk::moe
