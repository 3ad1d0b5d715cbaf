// Expert-sorted token permutation and its weighted inverse (see moe_kernels.h for the contract).
//
// permute: no host synchronisation, deterministic (no atomics); in general a memset (and for FP8 rows the row_scale
// fill, zero_fill_kernel) and 4 launches:
//   1. rank_in_chunk_kernel  per chunk of kChunk assignments: stable rank of each assignment among the chunk's
//                            assignments to the same expert (warp match + per-warp counts), and the chunk histogram
//   2. expert_offsets_kernel one block: tokens per expert, padded, exclusive scan -> expert_offsets; then the first
//                            row of every (expert, chunk) pair
//   3. assign_rows_kernel    row = first row of (expert, chunk) + local rank; token_of_row[row] = token
//   4. scatter_rows_kernel   rows[row_of_assignment[t, j]] = x[t], x's row read once; zeros for padding
// Up to one chunk of assignments and 2 * kChunk rows (decode batches), permute_one_chunk_kernel does 1-3 and the
// fills in one block, and gather_rows_kernel (rows[r] = x[token_of_row[r]]) step 4: 2 launches.
// unpermute (and the backward of permute): one block per token gathers its k rows in slot order.
#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <initializer_list>
#include <type_traits>

#include "moe/moe_device.cuh"
#include "moe/moe_kernels.h"

namespace nk::moe {
namespace {

constexpr int kRankThreads = 256;
constexpr int kRankWarps = kRankThreads / 32;
constexpr int kChunk = 2048;  // assignments ranked per block
constexpr int kScanThreads = 1024;
constexpr int kRowThreads = 256;

int64_t chunks_of(int64_t n_assign) { return (n_assign + kChunk - 1) / kChunk; }
// Decode batches: one block ranks and places everything, and the rows are gathered (not scattered).
bool fits_one_chunk(int64_t n_assign, int64_t m_rows) { return n_assign <= kChunk && m_rows <= 2 * kChunk; }

__global__ void __launch_bounds__(kRankThreads)
rank_in_chunk_kernel(const int32_t* __restrict__ topk_idx, int64_t n_assign, int num_experts, int n_chunks,
                     int32_t* __restrict__ local_rank, int32_t* __restrict__ hist /* [E][n_chunks] */) {
  extern __shared__ int32_t smem[];
  int32_t* running = smem;                   // [E]: this chunk's assignments per expert so far
  int32_t* warp_count = smem + num_experts;  // [kRankWarps][E]: this round's count per warp and expert
  const int tid = threadIdx.x;
  for (int i = tid; i < num_experts * (kRankWarps + 1); i += kRankThreads) smem[i] = 0;
  __syncthreads();

  const int64_t begin = int64_t(blockIdx.x) * kChunk;
  const int64_t end = min(begin + kChunk, n_assign);
  for (int64_t base = begin; base < end; base += kRankThreads) {  // uniform trip count: full-warp intrinsics are safe
    const int64_t a = base + tid;
    int e = -1;
    if (a < end) {
      e = topk_idx[a];
      if (e < 0 || e >= num_experts) e = -1;  // dropped
    }
    const int r = rank_round(e, running, warp_count, num_experts, kRankWarps);
    if (a < end) local_rank[a] = r;
  }
  for (int x = tid; x < num_experts; x += kRankThreads) hist[int64_t(x) * n_chunks + blockIdx.x] = running[x];
}

__global__ void __launch_bounds__(kScanThreads)
expert_offsets_kernel(int32_t* __restrict__ hist /* [E][n_chunks] in: counts, out: first rows */, int n_chunks,
                      int num_experts, int pad_to, int32_t* __restrict__ expert_offsets) {
  extern __shared__ int32_t s_start[];  // [E]
  using Scan = cub::BlockScan<int32_t, kScanThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int32_t carry;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int kWarps = kScanThreads / 32;

  // Padded row count of every expert (a warp per expert).
  for (int e = warp; e < num_experts; e += kWarps) {
    int32_t s = 0;
    for (int c = lane; c < n_chunks; c += 32) s += hist[int64_t(e) * n_chunks + c];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) s_start[e] = (s + pad_to - 1) / pad_to * pad_to;
  }
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();

