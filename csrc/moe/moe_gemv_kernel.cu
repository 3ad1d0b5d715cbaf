// Grouped NT GEMV for decode (few rows per expert): d[rows_e, N] = epi(a[rows_e, K] @ b[e, N, K]^T).
// Operands: bf16 x bf16, e4m3 x e4m3 (scaled by a_scale[row] * b_scale[e, col]), or weights-only FP8: bf16 a with
// e4m3 b (scaled by b_scale; no activation quantisation before the GEMV, which at T = 1 costs a launch). The
// *Scaled kinds also multiply by a_scale[row] (a routing weight per row).
//
// With a handful of tokens the MoE GEMMs are a stream of the touched experts' weights; tensor-core tiles of
// 64+ rows would mostly multiply padding, and a tile scheduler over all E groups spends its time on empty
// ones. Here grid.y enumerates only the non-empty groups (CTA j takes the j-th, found with a warp ballot scan of
// the offsets, so no host ever sees the counts), and each warp owns kCh output channels: it streams their
// weight rows once with 16-byte loads (bypassing L1) and multiplies them against up to kMt rows of a at a time
// (2 for weights-only FP8; a is tiny and hits L1). Lane partial sums are reduced with shuffles; the epilogue
// (scales, relu^2) runs in fp32 and rounds once to bf16, as the CUTLASS epilogues do.
// Small grids (the shared expert at T = 1: one group, 84-116 CTAs on 132 SMs) keep too few loads in flight to
// stream at copy speed, so kSplit warps share each channel group, each taking every kSplit-th 16-byte piece of
// K; their sums meet in shared memory in a fixed order (deterministic). gemv_split_for picks it from the grid.
// moe_decode_gemv_kernel runs the same loop for the MoE layer at decode without the permute: CTA row j takes
// assignment j's expert straight from topk_idx, and the shared expert's column blocks ride in the same grid
// (one launch per projection instead of three kernels: permute, routed, shared).
// Tried and measured slower (H200, bench/NOTES.md): mma.sync with one warp per 16 channels and a permuted k order
// (2.5x slower at T = 1: 4x fewer warps streaming, 64-byte row pieces per load instead of 512 contiguous bytes);
// for the weights-only kind, widening e4m3 with integer ops (its bits placed as fp32 times 2^-120, a scaled by 2^64)
// instead of the cvt pair (15-30% slower on the decode shapes); one L2 bulk prefetch of each warp's whole rows
// (BF16 in_proj 16.2 -> 20.9 us, W8 12.1 -> 13.9, session 14).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <type_traits>

#include "moe/moe_kernels.h"

namespace nk::moe {
namespace {

constexpr int kWarps = 8;   // warps per CTA
constexpr int kCh = 4;      // output channels per warp (N % 8 == 0, so a warp's channels are all valid or none)
constexpr int kMt = 8;      // rows of a per pass over the weights

// kWords 32-bit words of T as fp32 (4 / sizeof(T) values each).
template <typename T, int kWords>
__device__ __forceinline__ void widen(const uint32_t* w, float* v) {
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      v[2 * i] = __uint_as_float(w[i] << 16);            // bf16 -> fp32 is a shift
      v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    } else {
      const __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(w[i] & 0xffff), __NV_E4M3);
      const __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(w[i] >> 16), __NV_E4M3);
      const float2 a = __half22float2(__half2(lo)), b = __half22float2(__half2(hi));
      v[4 * i] = a.x, v[4 * i + 1] = a.y, v[4 * i + 2] = b.x, v[4 * i + 3] = b.y;
    }
  }
}

// 16 bytes of T as fp32: 8 bf16 or 16 e4m3.
template <typename T>
struct Chunk {
  static constexpr int kLen = 16 / sizeof(T);
  float v[kLen];
  __device__ __forceinline__ explicit Chunk(uint4 raw) {
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
    widen<T, 4>(w, v);
  }
};

