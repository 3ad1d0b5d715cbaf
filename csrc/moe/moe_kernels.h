// Launchers of the MoE CUDA kernels, callable from the host entries (moe_api.cpp) without torch headers.
// All tensors are contiguous device buffers; every launcher runs on `stream` and never synchronises.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace nk::moe {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// ---------------------------------------------------------------------------------------------------------------
// Token permutation (moe_permute_kernel.cu)
//
// Assignment a = t * k + j (token t, slot j) goes to expert topk_idx[a]. Rows are expert-sorted and stable:
// expert e owns rows [expert_offsets[e], expert_offsets[e+1]); inside, its assignments in increasing a.
// Each expert's row count is rounded up to a multiple of pad_to (0 stays 0); padding rows are zero.
// Out-of-range expert ids are dropped: row_of_assignment = -1 (no row, contributes nothing).
// ---------------------------------------------------------------------------------------------------------------

// int32 scratch elements permute_launch needs (ranking histograms + token_of_row).
int64_t permute_scratch_ints(int64_t n_assign, int num_experts, int64_t m_rows);
constexpr int kMaxPermuteExperts = 1024;

// x [T, H] (elements of elem_bytes bytes: bf16/fp16/fp32/fp8) -> rows [M, H]; row_of_assignment [T*k];
// expert_offsets [E+1]; and, when token_scale [T] is given, row_scale [M] = token_scale[token of the row] (0 for
// padding): the per-token FP8 scales travel with their rows.
void permute_launch(const void* x, int elem_bytes, const int32_t* topk_idx, int64_t ntokens, int top_k,
                    int num_experts, int pad_to, int64_t hidden, int64_t m_rows, void* rows,
                    int32_t* row_of_assignment, int32_t* expert_offsets, const float* token_scale, float* row_scale,
                    int32_t* scratch, cudaStream_t stream);

// The row copy of permute_launch alone, for a permutation made elsewhere (the router's permutation mode):
// rows[row_of_assignment[t, j]] = x[t], zeros where token_of_row[r] < 0 (padding); token_of_row [m_rows].
void permute_rows_launch(const void* x, int elem_bytes, const int32_t* row_of_assignment,
                         const int32_t* token_of_row, int64_t ntokens, int top_k, int64_t hidden, int64_t m_rows,
                         void* rows, cudaStream_t stream);

// out[t] = (add[t] +) sum_j weight[t, j] * rows[row_of_assignment[t, j]]   (weight = 1 when null), summed in fp32
// in slot order j = 0..k-1 (deterministic), rounded to the rows dtype before `add` is added (then rounded again).
// Slots whose row is outside [0, m_rows) contribute nothing. row_of_assignment null: row t * top_k + j.
void unpermute_launch(const void* rows, DType dtype, const int32_t* row_of_assignment, const float* weight,
                      const void* add, int64_t ntokens, int top_k, int64_t hidden, int64_t m_rows, void* out,
                      cudaStream_t stream);

// Backward of unpermute: d_rows[r] = weight[t, j] * dout[t] for r = row_of_assignment[t, j] (rows no assignment
// points to are left untouched); when d_weight is not null, d_weight[t, j] = <dout[t], rows[r]> in fp32 (0 for
// dropped assignments); rows is read only then.
void unpermute_bwd_launch(const void* dout, const void* rows, DType dtype, const int32_t* row_of_assignment,
                          const float* weight, int64_t ntokens, int top_k, int64_t hidden, int64_t m_rows,
                          void* d_rows, float* d_weight, cudaStream_t stream);