  // Exclusive scan over experts, kScanThreads at a time.
  for (int e0 = 0; e0 < num_experts; e0 += kScanThreads) {
    const int e = e0 + threadIdx.x;
    const int32_t padded = e < num_experts ? s_start[e] : 0;
    int32_t start, total;
    Scan(scan_tmp).ExclusiveSum(padded, start, total);
    const int32_t before = carry;
    __syncthreads();
    if (e < num_experts) {
      s_start[e] = before + start;
      expert_offsets[e] = before + start;
    }
    if (threadIdx.x == 0) carry = before + total;
    __syncthreads();
  }
  if (threadIdx.x == 0) expert_offsets[num_experts] = carry;

  // First row of each (expert, chunk): the expert's start + its assignments in earlier chunks (a warp per expert).
  for (int e = warp; e < num_experts; e += kWarps) {
    int32_t run = s_start[e];
    for (int c0 = 0; c0 < n_chunks; c0 += 32) {
      const int c = c0 + lane;
      const int32_t v = c < n_chunks ? hist[int64_t(e) * n_chunks + c] : 0;
      int32_t incl = v;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int32_t y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      if (c < n_chunks) hist[int64_t(e) * n_chunks + c] = run + incl - v;
      run += __shfl_sync(0xffffffffu, incl, 31);
    }
  }
}

__global__ void assign_rows_kernel(const int32_t* __restrict__ topk_idx, int64_t n_assign, int top_k, int num_experts,
                                   const int32_t* __restrict__ first_row, int n_chunks,
                                   int32_t* __restrict__ row_of_assignment /* in: local rank */,
                                   int32_t* __restrict__ token_of_row, const float* __restrict__ token_scale,
                                   float* __restrict__ row_scale) {
  const int64_t a = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= n_assign) return;
  const int e = topk_idx[a];
  const int32_t local = row_of_assignment[a];
  if (e < 0 || e >= num_experts || local < 0) {
    row_of_assignment[a] = -1;
    return;
  }
  const int32_t row = first_row[int64_t(e) * n_chunks + a / kChunk] + local;
  row_of_assignment[a] = row;
  token_of_row[row] = int32_t(a / top_k);
  if (row_scale) row_scale[row] = token_scale[a / top_k];
}

// Steps 1-3 for n_assign <= kChunk in one block (the memset and row_scale fill too), ranks kept in registers: at
// decode batches the five launches cost more than the work (bench/NOTES.md). Same results as the three kernels.
constexpr int kSlotsPerThread = kChunk / kRankThreads;

__global__ void __launch_bounds__(kRankThreads)
permute_one_chunk_kernel(const int32_t* __restrict__ topk_idx, int n_assign, int top_k, int num_experts, int pad_to,
                         int64_t m_rows, int32_t* __restrict__ row_of_assignment,
                         int32_t* __restrict__ expert_offsets, int32_t* __restrict__ token_of_row,
                         const float* __restrict__ token_scale, float* __restrict__ row_scale) {
  extern __shared__ int32_t smem[];
  int32_t* running = smem;                                  // [E]: assignments per expert so far
  int32_t* warp_count = smem + num_experts;                 // [kRankWarps][E]: this round's count per warp and expert
  int32_t* first_row = smem + num_experts * (kRankWarps + 1);  // [E]
  using Scan = cub::BlockScan<int32_t, kRankThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int32_t carry;
  const int tid = threadIdx.x;
  for (int i = tid; i < num_experts * (kRankWarps + 1); i += kRankThreads) smem[i] = 0;
  for (int64_t r = tid; r < m_rows; r += kRankThreads) {  // -1: padding until an assignment fills the row
    token_of_row[r] = -1;
    if (row_scale) row_scale[r] = 0.f;
  }
  if (tid == 0) carry = 0;
  __syncthreads();

  int expert[kSlotsPerThread], rank[kSlotsPerThread];  // of assignment i * kRankThreads + tid
#pragma unroll
  for (int i = 0; i < kSlotsPerThread; ++i) {
    expert[i] = -1;
    rank[i] = -1;
    if (i * kRankThreads >= n_assign) continue;  // uniform over the block: rank_round's barriers stay matched
    const int a = i * kRankThreads + tid;
    int e = a < n_assign ? topk_idx[a] : -1;
    if (e < 0 || e >= num_experts) e = -1;  // dropped
    expert[i] = e;
    rank[i] = rank_round(e, running, warp_count, num_experts, kRankWarps);
  }

  // Padded rows per expert, exclusive scan over experts kRankThreads at a time -> offsets and first rows.
  for (int e0 = 0; e0 < num_experts; e0 += kRankThreads) {
    const int e = e0 + tid;
    const int32_t padded = e < num_experts ? (running[e] + pad_to - 1) / pad_to * pad_to : 0;
    int32_t start, total;
    Scan(scan_tmp).ExclusiveSum(padded, start, total);
    const int32_t before = carry;
    __syncthreads();
    if (e < num_experts) {
      first_row[e] = before + start;
      expert_offsets[e] = before + start;
    }
    if (tid == 0) carry = before + total;
    __syncthreads();
  }
  if (tid == 0) expert_offsets[num_experts] = carry;

#pragma unroll
  for (int i = 0; i < kSlotsPerThread; ++i) {
    const int a = i * kRankThreads + tid;
    if (a >= n_assign) continue;
    if (expert[i] < 0) {
      row_of_assignment[a] = -1;
      continue;
    }
    const int32_t row = first_row[expert[i]] + rank[i];
    row_of_assignment[a] = row;
    token_of_row[row] = a / top_k;
    if (row_scale) row_scale[row] = token_scale[a / top_k];
  }
}