// Expert id and row range of the j-th group that has rows, or group = -1 when fewer than j+1 groups have rows.
__device__ __forceinline__ void find_group(const int32_t* offsets, int groups, int64_t m_rows, int j, int* group,
                                           int64_t* start, int64_t* end) {
  const int lane = threadIdx.x % 32;
  int seen = 0;
  for (int base = 0; base < groups; base += 32) {
    const int e = base + lane;
    int64_t s = 0, t = 0;
    if (e < groups) {
      s = min(max(int64_t(offsets[e]), int64_t(0)), m_rows);
      t = min(max(int64_t(offsets[e + 1]), s), m_rows);
    }
    const unsigned mask = __ballot_sync(0xffffffffu, t > s);
    const int count = __popc(mask);
    if (j < seen + count) {
      const int rank = j - seen;                  // the rank-th set bit of mask is our group
      if (t > s && __popc(mask & ((1u << lane) - 1)) == rank) *group = e, *start = s, *end = t;
      return;
    }
    seen += count;
  }
  if (lane == 0) *group = -1;
}

// One CTA's work: `rows` rows of a (row stride k) against one [n, k] weight matrix, into d (row stride ldd).
template <typename TA, typename TB>
struct GemvTask {
  const TA* a;             // [rows, k]
  const TB* w;             // [n, k]: the group's weights
  const float* a_scale;    // [rows] (kScaleA only)
  const float* b_scale;    // [n] (kScaleB only)
  __nv_bfloat16* d;        // [rows, ldd]
  int64_t ldd;
  int64_t rows;
  int k;
};

// CTA: kWarps / kSplit channel groups of kCh channels; warp w serves group w / kSplit on K pieces w % kSplit.
// kSplit is a template argument: kSplit = 1 is the unsplit loop exactly (constant strides, no barriers).
// A piece is 16 bytes of weights (kLen elements of TB); a's matching elements take kXLoads 16-byte loads.
// Register bounds: at the kernels' __global__ wrappers below.
template <typename TA, typename TB, bool kScaleA, bool kScaleB, bool kReLU2, int kSplit>
__device__ __forceinline__ void gemv_task(const GemvTask<TA, TB>& t, int n) {
  constexpr int kLen = Chunk<TB>::kLen;
  constexpr int kALen = Chunk<TA>::kLen;
  constexpr int kXLoads = kLen / kALen;
  // Rows of a per pass over the weights. Weights-only FP8 serves decode only (<= 2 rows per expert at T * k <= 16
  // with top-6, 1 row per projection), so its pass takes 2 rows: 8 accumulators instead of 32.
  constexpr int kRows = std::is_same_v<TA, TB> ? kMt : 2;
  static_assert(kCh * kRows <= 32, "lane c + kCh * m of a warp writes channel c of row m");
  static_assert(kLen % kALen == 0, "a piece of a must not be narrower than 16 bytes");
  __shared__ float s_part[kSplit > 1 ? kWarps : 1][32];                     // split partial sums, lane-indexed
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slice = warp % kSplit;                                          // which K pieces
  const int n0 = (blockIdx.x * (kWarps / kSplit) + warp / kSplit) * kCh;
  const bool live = n0 < n;
  if (kSplit == 1 && !live) return;              // split warps stay: they meet the CTA barriers below
  const int k = t.k;
  const TA* a = t.a;
  const int64_t k_begin = live ? int64_t(slice * 32 + lane) * kLen : k;
  const TB* w = t.w + int64_t(n0) * k;                                      // [kCh, K]
  constexpr int64_t kStride = 32 * kSplit * kLen;                         // elements of K per trip of a warp
  auto load_w = [&](uint4 (&raw)[kCh], int64_t kk) {                       // weights: read once, not cached
#pragma unroll
    for (int c = 0; c < kCh; ++c) raw[c] = __ldcs(reinterpret_cast<const uint4*>(w + c * int64_t(k) + kk));
  };
  for (int64_t r0 = 0; r0 < t.rows; r0 += kRows) {
    const int rows = int(min(int64_t(kRows), t.rows - r0));
    float acc[kCh][kRows] = {};
    // Double-buffered: the next trip's weights are asked for before this trip's math, so each lane always has two
    // trips of loads in flight. `#pragma unroll 2` did not get that: a's loads sit in `m < rows` branches, and
    // ptxas issued the second trip's loads only after the first trip's math (SASS, session 14).
    uint4 raw[kCh];
    if (k_begin < k) load_w(raw, k_begin);
    for (int64_t kk = k_begin; kk < k; kk += kStride) {
      uint4 next[kCh];
      load_w(next, kk + kStride < k ? kk + kStride : kk);                  // last trip: its own piece again
      // One 16-byte piece of a at a time: only its share of the weights is widened and live (W8: 32 floats, not 64).
      // Each acc[c][m] still sums its products in k order, as with the whole piece widened at once.
#pragma unroll
      for (int j = 0; j < kXLoads; ++j) {
        constexpr int kWords = 4 / kXLoads;                                 // weight words per piece of a
        float wv[kCh][kALen];
#pragma unroll
        for (int c = 0; c < kCh; ++c) {
          const uint32_t words[4] = {raw[c].x, raw[c].y, raw[c].z, raw[c].w};
          widen<TB, kWords>(words + j * kWords, wv[c]);
        }
#pragma unroll
        for (int m = 0; m < kRows; ++m) {
          if (m < rows) {
            const Chunk<TA> x(__ldg(reinterpret_cast<const uint4*>(a + (r0 + m) * k + kk) + j));
#pragma unroll
            for (int c = 0; c < kCh; ++c) {
#pragma unroll
              for (int i = 0; i < kALen; ++i) acc[c][m] = fmaf(wv[c][i], x.v[i], acc[c][m]);
            }
          }
        }
      }
#pragma unroll
      for (int c = 0; c < kCh; ++c) raw[c] = next[c];
    }
    // Butterfly sums: every lane ends with every total; lane c + kCh * m writes channel c of row m.
    float out = 0.f;
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      if (m < rows) {
#pragma unroll
        for (int c = 0; c < kCh; ++c) {
          float v = acc[c][m];
#pragma unroll
          for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
          if (lane == c + kCh * m) out = v;
        }
      }
    }
    if constexpr (kSplit > 1) {                  // the group's first warp adds the others' sums in order
      s_part[warp][lane] = out;
      __syncthreads();
      if (slice == 0) {
#pragma unroll
        for (int i = 1; i < kSplit; ++i) out += s_part[warp + i][lane];
      }
      __syncthreads();                           // s_part is rewritten by the next row chunk
    }
    const int c = lane % kCh, m = lane / kCh;
    if (live && slice == 0 && m < rows) {
      const int64_t row = r0 + m;
      if constexpr (kScaleA) out *= t.a_scale[row];
      if constexpr (kScaleB) out *= t.b_scale[n0 + c];
      if constexpr (kReLU2) out = out > 0.f ? out * out : 0.f;
      t.d[row * t.ldd + n0 + c] = __float2bfloat16_rn(out);
    }
  }
}