// Row-wise FP8 e4m3 quantisation (moe_quant_kernel.cu): x [rows, cols] -> q [rows, cols] e4m3,
// scale [rows] fp32 = amax / 448 (1 for a zero row), q = e4m3_rn_satfinite(x / scale).
void quantize_rows_fp8_launch(const void* x, DType dtype, int64_t rows, int64_t cols, void* q, float* scale,
                              cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------------
// Grouped BF16 GEMMs for sm_90a (CUTLASS 3.x, TMA + warp-specialised wgmma, ptr-array problem shapes).
// Group e uses rows [offsets[e], offsets[e+1]) (clamped to [0, m_rows]); the per-group argument arrays are built
// on the device from `offsets` by a small kernel, so no host ever reads the counts.
//   NT:  d[rows_e, N]  = epi(a[rows_e, K] @ b[e, N, K]^T)          (forward: up / down projections)
//   NN:  d[rows_e, N]  = epi(a[rows_e, K] @ b[e, K, N])            (backward: dX)
//   TN:  d[e, N1, N2]  = a[rows_e, N1]^T @ b[rows_e, N2]           (backward: dW; zero for an empty group)
// NT scaled: d = (a[rows_e] @ b[e]^T) * a_scale[row] in the epilogue (the down projection with each row's routing
// weight, so that the combine is a plain sum).
// FP8 (e4m3 a and b, bf16 d): NT with d = epi(acc * a_scale[row] * b_scale[e, n]) (forward only).
// ---------------------------------------------------------------------------------------------------------------
enum class GemmKind : int {
  kNT = 0,           // epilogue: identity
  kNTReLU2 = 1,      // epilogue: relu(acc)^2
  kNN = 2,           // epilogue: identity
  kTN = 3,           // epilogue: identity
  kFp8NT = 4,        // epilogue: acc * a_scale * b_scale
  kFp8NTReLU2 = 5,   // epilogue: relu(acc * a_scale * b_scale)^2
  kW8NT = 6,         // weights-only FP8 (bf16 a, e4m3 b; GEMV path only): acc * b_scale
  kW8NTReLU2 = 7,    // the same, relu(acc * b_scale)^2
  kNTScaled = 8,     // epilogue: acc * a_scale[row] (bf16 a and b; a_scale: e.g. routing weights)
  kW8NTScaled = 9,   // weights-only FP8 (GEMV path only): acc * a_scale[row] * b_scale
};

// Kernel choice by rows per group (NT kinds): CUTLASS 128-row tiles for prefill/training; with few rows per group,
// swapped operands (grouped_gemm_*_swap.cu: d^T = b[e] @ a[rows_e]^T on 128x32 tiles, the channels on the MMA's
// 64-row side and the rows on a 32-wide N side); a GEMV (moe_gemv_kernel.cu) for the fewest rows. At decode the
// weights are the whole cost: H200, T = 64 / 256, the swapped tiles stream them at copy speed (4.2 TB/s) where
// 64x64 row tiles reached 3.2-3.3 (bench/NOTES.md, session 6).
enum class GemmPath : int { kLargeTiles = 0, kSwapAB = 1, kGemv = 2 };
constexpr bool is_nt(GemmKind kind) {
  return kind == GemmKind::kNT || kind == GemmKind::kNTReLU2 || kind == GemmKind::kFp8NT ||
         kind == GemmKind::kFp8NTReLU2 || kind == GemmKind::kNTScaled;
}

struct GroupedGemmParams {
  GemmKind kind;
  const void* a;             // bf16, or e4m3 for kFp8*
  const void* b;             // bf16, or e4m3 for kFp8* and kW8*
  void* d;                   // bf16
  const float* a_scale;      // [m_rows] (kFp8*, kNTScaled and kW8NTScaled only)
  const float* b_scale;      // [groups, n] (kFp8* and kW8* only)
  const int32_t* offsets;    // [groups + 1]
  int groups;
  int64_t m_rows;            // rows of a (all groups)
  int n;                     // NT/NN: output columns; TN: N1 (columns of a)
  int k;                     // NT/NN: reduction size; TN: N2 (columns of b)
  GemmPath path;             // which kernel (path_for)
  void* workspace;           // grouped_gemm_workspace_bytes(kind, path, groups, sm_count) bytes, 256-aligned
  int sm_count;
  int device;
  cudaStream_t stream;
  int gemv_split = 0;        // GEMV path: warps sharing one channel group's K (1, 2, 4, 8); 0 = gemv_split_for
};

size_t grouped_gemm_workspace_bytes(GemmKind kind, GemmPath path, int groups, int sm_count);
inline GemmPath path_for(GemmKind kind, int64_t m_rows, int groups) {
  if (!is_nt(kind)) return GemmPath::kLargeTiles;
  // GEMV for a couple of tokens (<= 16 rows, any precision); up to 32 rows per expert on average the swapped
  // tiles. H200 side by side (bench/NOTES.md, session 7), BF16 up+down, GEMV vs swapped: T = 8 0.205 / 0.201 ms,
  // T = 16 0.350 / 0.343, T = 32 0.531 / 0.491. FP8's GEMV widens e4m3 on CUDA cores and loses more (T = 16:
  // 0.344 / 0.209); T = 3..7 (18-42 rows) were not timed side by side. The average is over all E experts (the
  // touched count never reaches the host).
  if (m_rows <= 16) return GemmPath::kGemv;
  return m_rows <= 32 * int64_t(groups) ? GemmPath::kSwapAB : GemmPath::kLargeTiles;
}
// Zeroes d[e] (n x k bf16) for every group e without rows (kTN: those groups get no GEMM tiles).
void zero_empty_groups(const GroupedGemmParams& p);
// Returns an empty string on success, else what failed (CUTLASS status / CUDA error). kGemv runs
// grouped_gemv_run (NT kinds; N % 8 == 0 and K a multiple of 16 bytes, as for the CUTLASS kernels; no workspace).
const char* grouped_gemm_run(const GroupedGemmParams& p);
const char* grouped_gemv_run(const GroupedGemmParams& p);
// The GEMV's K split for n output channels, k-long rows of elem_bytes, touched_groups groups with rows and
// `resident` CTAs resident on the GPU at once.
int gemv_split_for(int n, int k, int elem_bytes, int touched_groups, int resident);

// MoE decode GEMV (moe_gemv_kernel.cu): the routed experts of a few tokens straight from topk_idx, no permute,
// and the shared expert in the same launch. Assignment j (of T * top_k) multiplies row j / a_div of a (a_div =
// top_k: a is x [T, K]; 1: a is h [T * top_k, K]) by b[topk_idx[j]] into d row j; an expert id outside
// [0, experts) gives a zero row. The shared expert's [shared_tasks * n, shared_k] weights run as shared_tasks
// more CTA rows of n channels each, all shared_rows rows of shared_a, into shared_d [shared_rows,
// shared_tasks * n]. Kinds: kNT / kNTReLU2 (bf16 b) and kW8NT / kW8NTReLU2 (e4m3 b with per-channel b_scale).
struct MoeDecodeGemvParams {
  GemmKind kind;
  const void* a;                 // bf16 [assignments / a_div, k]
  const void* b;                 // [experts, n, k]
  const float* b_scale;          // [experts, n] (kW8* only)
  void* d;                       // bf16 [assignments, n]
  const int32_t* topk_idx;       // [assignments]
  int assignments;
  int a_div;
  int experts;
  int n;
  int k;
  const void* shared_a;          // bf16 [shared_rows, shared_k], or null (then shared_tasks = 0): no shared expert
  const void* shared_b;          // [shared_tasks * n, shared_k], b's dtype
  const float* shared_b_scale;   // [shared_tasks * n] (kW8* only)
  void* shared_d;                // bf16 [shared_rows, shared_tasks * n]
  int shared_rows;
  int shared_tasks;
  int shared_k;
  int sm_count;
  cudaStream_t stream;
  int gemv_split = 0;            // as GroupedGemmParams::gemv_split
};
const char* moe_decode_gemv_run(const MoeDecodeGemvParams& p);

// MoE decode, one token: the down projection and the weighted sum in one launch (moe_gemv_kernel.cu).
// out[c] = round(round(sum_j w[j] * round(h[j] . down[topk_idx[j]][c] (* scale))) + round(hs . shared_down[c]
// (* scale))), the sums in slot order as moe_unpermute's. A CTA owns `channels` channels; its warps take the work
// units in turn: the k routed experts' rows and the shared expert's rows in pieces of I columns (Is = pieces * I).
// An expert id outside [0, experts) adds nothing.
struct MoeDecodeDownParams {
  bool w8;                       // e4m3 weights with per-channel scales, else bf16
  const void* h;                 // bf16 [k, I]: the routed rows, in slot order
  const int32_t* topk_idx;       // [k]
  const float* topk_weight;      // [k] fp32
  const void* down;              // [experts, H, I]
  const float* down_scale;       // [experts, H] (w8 only)
  const void* hs;                // bf16 [Is]
  const void* shared_down;       // [H, Is]
  const float* shared_scale;     // [H] (w8 only)
  void* out;                     // bf16 [H]
  int top_k;
  int experts;
  int hidden;                    // H
  int inter;                     // I
  int shared_pieces;             // Is / I
  int channels;                  // output channels per CTA: 1, 2, 4 or 8 (0: kDecodeDownChannels)
  cudaStream_t stream;
};
constexpr int kDecodeDownMaxUnits = 16;   // top_k + shared_pieces
constexpr int kDecodeDownChannels = 4;    // the default channels per CTA
const char* moe_decode_down_run(const MoeDecodeDownParams& p);

// Multiprocessor count of `device` (cached after the first query).
int sm_count_of(int device);

}  // namespace nk::moe