// row_scale[r] = 0 for every row no assignment fills (padding, dropped slots); assign_rows_kernel writes the rest.
__global__ void zero_fill_kernel(float* __restrict__ row_scale, int64_t m_rows) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < m_rows; r += int64_t(gridDim.x) * blockDim.x)
    row_scale[r] = 0.f;
}

// rows[r] = x[token_of_row[r]] (zeros where token_of_row[r] < 0). V: the copy unit (16, 8, 4 or 2 bytes).
template <typename V>
__global__ void gather_rows_kernel(const V* __restrict__ x, const int32_t* __restrict__ token_of_row, int64_t m_rows,
                                   int64_t n_vec, int rows_per_block, V* __restrict__ rows) {
  const int threads_per_row = blockDim.x / rows_per_block;
  const int64_t r = int64_t(blockIdx.x) * rows_per_block + threadIdx.x / threads_per_row;
  if (r >= m_rows) return;
  const int32_t t = token_of_row[r];
  V* dst = rows + r * n_vec;
  if (t < 0) {
    const V zero{};
    for (int64_t v = threadIdx.x % threads_per_row; v < n_vec; v += threads_per_row) dst[v] = zero;
  } else {
    const V* src = x + int64_t(t) * n_vec;
    for (int64_t v = threadIdx.x % threads_per_row; v < n_vec; v += threads_per_row) dst[v] = src[v];
  }
}

// rows[roa[t, j]] = x[t] for every kept slot j, one CTA per token: x's row is read once and stored k times. The
// gather above reads it once per copy, and past one chunk its reads miss L2 (8K prefill: 528 MB moved per layer
// in 128 us, the H200's copy rate, for 308 MB of unique bytes). The CTAs after the tokens' zero the rows that no
// slot fills (token_of_row < 0: padding, dropped slots), blockDim rows each.
constexpr int kScatterSlots = 8;      // slot rows held in registers per pass over x's row
constexpr int kScatterThreads = 512;  // at most: a 16-byte unit per thread up to 8 KB rows

template <typename V>
__global__ void __launch_bounds__(kScatterThreads)
    scatter_rows_kernel(const V* __restrict__ x, const int32_t* __restrict__ roa, int64_t ntokens, int top_k,
                        const int32_t* __restrict__ token_of_row, int64_t m_rows, int64_t n_vec, V* __restrict__ rows) {
  if (blockIdx.x < ntokens) {
    const int64_t t = blockIdx.x;
    for (int j0 = 0; j0 < top_k; j0 += kScatterSlots) {
      int32_t r[kScatterSlots];
#pragma unroll
      for (int b = 0; b < kScatterSlots; ++b) {
        r[b] = j0 + b < top_k ? __ldg(roa + t * top_k + j0 + b) : -1;
        if (r[b] >= m_rows) r[b] = -1;
      }
      for (int64_t v = threadIdx.x; v < n_vec; v += blockDim.x) {
        const V val = x[t * n_vec + v];
#pragma unroll
        for (int b = 0; b < kScatterSlots; ++b)
          if (r[b] >= 0) rows[int64_t(r[b]) * n_vec + v] = val;
      }
    }
    return;
  }
  __shared__ int32_t pad[kScatterThreads];
  __shared__ int n_pad;
  const int64_t r = (int64_t(blockIdx.x) - ntokens) * blockDim.x + threadIdx.x;
  const bool mine = r < m_rows && token_of_row[r] < 0;
  if (threadIdx.x == 0) n_pad = 0;
  if (!__syncthreads_or(mine)) return;
  if (mine) pad[atomicAdd(&n_pad, 1)] = int32_t(r);  // any order: every listed row gets zeros
  __syncthreads();
  for (int i = 0; i < n_pad; ++i)
    for (int64_t v = threadIdx.x; v < n_vec; v += blockDim.x) rows[int64_t(pad[i]) * n_vec + v] = V{};
}