// Grouped: CTA row blockIdx.y takes the blockIdx.y-th group that has rows.
template <typename TA, typename TB, bool kScaleA, bool kScaleB, bool kReLU2, int kSplit>
__device__ __forceinline__ void grouped_gemv_nt(const TA* __restrict__ a, const TB* __restrict__ b,
                                                __nv_bfloat16* __restrict__ d, const float* __restrict__ a_scale,
                                                const float* __restrict__ b_scale, const int32_t* __restrict__ offsets,
                                                int groups, int64_t m_rows, int n, int k) {
  __shared__ int s_group;
  __shared__ int64_t s_start, s_end;
  if (threadIdx.x < 32) find_group(offsets, groups, m_rows, blockIdx.y, &s_group, &s_start, &s_end);
  __syncthreads();
  const int group = s_group;
  if (group < 0) return;                                                    // CTA-uniform
  const int64_t start = s_start;
  GemvTask<TA, TB> t{a + start * k, b + int64_t(group) * n * k, nullptr, nullptr, d + start * n, n, s_end - start, k};
  if constexpr (kScaleA) t.a_scale = a_scale + start;
  if constexpr (kScaleB) t.b_scale = b_scale + int64_t(group) * n;
  gemv_task<TA, TB, kScaleA, kScaleB, kReLU2, kSplit>(t, n);
}

#define NK_GEMV_PARAMS                                                                                         \
  const TA *__restrict__ a, const TB *__restrict__ b, __nv_bfloat16 *__restrict__ d,                          \
      const float *__restrict__ a_scale, const float *__restrict__ b_scale, const int32_t *__restrict__ offsets, \
      int groups, int64_t m_rows, int n, int k
#define NK_GEMV_ARGS a, b, d, a_scale, b_scale, offsets, groups, m_rows, n, k

// BF16 and weights-only FP8 (bf16 a): held to 80 registers, 3 CTAs per SM. Unbounded, the double-buffered loop
// takes 102 (BF16): 2 CTAs per SM; bounded, one register spills, outside the loop (ptxas, session 14).
template <typename TA, typename TB, bool kScaleA, bool kScaleB, bool kReLU2, int kSplit>
__global__ void __launch_bounds__(kWarps * 32, 3) grouped_gemv_nt_kernel(NK_GEMV_PARAMS) {
  grouped_gemv_nt<TA, TB, kScaleA, kScaleB, kReLU2, kSplit>(NK_GEMV_ARGS);
}

// FP8 x FP8 (8-row passes): held to 128 registers, 2 CTAs per SM (the split kernels spill 40 bytes, in the epilogue).
// Unbounded, its split kernels took 153-154 (1 CTA per SM), which is why no split gained for it in session 12's
// sweep; session 14 measured split 2 at 128 registers (bench/NOTES.md).
template <typename TA, typename TB, bool kScaleA, bool kScaleB, bool kReLU2, int kSplit>
__global__ void __launch_bounds__(kWarps * 32, 2) grouped_gemv_fp8_kernel(NK_GEMV_PARAMS) {
  grouped_gemv_nt<TA, TB, kScaleA, kScaleB, kReLU2, kSplit>(NK_GEMV_ARGS);
}
#undef NK_GEMV_PARAMS
#undef NK_GEMV_ARGS

// MoE decode: CTA row j < assignments is assignment j (its expert from topk_idx), the rest the shared expert's
// column blocks. BF16 or weights-only FP8 (bf16 a), bounded like grouped_gemv_nt_kernel.
template <typename TB, bool kReLU2, int kSplit>
__global__ void __launch_bounds__(kWarps * 32, 3) moe_decode_gemv_kernel(const MoeDecodeGemvParams p) {
  using TA = __nv_bfloat16;
  constexpr bool kScaleB = !std::is_same_v<TA, TB>;
  const int j = blockIdx.y, n = p.n;
  // Two inlined copies of the loop, so each branch's row count and K stay constants or kernel parameters (one
  // GemvTask for both held them in registers: 48 bytes of spills at BF16, split 1).
  if (j < p.assignments) {
    const int e = p.topk_idx[j];
    auto* d = static_cast<__nv_bfloat16*>(p.d) + int64_t(j) * n;
    if (e < 0 || e >= p.experts) {                                          // CTA-uniform: a zero row
      constexpr int kPerCta = kWarps / kSplit * kCh;
      const int c = blockIdx.x * kPerCta + threadIdx.x;
      if (threadIdx.x < kPerCta && c < n) d[c] = __float2bfloat16_rn(0.f);
      return;
    }
    GemvTask<TA, TB> t{static_cast<const TA*>(p.a) + int64_t(j / p.a_div) * p.k,
                       static_cast<const TB*>(p.b) + int64_t(e) * n * p.k, nullptr, nullptr, d, n, 1, p.k};
    if constexpr (kScaleB) t.b_scale = p.b_scale + int64_t(e) * n;
    gemv_task<TA, TB, false, kScaleB, kReLU2, kSplit>(t, n);
  } else {
    const int s = j - p.assignments;                                        // the shared expert's s-th n channels
    GemvTask<TA, TB> t{static_cast<const TA*>(p.shared_a),
                       static_cast<const TB*>(p.shared_b) + int64_t(s) * n * p.shared_k, nullptr, nullptr,
                       static_cast<__nv_bfloat16*>(p.shared_d) + int64_t(s) * n, int64_t(p.shared_tasks) * n,
                       p.shared_rows, p.shared_k};
    if constexpr (kScaleB) t.b_scale = p.shared_b_scale + int64_t(s) * n;
    gemv_task<TA, TB, false, kScaleB, kReLU2, kSplit>(t, n);
  }
}

// MoE decode, one token: the down projection and the weighted sum (moe_kernels.h, MoeDecodeDownParams). A CTA owns
// kDCh channels; warp w streams the kDCh weight rows of work units w, w + kWarps, ... (a routed expert, or I columns
// of the shared expert), double-buffered like gemv_task, and leaves each unit's sums in shared memory; kDCh threads
// then round, weight and add them in slot order, as the decode GEMV's output and moe_unpermute would. Each
// channel's sums are the same at every kDCh (bit for bit); kDCh only sets the grid (H / kDCh CTAs, resident 2-4 per
// SM by registers), swept by scripts/sweep_gemv_split.py.
template <int kDCh>
constexpr int kDecodeDownMinCtas = kDCh <= 2 ? 4 : (kDCh == 4 ? 3 : 2);