// out[t] = (add[t] +) sum_j w[t,j] * rows[roa[t,j]]. One token per `threads_per_row` threads. A token's rows are
// loaded kUnpermuteBatch at a time before any of them is summed: a plain loop over the runtime top_k made each
// load wait for the previous sum, six L2 round trips in a row (4.8 us per MoE layer at T = 1 on the H200). The
// batch's indices and weights load first, then its rows, without a branch between them: an index load behind a
// branch per row had kept the rows' loads in series all the same (SASS: each row load, then its unpacking, then
// the next index). The sums still run in j order, so the result is bitwise the plain loop's.
constexpr int kUnpermuteBatch = 8;

template <typename T, int N>
__global__ void unpermute_kernel(const T* __restrict__ rows, const int32_t* __restrict__ roa,
                                 const float* __restrict__ weight, const T* __restrict__ add, int64_t ntokens,
                                 int top_k, int64_t hidden, int64_t m_rows, int rows_per_block,
                                 T* __restrict__ out) {
  using P = Packet<T, N>;
  const int threads_per_row = blockDim.x / rows_per_block;
  const int64_t t = int64_t(blockIdx.x) * rows_per_block + threadIdx.x / threads_per_row;
  if (t >= ntokens) return;
  const int64_t n_vec = hidden / N;
  const int32_t* my_rows = roa ? roa + t * top_k : nullptr;                // null: row t*k + j (assignment order)
  const float* my_w = weight ? weight + t * top_k : nullptr;
  for (int64_t v = threadIdx.x % threads_per_row; v < n_vec; v += threads_per_row) {
    float acc[N];
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i] = 0.f;
    for (int j0 = 0; j0 < top_k; j0 += kUnpermuteBatch) {
      int32_t r[kUnpermuteBatch];
      float w[kUnpermuteBatch];
#pragma unroll
      for (int b = 0; b < kUnpermuteBatch; ++b) {         // the batch's row indices and weights, all at once
        const int j = min(j0 + b, top_k - 1);
        r[b] = my_rows ? __ldg(my_rows + j) : int32_t(t * top_k + j);
        w[b] = my_w ? __ldg(my_w + j) : 1.f;
      }
      P p[kUnpermuteBatch];
      bool ok[kUnpermuteBatch];
#pragma unroll
      for (int b = 0; b < kUnpermuteBatch; ++b) {         // then the rows, all at once
        ok[b] = j0 + b < top_k && r[b] >= 0 && r[b] < m_rows;   // dropped assignments add nothing (not 0 * row)
        if (ok[b]) p[b] = reinterpret_cast<const P*>(rows + int64_t(r[b]) * hidden)[v];
      }
#pragma unroll
      for (int b = 0; b < kUnpermuteBatch; ++b) {
        if (ok[b]) {
#pragma unroll
          for (int i = 0; i < N; ++i) acc[i] = fmaf(w[b], to_f32(p[b].v[i]), acc[i]);
        }
      }
    }
    P o;
    if (add) {
      const P q = reinterpret_cast<const P*>(add + t * hidden)[v];
#pragma unroll
      for (int i = 0; i < N; ++i) o.v[i] = from_f32<T>(to_f32(from_f32<T>(acc[i])) + to_f32(q.v[i]));
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) o.v[i] = from_f32<T>(acc[i]);
    }
    reinterpret_cast<P*>(out + t * hidden)[v] = o;
  }
}