template <typename TB, int kDCh>
__global__ void __launch_bounds__(kWarps * 32, kDecodeDownMinCtas<kDCh>) moe_decode_down_kernel(
    const MoeDecodeDownParams p) {
  using TA = __nv_bfloat16;
  constexpr int kLen = Chunk<TB>::kLen, kALen = Chunk<TA>::kLen, kXLoads = kLen / kALen;
  constexpr bool kScale = !std::is_same_v<TA, TB>;
  constexpr int64_t kStride = 32 * kLen;                                   // elements of K per trip of a warp
  __shared__ float s_sum[kDecodeDownMaxUnits][kDCh];
  __shared__ bool s_live[kDecodeDownMaxUnits];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n0 = blockIdx.x * kDCh, inter = p.inter, units = p.top_k + p.shared_pieces;
  for (int u = warp; u < units; u += kWarps) {
    const TB* w;                                                           // [kDCh, inter] rows, row stride ldw
    const TA* a;                                                           // [inter]
    int64_t ldw = inter;
    if (u < p.top_k) {
      const int e = p.topk_idx[u];
      if (e < 0 || e >= p.experts) {                                       // warp-uniform: adds nothing
        if (lane == 0) s_live[u] = false;
        continue;
      }
      w = static_cast<const TB*>(p.down) + (int64_t(e) * p.hidden + n0) * inter;
      a = static_cast<const TA*>(p.h) + int64_t(u) * inter;
    } else {
      const int64_t piece = int64_t(u - p.top_k) * inter;
      ldw = int64_t(p.shared_pieces) * inter;
      w = static_cast<const TB*>(p.shared_down) + int64_t(n0) * ldw + piece;
      a = static_cast<const TA*>(p.hs) + piece;
    }
    auto load_w = [&](uint4 (&raw)[kDCh], int64_t kk) {
#pragma unroll
      for (int c = 0; c < kDCh; ++c) raw[c] = __ldcs(reinterpret_cast<const uint4*>(w + c * ldw + kk));
    };
    float acc[kDCh] = {};
    const int64_t k_begin = int64_t(lane) * kLen;
    uint4 raw[kDCh];
    if (k_begin < inter) load_w(raw, k_begin);
    for (int64_t kk = k_begin; kk < inter; kk += kStride) {               // gemv_task's loop with one row of a
      uint4 next[kDCh];
      load_w(next, kk + kStride < inter ? kk + kStride : kk);
#pragma unroll
      for (int j = 0; j < kXLoads; ++j) {
        constexpr int kWords = 4 / kXLoads;
        const Chunk<TA> x(__ldg(reinterpret_cast<const uint4*>(a + kk) + j));
#pragma unroll
        for (int c = 0; c < kDCh; ++c) {
          const uint32_t words[4] = {raw[c].x, raw[c].y, raw[c].z, raw[c].w};
          float wv[kALen];
          widen<TB, kWords>(words + j * kWords, wv);
#pragma unroll
          for (int i = 0; i < kALen; ++i) acc[c] = fmaf(wv[i], x.v[i], acc[c]);
        }
      }
#pragma unroll
      for (int c = 0; c < kDCh; ++c) raw[c] = next[c];
    }
#pragma unroll
    for (int c = 0; c < kDCh; ++c) {
#pragma unroll
      for (int off = 16; off > 0; off /= 2) acc[c] += __shfl_xor_sync(0xffffffffu, acc[c], off);
    }
    if (lane == 0) {
#pragma unroll
      for (int c = 0; c < kDCh; ++c) s_sum[u][c] = acc[c];
      s_live[u] = true;
    }
  }
  __syncthreads();
  if (threadIdx.x < kDCh) {
    const int c = threadIdx.x, col = n0 + c;
    float routed = 0.f;                                                    // slot order, as moe_unpermute
    for (int j = 0; j < p.top_k; ++j) {
      if (!s_live[j]) continue;
      float y = s_sum[j][c];
      if constexpr (kScale) y *= p.down_scale[int64_t(p.topk_idx[j]) * p.hidden + col];
      routed = fmaf(p.topk_weight[j], __bfloat162float(__float2bfloat16_rn(y)), routed);
    }
    float shared = 0.f;
    for (int s = 0; s < p.shared_pieces; ++s) shared += s_sum[p.top_k + s][c];
    if constexpr (kScale) shared *= p.shared_scale[col];
    const float r = __bfloat162float(__float2bfloat16_rn(routed));
    static_cast<__nv_bfloat16*>(p.out)[col] = __float2bfloat16_rn(r + __bfloat162float(__float2bfloat16_rn(shared)));
  }
}