// One block per token: d_rows[r_j] = w_j * dout[t]; d_weight[t, j] = <dout[t], rows[r_j]>.
template <typename T, int N, int MAXK>
__global__ void unpermute_bwd_kernel(const T* __restrict__ dout, const T* __restrict__ rows,
                                     const int32_t* __restrict__ roa, const float* __restrict__ weight,
                                     int top_k, int64_t hidden, int64_t m_rows, T* __restrict__ d_rows,
                                     float* __restrict__ d_weight) {
  using P = Packet<T, N>;
  __shared__ float s_part[kRowThreads / 32][MAXK];
  const int64_t t = blockIdx.x;
  const int64_t n_vec = hidden / N;
  int32_t r[MAXK];
  float w[MAXK], dot[MAXK];
#pragma unroll
  for (int j = 0; j < MAXK; ++j) {
    r[j] = j < top_k ? roa[t * top_k + j] : -1;
    if (r[j] >= m_rows) r[j] = -1;
    w[j] = (j < top_k && weight) ? weight[t * top_k + j] : 1.f;
    dot[j] = 0.f;
  }
  for (int64_t v = threadIdx.x; v < n_vec; v += blockDim.x) {
    const P g = reinterpret_cast<const P*>(dout + t * hidden)[v];
    float gf[N];
#pragma unroll
    for (int i = 0; i < N; ++i) gf[i] = to_f32(g.v[i]);
#pragma unroll
    for (int j = 0; j < MAXK; ++j) {
      if (r[j] < 0) continue;
      P o;
#pragma unroll
      for (int i = 0; i < N; ++i) o.v[i] = from_f32<T>(w[j] * gf[i]);
      reinterpret_cast<P*>(d_rows + int64_t(r[j]) * hidden)[v] = o;
      if (d_weight != nullptr) {
        const P x = reinterpret_cast<const P*>(rows + int64_t(r[j]) * hidden)[v];
#pragma unroll
        for (int i = 0; i < N; ++i) dot[j] = fmaf(gf[i], to_f32(x.v[i]), dot[j]);
      }
    }
  }
  if (d_weight == nullptr) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < MAXK; ++j) {
    float s = dot[j];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) s_part[warp][j] = s;
  }
  __syncthreads();
  if (threadIdx.x < top_k) {
    const int j = threadIdx.x;
    float s = 0.f;
    for (int wp = 0; wp < int(blockDim.x / 32); ++wp) s += s_part[wp][j];
    d_weight[t * top_k + j] = s;  // 0 for a dropped slot (its dot stayed 0)
  }
}

// Largest packet (in bytes, <= 16) dividing the row size and the alignment of every pointer.
int packet_bytes(int64_t row_bytes, std::initializer_list<const void*> ptrs) {
  int b = 16;
  while (b > 1 && row_bytes % b != 0) b /= 2;
  for (const void* p : ptrs)
    while (p && b > 1 && reinterpret_cast<uintptr_t>(p) % b != 0) b /= 2;
  return b;
}

void row_launch_shape(int64_t n_vec, int64_t n_rows, int* threads, int* rows_per_block, int64_t* blocks) {
  int tpr = 32;
  while (tpr < kRowThreads && tpr < n_vec) tpr *= 2;
  *rows_per_block = kRowThreads / tpr;
  *threads = kRowThreads;
  *blocks = (n_rows + *rows_per_block - 1) / *rows_per_block;
}

template <typename V>
void gather_rows(const void* x, const int32_t* token_of_row, int64_t m_rows, int64_t row_bytes, void* rows,
                 cudaStream_t stream) {
  const int64_t n_vec = row_bytes / int64_t(sizeof(V));
  int threads, rpb;
  int64_t blocks;
  row_launch_shape(n_vec, m_rows, &threads, &rpb, &blocks);
  gather_rows_kernel<V><<<blocks, threads, 0, stream>>>(static_cast<const V*>(x), token_of_row, m_rows, n_vec, rpb,
                                                        static_cast<V*>(rows));
}

template <typename V>
void scatter_rows(const void* x, const int32_t* roa, int64_t ntokens, int top_k, const int32_t* token_of_row,
                  int64_t m_rows, int64_t row_bytes, void* rows, cudaStream_t stream) {
  const int64_t n_vec = row_bytes / int64_t(sizeof(V));
  const int threads = int(std::min<int64_t>(kScatterThreads, (n_vec + 31) / 32 * 32));
  const int64_t blocks = ntokens + (m_rows + threads - 1) / threads;
  scatter_rows_kernel<V><<<blocks, threads, 0, stream>>>(static_cast<const V*>(x), roa, ntokens, top_k, token_of_row,
                                                         m_rows, n_vec, static_cast<V*>(rows));
}