template <typename TA, typename TB, bool kScaleA, bool kScaleB, bool kReLU2, int kSplit>
constexpr auto gemv_kernel() {
  if constexpr (sizeof(TA) == 1) return grouped_gemv_fp8_kernel<TA, TB, kScaleA, kScaleB, kReLU2, kSplit>;
  else return grouped_gemv_nt_kernel<TA, TB, kScaleA, kScaleB, kReLU2, kSplit>;
}

// Resident CTAs of `kKernel` on the whole GPU (the split kernels use the unsplit one's registers; cached per kernel).
template <auto kKernel>
int resident_ctas(int sm_count) {
  static const int per_sm = [] {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kKernel, kWarps * 32, 0) != cudaSuccess) {
      (void)cudaGetLastError();
      blocks = 1;
    }
    return std::max(blocks, 1);
  }();
  return per_sm * sm_count;
}

// launch(std::integral_constant<int, kSplit>, grid) for split = kSplit: the grid covers n channels in CTAs of
// kWarps / kSplit * kCh, times `rows` CTA rows. Returns the launch error, or "".
template <typename Launch>
const char* launch_with_split(int split, int n, int rows, Launch&& launch) {
  auto go = [&](auto split_const) -> const char* {
    constexpr int kPerCta = kWarps / decltype(split_const)::value * kCh;    // channels per CTA
    const int n_blocks = (n + kPerCta - 1) / kPerCta;
    if (n_blocks == 0 || rows == 0) return "";
    launch(split_const, dim3(n_blocks, rows));
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? "" : cudaGetErrorString(err);
  };
  switch (split) {
    case 1: return go(std::integral_constant<int, 1>{});
    case 2: return go(std::integral_constant<int, 2>{});
    case 4: return go(std::integral_constant<int, 4>{});
    case 8: return go(std::integral_constant<int, 8>{});
    default: return "split must be 1, 2, 4 or 8";
  }
}

template <typename TA, typename TB, bool kScaleA, bool kScaleB, bool kReLU2>
const char* launch(const GroupedGemmParams& p) {
  const int touched = int(std::min<int64_t>(p.groups, p.m_rows));   // at most this many groups have rows
  const int split =
      p.gemv_split > 0 ? p.gemv_split
                       : gemv_split_for(p.n, p.k, sizeof(TB), touched,
                                        resident_ctas<gemv_kernel<TA, TB, kScaleA, kScaleB, kReLU2, 1>()>(p.sm_count));
  return launch_with_split(split, p.n, touched, [&](auto split_const, dim3 grid) {
    gemv_kernel<TA, TB, kScaleA, kScaleB, kReLU2, decltype(split_const)::value>()<<<grid, kWarps * 32, 0, p.stream>>>(
        static_cast<const TA*>(p.a), static_cast<const TB*>(p.b), static_cast<__nv_bfloat16*>(p.d), p.a_scale,
        p.b_scale, p.offsets, p.groups, p.m_rows, p.n, p.k);
  });
}

template <typename TB, bool kReLU2>
const char* decode_launch(const MoeDecodeGemvParams& p) {
  const int rows = p.assignments + p.shared_tasks;                        // CTA rows (shared_tasks = 0: none)
  // The rule sees the routed K: the shared expert's longer rows (down: 2 x) only lengthen its CTAs.
  const int split = p.gemv_split > 0 ? p.gemv_split
                                     : gemv_split_for(p.n, p.k, sizeof(TB), rows,
                                                      resident_ctas<moe_decode_gemv_kernel<TB, kReLU2, 1>>(p.sm_count));
  return launch_with_split(split, p.n, rows, [&](auto split_const, dim3 grid) {
    moe_decode_gemv_kernel<TB, kReLU2, decltype(split_const)::value><<<grid, kWarps * 32, 0, p.stream>>>(p);
  });
}

template <int kDCh>
void decode_down_launch(const MoeDecodeDownParams& p) {
  const int blocks = p.hidden / kDCh;                                      // H % 8 == 0 (checked by the host entry)
  if (blocks == 0) return;
  if (p.w8) moe_decode_down_kernel<__nv_fp8_e4m3, kDCh><<<blocks, kWarps * 32, 0, p.stream>>>(p);
  else moe_decode_down_kernel<__nv_bfloat16, kDCh><<<blocks, kWarps * 32, 0, p.stream>>>(p);
}

}  // namespace