template <typename T>
void unpermute_typed(const void* rows, const int32_t* roa, const float* weight, const void* add, int64_t ntokens,
                     int top_k, int64_t hidden, int64_t m_rows, void* out, cudaStream_t stream) {
  const int pb = packet_bytes(hidden * int64_t(sizeof(T)), {rows, add, out});
  auto launch = [&](auto n_const) {
    constexpr int N = decltype(n_const)::value;
    int threads, rpb;
    int64_t blocks;
    row_launch_shape(hidden / N, ntokens, &threads, &rpb, &blocks);
    unpermute_kernel<T, N><<<blocks, threads, 0, stream>>>(static_cast<const T*>(rows), roa, weight,
                                                           static_cast<const T*>(add), ntokens, top_k, hidden,
                                                           m_rows, rpb, static_cast<T*>(out));
  };
  switch (pb / int(sizeof(T))) {
    case 8: case 16: launch(std::integral_constant<int, 8>{}); break;
    case 4: launch(std::integral_constant<int, 4>{}); break;
    case 2: launch(std::integral_constant<int, 2>{}); break;
    default: launch(std::integral_constant<int, 1>{}); break;
  }
}

template <typename T>
void unpermute_bwd_typed(const void* dout, const void* rows, const int32_t* roa, const float* weight,
                         int64_t ntokens, int top_k, int64_t hidden, int64_t m_rows, void* d_rows, float* d_weight,
                         cudaStream_t stream) {
  auto launch = [&](auto n_const, auto maxk_const) {
    constexpr int N = decltype(n_const)::value, K = decltype(maxk_const)::value;
    int threads = 32;
    while (threads < kRowThreads && threads < hidden / N) threads *= 2;
    unpermute_bwd_kernel<T, N, K><<<ntokens, threads, 0, stream>>>(
        static_cast<const T*>(dout), static_cast<const T*>(rows), roa, weight, top_k, hidden, m_rows,
        static_cast<T*>(d_rows), d_weight);
  };
  auto with_n = [&](auto maxk_const) {
    switch (packet_bytes(hidden * int64_t(sizeof(T)), {dout, rows, d_rows}) / int(sizeof(T))) {
      case 8: case 16: launch(std::integral_constant<int, 8>{}, maxk_const); break;
      case 4: launch(std::integral_constant<int, 4>{}, maxk_const); break;
      case 2: launch(std::integral_constant<int, 2>{}, maxk_const); break;
      default: launch(std::integral_constant<int, 1>{}, maxk_const); break;
    }
  };
  if (top_k <= 8) with_n(std::integral_constant<int, 8>{});
  else with_n(std::integral_constant<int, 32>{});
}

}  // namespace

int64_t permute_scratch_ints(int64_t n_assign, int num_experts, int64_t m_rows) {
  return chunks_of(n_assign) * num_experts + m_rows;
}