int gemv_split_for(int n, int k, int elem_bytes, int touched_groups, int resident) {
  // H200 sweep (scripts/sweep_gemv_split.py, bench/NOTES.md): BF16 and weights-only FP8 gained where the unsplit
  // grid is under two waves: the best split was the largest that still fits one wave (BF16 shared expert up 116
  // CTAs: 2; down 84: 4), or, with none, the one of 1 and 2 whose last wave is fullest (BF16 routed down at T = 1,
  // 504 CTAs: 2; FP8 x FP8 Mamba in_proj, 322 CTAs at 2 per SM: 2 took 15.4 us where 4, fuller still, took 21.8,
  // session 14). Each lane keeps >= 1 piece. (A cap of 2 pieces kept weights-only FP8's shared expert down,
  // K = 3,712 bytes, at split 2: 7.8 us where split 4 took 6.8 at 3 CTAs per SM, session 12.)
  const int pieces = k * elem_bytes / 16;                            // 16-byte pieces of one weight row
  auto ctas = [&](int s) { return int64_t((n + kWarps / s * kCh - 1) / (kWarps / s * kCh)) * touched_groups; };
  if (resident < 1 || touched_groups < 1 || ctas(1) >= 2 * int64_t(resident)) return 1;
  int one_wave = 0, fullest = 1;
  double best_fill = 0;
  for (int s = 1; s <= kWarps && pieces >= 32 * s; s *= 2) {
    const int64_t c = ctas(s), waves = (c + resident - 1) / resident;
    if (c <= resident) one_wave = s;
    const double fill = double(c) / double(waves * resident);
    if (s <= 2 && fill > best_fill + 1e-9) best_fill = fill, fullest = s;
  }
  return one_wave ? one_wave : fullest;
}

const char* grouped_gemv_run(const GroupedGemmParams& p) {
  switch (p.kind) {
    case GemmKind::kNT: return launch<__nv_bfloat16, __nv_bfloat16, false, false, false>(p);
    case GemmKind::kNTReLU2: return launch<__nv_bfloat16, __nv_bfloat16, false, false, true>(p);
    case GemmKind::kFp8NT: return launch<__nv_fp8_e4m3, __nv_fp8_e4m3, true, true, false>(p);
    case GemmKind::kFp8NTReLU2: return launch<__nv_fp8_e4m3, __nv_fp8_e4m3, true, true, true>(p);
    case GemmKind::kW8NT: return launch<__nv_bfloat16, __nv_fp8_e4m3, false, true, false>(p);
    case GemmKind::kW8NTReLU2: return launch<__nv_bfloat16, __nv_fp8_e4m3, false, true, true>(p);
    case GemmKind::kNTScaled: return launch<__nv_bfloat16, __nv_bfloat16, true, false, false>(p);
    case GemmKind::kW8NTScaled: return launch<__nv_bfloat16, __nv_fp8_e4m3, true, true, false>(p);
    default: return "grouped GEMV: only the NT kinds have a GEMV path";
  }
}

const char* moe_decode_gemv_run(const MoeDecodeGemvParams& p) {
  switch (p.kind) {
    case GemmKind::kNT: return decode_launch<__nv_bfloat16, false>(p);
    case GemmKind::kNTReLU2: return decode_launch<__nv_bfloat16, true>(p);
    case GemmKind::kW8NT: return decode_launch<__nv_fp8_e4m3, false>(p);
    case GemmKind::kW8NTReLU2: return decode_launch<__nv_fp8_e4m3, true>(p);
    default: return "MoE decode GEMV: only the BF16 and weights-only FP8 NT kinds";
  }
}

const char* moe_decode_down_run(const MoeDecodeDownParams& p) {
  if (p.top_k + p.shared_pieces > kDecodeDownMaxUnits) return "MoE decode down: more than 16 work units";
  switch (p.channels == 0 ? kDecodeDownChannels : p.channels) {
    case 1: decode_down_launch<1>(p); break;
    case 2: decode_down_launch<2>(p); break;
    case 4: decode_down_launch<4>(p); break;
    case 8: decode_down_launch<8>(p); break;
    default: return "MoE decode down: channels per CTA must be 1, 2, 4 or 8";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace nk::moe