void permute_launch(const void* x, int elem_bytes, const int32_t* topk_idx, int64_t ntokens, int top_k,
                    int num_experts, int pad_to, int64_t hidden, int64_t m_rows, void* rows,
                    int32_t* row_of_assignment, int32_t* expert_offsets, const float* token_scale, float* row_scale,
                    int32_t* scratch, cudaStream_t stream) {
  const int64_t n_assign = ntokens * top_k;
  const int n_chunks = int(chunks_of(n_assign));
  int32_t* hist = scratch;                                       // [E][n_chunks]
  int32_t* token_of_row = scratch + int64_t(n_chunks) * num_experts;  // [m_rows]
  if (fits_one_chunk(n_assign, m_rows)) {  // one block also fills the rows (no padding blow-up)
    const size_t smem = sizeof(int32_t) * num_experts * (kRankWarps + 2);
    permute_one_chunk_kernel<<<1, kRankThreads, smem, stream>>>(topk_idx, int(n_assign), top_k, num_experts, pad_to,
                                                                m_rows, row_of_assignment, expert_offsets,
                                                                token_of_row, token_scale, row_scale);
  } else {
    if (m_rows > 0) cudaMemsetAsync(token_of_row, 0xff, sizeof(int32_t) * m_rows, stream);  // -1: padding
    if (row_scale && m_rows > 0) zero_fill_kernel<<<64, 256, 0, stream>>>(row_scale, m_rows);
    if (n_chunks > 0) {
      const size_t smem = sizeof(int32_t) * num_experts * (kRankWarps + 1);
      rank_in_chunk_kernel<<<n_chunks, kRankThreads, smem, stream>>>(topk_idx, n_assign, num_experts, n_chunks,
                                                                     row_of_assignment, hist);
    }
    expert_offsets_kernel<<<1, kScanThreads, sizeof(int32_t) * num_experts, stream>>>(hist, n_chunks, num_experts,
                                                                                      pad_to, expert_offsets);
    if (n_assign > 0) {
      const int threads = 256;
      assign_rows_kernel<<<(n_assign + threads - 1) / threads, threads, 0, stream>>>(
          topk_idx, n_assign, top_k, num_experts, hist, n_chunks, row_of_assignment, token_of_row, token_scale,
          row_scale);
    }
  }
  permute_rows_launch(x, elem_bytes, row_of_assignment, token_of_row, ntokens, top_k, hidden, m_rows, rows, stream);
}

void permute_rows_launch(const void* x, int elem_bytes, const int32_t* row_of_assignment,
                         const int32_t* token_of_row, int64_t ntokens, int top_k, int64_t hidden, int64_t m_rows,
                         void* rows, cudaStream_t stream) {
  if (m_rows == 0) return;
  // A few rows (one chunk, L2-resident): the gather's many small CTAs; past that the scatter reads x's rows once.
  const bool one_chunk = fits_one_chunk(ntokens * top_k, m_rows);
  const int64_t row_bytes = hidden * elem_bytes;
  auto copy = [&](auto unit) {
    using V = decltype(unit);
    if (one_chunk) gather_rows<V>(x, token_of_row, m_rows, row_bytes, rows, stream);
    else scatter_rows<V>(x, row_of_assignment, ntokens, top_k, token_of_row, m_rows, row_bytes, rows, stream);
  };
  switch (packet_bytes(row_bytes, {x, rows})) {
    case 16: copy(uint4{}); break;
    case 8: copy(uint2{}); break;
    case 4: copy(uint32_t{}); break;
    default: copy(uint16_t{}); break;
  }
}

void unpermute_launch(const void* rows, DType dtype, const int32_t* row_of_assignment, const float* weight,
                      const void* add, int64_t ntokens, int top_k, int64_t hidden, int64_t m_rows, void* out,
                      cudaStream_t stream) {
  if (ntokens == 0 || hidden == 0) return;
  switch (dtype) {
    case DType::kFloat32:
      unpermute_typed<float>(rows, row_of_assignment, weight, add, ntokens, top_k, hidden, m_rows, out,
                                      stream);
      break;
    case DType::kFloat16:
      unpermute_typed<__half>(rows, row_of_assignment, weight, add, ntokens, top_k, hidden, m_rows, out,
                                      stream);
      break;
    case DType::kBFloat16:
      unpermute_typed<__nv_bfloat16>(rows, row_of_assignment, weight, add, ntokens, top_k, hidden, m_rows, out,
                                      stream);
      break;
  }
}

void unpermute_bwd_launch(const void* dout, const void* rows, DType dtype, const int32_t* row_of_assignment,
                          const float* weight, int64_t ntokens, int top_k, int64_t hidden, int64_t m_rows,
                          void* d_rows, float* d_weight, cudaStream_t stream) {
  if (ntokens == 0) return;
  switch (dtype) {
    case DType::kFloat32:
      unpermute_bwd_typed<float>(dout, rows, row_of_assignment, weight, ntokens, top_k, hidden, m_rows,
                               d_rows, d_weight, stream);
      break;
    case DType::kFloat16:
      unpermute_bwd_typed<__half>(dout, rows, row_of_assignment, weight, ntokens, top_k, hidden, m_rows,
                                d_rows, d_weight, stream);
      break;
    case DType::kBFloat16:
      unpermute_bwd_typed<__nv_bfloat16>(dout, rows, row_of_assignment, weight, ntokens, top_k, hidden, m_rows,
                                       d_rows, d_weight, stream);
      break;
  }
}

}  // namespace nk::moe
