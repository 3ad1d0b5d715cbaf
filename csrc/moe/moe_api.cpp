// Host entries of the MoE kernels: strict argument checks (named), device guard, current stream, no host sync.
// CUDA tensors only: the CPU path of every MoE op is its Python reference (nemotron_kernels/reference/).
#include <torch/extension.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>

#ifdef NEMOTRON_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "moe/moe_kernels.h"
#endif

#include "common/checks.h"
#include "moe/moe.h"

namespace nk {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

void check_cuda(const at::Tensor& t, const char* name) {
  NK_CHECK(t.is_cuda(), name, " must be a CUDA tensor (on CPU the MoE ops run their Python reference), got ",
              t.device().str());
#ifndef NEMOTRON_WITH_CUDA
  NK_CHECK(false, name, " is on ", t.device().str(), " but nemotron_kernels._C was built without CUDA");
#endif
}

void check_aligned16(const at::Tensor& t, const char* name) {
  NK_CHECK_VALUE(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name,
                    " must start at a 16-byte aligned address (TMA); got a view with storage offset ",
                    num(t.storage_offset()), ": pass a fresh contiguous tensor");
}

#ifdef NEMOTRON_WITH_CUDA
moe::DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return moe::DType::kFloat32;
    case at::kHalf: return moe::DType::kFloat16;
    default: return moe::DType::kBFloat16;
  }
}
#endif

// x [T, H], topk_idx [T, k] int32 -> (rows [M, H], row_of_assignment [T, k] int32, expert_offsets [E+1] int32,
// row_scale [M] fp32 = x_scale of each row's token (0 for padding) when x_scale [T] is given, else [0]),
// M = T*k + E*(pad_to-1) when pad_to > 1 (room for every expert's padding), else T*k.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_permute(const at::Tensor& x,
                                                                       const at::Tensor& topk_idx,
                                                                       int64_t num_experts, int64_t pad_to,
                                                                       const std::optional<at::Tensor>& x_scale) {
  check_cuda(x, "x");
  check_dtype(x, "x", {at::kBFloat16, at::kHalf, at::kFloat, at::kFloat8_e4m3fn});
  check_shape(x, "x", {-1, -1});
  check_contiguous(x, "x");
  const int64_t ntokens = x.size(0), hidden = x.size(1);
  check_dtype(topk_idx, "topk_idx", {at::kInt});
  check_shape(topk_idx, "topk_idx", {ntokens, -1});
  check_contiguous(topk_idx, "topk_idx");
  check_device(topk_idx, "topk_idx", x.device());
  const int64_t top_k = topk_idx.size(1);
  NK_CHECK_VALUE(top_k >= 1 && top_k <= 32, "topk_idx must have 1 to 32 columns (top_k), got ", num(top_k));
#ifdef NEMOTRON_WITH_CUDA
  NK_CHECK_VALUE(num_experts >= 1 && num_experts <= moe::kMaxPermuteExperts, "num_experts must be in [1, ",
                    num(moe::kMaxPermuteExperts), "], got ", num(num_experts));
#endif
  NK_CHECK_VALUE(pad_to >= 1 && pad_to <= 4096, "pad_to must be in [1, 4096], got ", num(pad_to));
  const int64_t n_assign = ntokens * top_k;
  const int64_t m_rows = n_assign + (pad_to > 1 ? num_experts * (pad_to - 1) : 0);
  NK_CHECK_VALUE(m_rows <= kInt32Max, "x: T*k (+ padding) = ", num(m_rows), " rows exceed 2^31-1");

  if (x_scale) {
    check_dtype(*x_scale, "x_scale", {at::kFloat});
    check_shape(*x_scale, "x_scale", {ntokens});
    check_contiguous(*x_scale, "x_scale");
    check_device(*x_scale, "x_scale", x.device());
  }

  auto rows = at::empty({m_rows, hidden}, x.options());
  auto row_of_assignment = at::empty({ntokens, top_k}, topk_idx.options());
  auto expert_offsets = at::empty({num_experts + 1}, topk_idx.options());
  auto row_scale = at::empty({x_scale ? m_rows : 0}, x.options().dtype(at::kFloat));
#ifdef NEMOTRON_WITH_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  auto scratch = at::empty({moe::permute_scratch_ints(n_assign, int(num_experts), m_rows)}, topk_idx.options());
  moe::permute_launch(x.data_ptr(), int(x.element_size()), topk_idx.data_ptr<int32_t>(), ntokens, int(top_k),
                      int(num_experts), int(pad_to), hidden, m_rows, rows.data_ptr(),
                      row_of_assignment.data_ptr<int32_t>(), expert_offsets.data_ptr<int32_t>(),
                      x_scale ? x_scale->data_ptr<float>() : nullptr, x_scale ? row_scale.data_ptr<float>() : nullptr,
                      scratch.data_ptr<int32_t>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
  return {rows, row_of_assignment, expert_offsets, row_scale};
}

// The rows of a permutation made elsewhere (moe_router_permute): x [T, H], row_of_assignment [T, k] int32,
// token_of_row [M] int32 (-1: padding) -> rows [M, H], moe_permute's row copy alone.
at::Tensor moe_permute_rows(const at::Tensor& x, const at::Tensor& row_of_assignment,
                            const at::Tensor& token_of_row) {
  check_cuda(x, "x");
  check_dtype(x, "x", {at::kBFloat16, at::kHalf, at::kFloat, at::kFloat8_e4m3fn});
  check_shape(x, "x", {-1, -1});
  check_contiguous(x, "x");
  const int64_t ntokens = x.size(0), hidden = x.size(1);
  for (const auto& [t, name] : {std::pair{&row_of_assignment, "row_of_assignment"}, {&token_of_row, "token_of_row"}}) {
    check_dtype(*t, name, {at::kInt});
    check_contiguous(*t, name);
    check_device(*t, name, x.device());
  }
  check_shape(row_of_assignment, "row_of_assignment", {ntokens, -1});
  check_shape(token_of_row, "token_of_row", {-1});
  const int64_t top_k = row_of_assignment.size(1), m_rows = token_of_row.size(0);
  NK_CHECK_VALUE(top_k >= 1 && top_k <= 32, "row_of_assignment must have 1 to 32 columns (top_k), got ", num(top_k));
  NK_CHECK_VALUE(m_rows >= ntokens * top_k && m_rows <= kInt32Max, "token_of_row must have T*k = ",
                 num(ntokens * top_k), " to 2^31-1 rows, got ", num(m_rows));
  auto rows = at::empty({m_rows, hidden}, x.options());
#ifdef NEMOTRON_WITH_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  moe::permute_rows_launch(x.data_ptr(), int(x.element_size()), row_of_assignment.data_ptr<int32_t>(),
                           token_of_row.data_ptr<int32_t>(), ntokens, int(top_k), hidden, m_rows, rows.data_ptr(),
                           stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
  return rows;
}

// Row-wise FP8 e4m3: x [R, C] (bf16/fp16/fp32) -> (q [R, C] e4m3, scale [R] fp32), x[r] ~= q[r] * scale[r].
std::tuple<at::Tensor, at::Tensor> quantize_fp8_rowwise(const at::Tensor& x) {
  check_cuda(x, "x");
  check_dtype(x, "x", {at::kBFloat16, at::kHalf, at::kFloat});
  check_shape(x, "x", {-1, -1});
  check_contiguous(x, "x");
  auto q = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
  auto scale = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  NK_CHECK_VALUE(x.size(0) <= kInt32Max, "x: more than 2^31-1 rows");
#ifdef NEMOTRON_WITH_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  moe::quantize_rows_fp8_launch(x.data_ptr(), dtype_of(x), x.size(0), x.size(1), q.data_ptr(),
                                scale.data_ptr<float>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
  return {q, scale};
}

// `rows` here is the tensor that fixes device (and, for moe_unpermute, the rows [M, H] themselves).
void check_topk_weight(const at::Tensor& rows, const at::Tensor& topk_weight, int64_t ntokens, int64_t top_k) {
  check_dtype(topk_weight, "topk_weight", {at::kFloat});
  check_shape(topk_weight, "topk_weight", {ntokens, top_k});
  check_contiguous(topk_weight, "topk_weight");
  check_device(topk_weight, "topk_weight", rows.device());
  NK_CHECK_VALUE(topk_weight.size(1) >= 1 && topk_weight.size(1) <= 32,
                    "topk_weight must have 1 to 32 columns (top_k), got ", num(topk_weight.size(1)));
}

void check_assignment_args(const at::Tensor& rows, const at::Tensor& row_of_assignment,
                           const std::optional<at::Tensor>& topk_weight) {
  check_dtype(row_of_assignment, "row_of_assignment", {at::kInt});
  check_shape(row_of_assignment, "row_of_assignment", {-1, -1});
  check_contiguous(row_of_assignment, "row_of_assignment");
  check_device(row_of_assignment, "row_of_assignment", rows.device());
  NK_CHECK_VALUE(row_of_assignment.size(1) >= 1 && row_of_assignment.size(1) <= 32,
                    "row_of_assignment must have 1 to 32 columns (top_k), got ", num(row_of_assignment.size(1)));
  if (topk_weight) check_topk_weight(rows, *topk_weight, row_of_assignment.size(0), row_of_assignment.size(1));
}

// out [T, H] = (add +) sum_j topk_weight[t, j] * rows[row_of_assignment[t, j]]  (weight 1 when None).
// row_of_assignment None: the rows are in assignment order (row t*k + j, as moe_decode_gemv writes them), with
// T and k from topk_weight [T, k], then required, and rows [T*k, H].
at::Tensor moe_unpermute(const at::Tensor& rows, const std::optional<at::Tensor>& row_of_assignment,
                         const std::optional<at::Tensor>& topk_weight, const std::optional<at::Tensor>& add) {
  check_cuda(rows, "rows");
  check_dtype(rows, "rows", {at::kBFloat16, at::kHalf, at::kFloat});
  check_shape(rows, "rows", {-1, -1});
  check_contiguous(rows, "rows");
  NK_CHECK_VALUE(rows.size(0) <= kInt32Max, "rows: more than 2^31-1 rows");
  int64_t ntokens, top_k;
  if (row_of_assignment) {
    check_assignment_args(rows, *row_of_assignment, topk_weight);
    ntokens = row_of_assignment->size(0), top_k = row_of_assignment->size(1);
  } else {
    NK_CHECK(topk_weight.has_value(), "topk_weight is required without row_of_assignment (it gives T and k)");
    check_topk_weight(rows, *topk_weight, -1, -1);
    ntokens = topk_weight->size(0), top_k = topk_weight->size(1);
    check_shape(rows, "rows", {ntokens * top_k, -1});
  }
  const int64_t hidden = rows.size(1);
  if (add) {
    check_dtype(*add, "add", {rows.scalar_type()});
    check_shape(*add, "add", {ntokens, hidden});
    check_contiguous(*add, "add");
    check_device(*add, "add", rows.device());
  }
  auto out = at::empty({ntokens, hidden}, rows.options());
#ifdef NEMOTRON_WITH_CUDA
  const c10::cuda::CUDAGuard guard(rows.device());
  const auto stream = c10::cuda::getCurrentCUDAStream(rows.device().index()).stream();
  moe::unpermute_launch(rows.data_ptr(), dtype_of(rows),
                        row_of_assignment ? row_of_assignment->data_ptr<int32_t>() : nullptr,
                        topk_weight ? topk_weight->data_ptr<float>() : nullptr, add ? add->data_ptr() : nullptr,
                        ntokens, int(top_k), hidden, rows.size(0), out.data_ptr(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
  return out;
}

// Backward of moe_unpermute: (d_rows [m_rows, H], d_weight [T, k] fp32, or [0] when rows is None). Rows that no
// assignment points to get zeros when m_rows != T*k (padding); when m_rows == T*k every row of a valid
// permutation is written.
std::tuple<at::Tensor, at::Tensor> moe_unpermute_bwd(const at::Tensor& dout, const std::optional<at::Tensor>& rows,
                                                     const at::Tensor& row_of_assignment,
                                                     const std::optional<at::Tensor>& topk_weight, int64_t m_rows) {
  check_cuda(dout, "dout");
  check_assignment_args(dout, row_of_assignment, topk_weight);
  check_dtype(dout, "dout", {at::kBFloat16, at::kHalf, at::kFloat});
  check_shape(dout, "dout", {row_of_assignment.size(0), -1});
  check_contiguous(dout, "dout");
  const int64_t hidden = dout.size(1);
  NK_CHECK_VALUE(m_rows >= 0 && m_rows <= kInt32Max, "m_rows must be in [0, 2^31-1], got ", num(m_rows));
  if (rows) {
    check_dtype(*rows, "rows", {dout.scalar_type()});
    check_shape(*rows, "rows", {m_rows, hidden});
    check_contiguous(*rows, "rows");
    check_device(*rows, "rows", dout.device());
  }
  const int64_t ntokens = row_of_assignment.size(0), top_k = row_of_assignment.size(1);
  auto d_rows = m_rows == ntokens * top_k ? at::empty({m_rows, hidden}, dout.options())
                                          : at::zeros({m_rows, hidden}, dout.options());
  auto d_weight = at::empty({rows ? ntokens : 0, rows ? top_k : 0}, dout.options().dtype(at::kFloat));
#ifdef NEMOTRON_WITH_CUDA
  const c10::cuda::CUDAGuard guard(dout.device());
  const auto stream = c10::cuda::getCurrentCUDAStream(dout.device().index()).stream();
  moe::unpermute_bwd_launch(dout.data_ptr(), rows ? rows->data_ptr() : nullptr, dtype_of(dout),
                            row_of_assignment.data_ptr<int32_t>(),
                            topk_weight ? topk_weight->data_ptr<float>() : nullptr, ntokens, int(top_k), hidden,
                            m_rows, d_rows.data_ptr(), rows ? d_weight.data_ptr<float>() : nullptr, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
  return {d_rows, d_weight};
}

// ---- grouped GEMMs ----

void check_gemm_operand(const at::Tensor& t, const char* name, std::vector<int64_t> shape, const at::Device& dev,
                        at::ScalarType dtype = at::kBFloat16) {
  check_cuda(t, name);
  check_device(t, name, dev);
  check_dtype(t, name, {dtype});
  check_shape(t, name, std::move(shape));
  check_contiguous(t, name);
  check_aligned16(t, name);
}

void check_tma_dim(int64_t size, const char* what, int64_t multiple = 8, const char* elements = "8 bf16 elements") {
  NK_CHECK_VALUE(size % multiple == 0, what, " = ", num(size), " must be a multiple of ", num(multiple),
                    ": TMA needs 16-byte aligned row strides (", elements, ")");
  NK_CHECK_VALUE(size <= kInt32Max, what, " = ", num(size), " exceeds 2^31-1");
}

// -> E; per-expert weights b [E, ...], when given, must have as many experts as expert_offsets describes.
int64_t check_offsets(const at::Tensor& offsets, const at::Device& dev, const at::Tensor* b = nullptr) {
  check_device(offsets, "expert_offsets", dev);
  check_dtype(offsets, "expert_offsets", {at::kInt});
  check_shape(offsets, "expert_offsets", {-1});
  check_contiguous(offsets, "expert_offsets");
  const int64_t groups = offsets.size(0) - 1;
  NK_CHECK_VALUE(groups >= 1 && groups <= 65535, "expert_offsets must hold E+1 offsets with 1 <= E <= 65535, got ",
                    num(offsets.size(0)), " offsets");
  NK_CHECK_VALUE(!b || b->size(0) == groups, "b must have E = ", num(groups),
                    " experts (expert_offsets has E+1 entries), got ", num(b ? b->size(0) : 0));
  return groups;
}

// e4m3 weights b [E, N, K] with per-channel fp32 scales b_scale [E, N] (the FP8 and weights-only FP8 kinds; the
// GEMV reads 16-byte rows as TMA does) -> (E, N).
std::pair<int64_t, int64_t> check_fp8_weights(const at::Tensor& b, const at::Tensor& b_scale,
                                              const at::Tensor& offsets, int64_t k, const at::Device& dev) {
  check_gemm_operand(b, "b", {-1, -1, k}, dev, at::kFloat8_e4m3fn);
  const int64_t groups = check_offsets(offsets, dev, &b);
  const int64_t n = b.size(1);
  check_tma_dim(k, "K (a.shape[1], b.shape[2])", 16, "16 fp8 elements");
  check_tma_dim(n, "N (b.shape[1])");
  check_device(b_scale, "b_scale", dev);
  check_dtype(b_scale, "b_scale", {at::kFloat});
  check_shape(b_scale, "b_scale", {groups, n});
  check_contiguous(b_scale, "b_scale");
  check_aligned16(b_scale, "b_scale");
  return {groups, n};
}

// path: -1 = by rows per group (path_for); 0..2 forces a moe::GemmPath (tests and benchmarks compare them).
// gemv_split: 0 = by grid size (gemv_split_for); 1, 2, 4 or 8 forces the GEMV's K split (path 2 only).
void check_path(int64_t path, int64_t gemv_split) {
  NK_CHECK_VALUE(path >= -1 && path <= 2, "path must be -1 (auto) or 0..2 (large tiles, swapped operands, GEMV), "
                    "got ", num(path));
  NK_CHECK_VALUE(gemv_split == 0 || gemv_split == 1 || gemv_split == 2 || gemv_split == 4 || gemv_split == 8,
                    "gemv_split must be 0 (auto), 1, 2, 4 or 8, got ", num(gemv_split));
  NK_CHECK_VALUE(gemv_split == 0 || path == 2, "gemv_split applies to the GEMV path only: pass path=2, got path=",
                    num(path));
}

#ifdef NEMOTRON_WITH_CUDA
void run_grouped_gemm(moe::GemmKind kind, const at::Tensor& a, const at::Tensor& b, const at::Tensor& d,
                      const at::Tensor& offsets, int64_t groups, int64_t n, int64_t k,
                      const at::Tensor* a_scale = nullptr, const at::Tensor* b_scale = nullptr,
                      int64_t path_arg = -1, int64_t gemv_split = 0) {
  const c10::cuda::CUDAGuard guard(a.device());
  const int device = a.device().index();
  const int sm_count = moe::sm_count_of(device);
  NK_CHECK(sm_count > 0, "grouped_gemm: could not read the multiprocessor count of cuda:", num(device));
  const auto stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const moe::GemmPath path = path_arg < 0 ? moe::path_for(kind, a.size(0), int(groups)) : moe::GemmPath(path_arg);
  const size_t ws_bytes = moe::grouped_gemm_workspace_bytes(kind, path, int(groups), sm_count);
  auto workspace = at::empty({int64_t(ws_bytes)}, a.options().dtype(at::kByte));
  moe::GroupedGemmParams p{kind,
                           a.data_ptr(),
                           b.data_ptr(),
                           d.data_ptr(),
                           a_scale ? a_scale->data_ptr<float>() : nullptr,
                           b_scale ? b_scale->data_ptr<float>() : nullptr,
                           offsets.data_ptr<int32_t>(),
                           int(groups),
                           a.size(0),
                           int(n),
                           int(k),
                           path,
                           workspace.data_ptr(),
                           sm_count,
                           device,
                           stream,
                           int(gemv_split)};
  const char* err = moe::grouped_gemm_run(p);
  NK_CHECK(err[0] == '\0', "grouped_gemm (CUTLASS sm90): ", err);
}
#endif

// row_scale [M] fp32 (the NT kinds without relu^2): each output row times its scale, in the epilogue.
void check_row_scale(const std::optional<at::Tensor>& row_scale, const at::Tensor& a, bool relu2) {
  if (!row_scale) return;
  NK_CHECK_VALUE(!relu2, "row_scale applies without relu2 only (the down projection): relu(acc)^2 * s is not the "
                 "scaled GEMM's relu^2");
  check_device(*row_scale, "row_scale", a.device());
  check_dtype(*row_scale, "row_scale", {at::kFloat});
  check_shape(*row_scale, "row_scale", {a.size(0)});
  check_contiguous(*row_scale, "row_scale");
}

// NT: out[rows_e] = act(a[rows_e] @ b[e]^T) (* row_scale[row]); a [M, K], b [E, N, K] -> [M, N]; act = relu^2
// when relu2.
at::Tensor grouped_gemm_nt(const at::Tensor& a, const at::Tensor& b, const at::Tensor& expert_offsets, bool relu2,
                           int64_t path, int64_t gemv_split, const std::optional<at::Tensor>& row_scale) {
  check_path(path, gemv_split);
  check_cuda(a, "a");
  check_gemm_operand(a, "a", {-1, -1}, a.device());
  NK_CHECK_VALUE(a.size(0) <= kInt32Max, "a: more than 2^31-1 rows");
  const int64_t k = a.size(1);
  check_gemm_operand(b, "b", {-1, -1, k}, a.device());
  const int64_t groups = check_offsets(expert_offsets, a.device(), &b);
  const int64_t n = b.size(1);
  check_tma_dim(k, "K (a.shape[1], b.shape[2])");
  check_tma_dim(n, "N (b.shape[1])");
  check_row_scale(row_scale, a, relu2);
  if (a.size(0) == 0 || n == 0) return at::empty({a.size(0), n}, a.options());
  if (k == 0) return at::zeros({a.size(0), n}, a.options());
  auto out = at::empty({a.size(0), n}, a.options());
#ifdef NEMOTRON_WITH_CUDA
  const auto kind = row_scale ? moe::GemmKind::kNTScaled : relu2 ? moe::GemmKind::kNTReLU2 : moe::GemmKind::kNT;
  run_grouped_gemm(kind, a, b, out, expert_offsets, groups, n, k, row_scale ? &*row_scale : nullptr, nullptr, path,
                   gemv_split);
#endif
  return out;
}

// NN: out[rows_e] = a[rows_e] @ b[e]; a [M, K], b [E, K, N] -> [M, N]. The relu^2 derivative is a separate pass
// (relu2_grad, Triton): fused into this epilogue, the pair was 18% slower (bench/NOTES.md, session 19).
at::Tensor grouped_gemm_nn(const at::Tensor& a, const at::Tensor& b, const at::Tensor& expert_offsets) {
  check_cuda(a, "a");
  check_gemm_operand(a, "a", {-1, -1}, a.device());
  NK_CHECK_VALUE(a.size(0) <= kInt32Max, "a: more than 2^31-1 rows");
  const int64_t k = a.size(1);
  check_gemm_operand(b, "b", {-1, k, -1}, a.device());
  const int64_t groups = check_offsets(expert_offsets, a.device(), &b);
  const int64_t n = b.size(2);
  check_tma_dim(k, "K (a.shape[1], b.shape[1])");
  check_tma_dim(n, "N (b.shape[2])");
  if (a.size(0) == 0 || n == 0) return at::empty({a.size(0), n}, a.options());
  if (k == 0) return at::zeros({a.size(0), n}, a.options());
  auto out = at::empty({a.size(0), n}, a.options());
#ifdef NEMOTRON_WITH_CUDA
  run_grouped_gemm(moe::GemmKind::kNN, a, b, out, expert_offsets, groups, n, k);
#endif
  return out;
}

// TN (weight gradient): out[e] = a[rows_e]^T @ b[rows_e]; a [M, P], b [M, Q] -> [E, P, Q] (zeros for empty groups).
at::Tensor grouped_gemm_tn(const at::Tensor& a, const at::Tensor& b, const at::Tensor& expert_offsets) {
  check_cuda(a, "a");
  check_gemm_operand(a, "a", {-1, -1}, a.device());
  NK_CHECK_VALUE(a.size(0) <= kInt32Max, "a: more than 2^31-1 rows");
  check_gemm_operand(b, "b", {a.size(0), -1}, a.device());
  const int64_t groups = check_offsets(expert_offsets, a.device());
  const int64_t p = a.size(1), q = b.size(1);
  check_tma_dim(p, "P (a.shape[1])");
  check_tma_dim(q, "Q (b.shape[1])");
  if (p == 0 || q == 0) return at::empty({groups, p, q}, a.options());
  if (a.size(0) == 0) return at::zeros({groups, p, q}, a.options());
  auto out = at::empty({groups, p, q}, a.options());
#ifdef NEMOTRON_WITH_CUDA
  run_grouped_gemm(moe::GemmKind::kTN, a, b, out, expert_offsets, groups, p, q);
#endif
  return out;
}

// FP8 NT: out[rows_e] = act(a[rows_e] @ b[e]^T * a_scale[row] * b_scale[e, col]) in bf16; a [M, K] e4m3,
// a_scale [M] fp32, b [E, N, K] e4m3, b_scale [E, N] fp32.
at::Tensor grouped_gemm_fp8_nt(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                               const at::Tensor& b_scale, const at::Tensor& expert_offsets, bool relu2,
                               int64_t path, int64_t gemv_split) {
  check_path(path, gemv_split);
  check_cuda(a, "a");
  check_gemm_operand(a, "a", {-1, -1}, a.device(), at::kFloat8_e4m3fn);
  NK_CHECK_VALUE(a.size(0) <= kInt32Max, "a: more than 2^31-1 rows");
  const int64_t m = a.size(0), k = a.size(1);
  const auto [groups, n] = check_fp8_weights(b, b_scale, expert_offsets, k, a.device());
  check_device(a_scale, "a_scale", a.device());
  check_dtype(a_scale, "a_scale", {at::kFloat});
  check_shape(a_scale, "a_scale", {m});
  check_contiguous(a_scale, "a_scale");
  auto out_opts = a.options().dtype(at::kBFloat16);
  if (m == 0 || n == 0) return at::empty({m, n}, out_opts);
  if (k == 0) return at::zeros({m, n}, out_opts);
  auto out = at::empty({m, n}, out_opts);
#ifdef NEMOTRON_WITH_CUDA
  run_grouped_gemm(relu2 ? moe::GemmKind::kFp8NTReLU2 : moe::GemmKind::kFp8NT, a, b, out, expert_offsets,
                   groups, n, k, &a_scale, &b_scale, path, gemv_split);
#endif
  return out;
}

// Weights-only FP8 NT (decode): out[rows_e] = act(a[rows_e] @ b[e]^T * b_scale[e, col]) (* row_scale[row]) in
// bf16; a [M, K] bf16, b [E, N, K] e4m3, b_scale [E, N] fp32. The grouped GEMV only (any M, but its cost grows
// with rows per expert).
at::Tensor grouped_gemm_w8_nt(const at::Tensor& a, const at::Tensor& b, const at::Tensor& b_scale,
                              const at::Tensor& expert_offsets, bool relu2, int64_t gemv_split,
                              const std::optional<at::Tensor>& row_scale) {
  check_path(2, gemv_split);
  check_cuda(a, "a");
  check_gemm_operand(a, "a", {-1, -1}, a.device());
  NK_CHECK_VALUE(a.size(0) <= kInt32Max, "a: more than 2^31-1 rows");
  const int64_t m = a.size(0), k = a.size(1);
  const auto [groups, n] = check_fp8_weights(b, b_scale, expert_offsets, k, a.device());
  check_row_scale(row_scale, a, relu2);
  if (m == 0 || n == 0) return at::empty({m, n}, a.options());
  if (k == 0) return at::zeros({m, n}, a.options());
  auto out = at::empty({m, n}, a.options());
#ifdef NEMOTRON_WITH_CUDA
  const auto kind = row_scale ? moe::GemmKind::kW8NTScaled : relu2 ? moe::GemmKind::kW8NTReLU2 : moe::GemmKind::kW8NT;
  run_grouped_gemm(kind, a, b, out, expert_offsets, groups, n, k, row_scale ? &*row_scale : nullptr, &b_scale, 2,
                   gemv_split);
#endif
  return out;
}

// The K of a decode kernel's weights: positive, whole 16-byte rows of bf16 or e4m3.
void check_decode_k(int64_t k, const char* k_what, bool e4m3) {
  check_tma_dim(k, k_what, e4m3 ? 16 : 8, e4m3 ? "16 fp8 elements" : "8 bf16 elements");
  NK_CHECK_VALUE(k > 0, k_what, " must be positive");
}

// Per-expert weights b [E, N, K] of the decode kernels, bf16 or e4m3 (16-byte rows), K > 0 -> (e4m3, E, N).
std::tuple<bool, int64_t, int64_t> check_decode_weights(const at::Tensor& b, const char* name, int64_t k,
                                                        const char* k_what, const char* n_what,
                                                        const at::Device& dev) {
  const bool e4m3 = b.scalar_type() == at::kFloat8_e4m3fn;
  check_gemm_operand(b, name, {-1, -1, k}, dev, e4m3 ? at::kFloat8_e4m3fn : at::kBFloat16);
  check_tma_dim(b.size(1), n_what);
  check_decode_k(k, k_what, e4m3);
  NK_CHECK_VALUE(b.size(0) <= kInt32Max, name, ": more than 2^31-1 experts");
  return {e4m3, b.size(0), b.size(1)};
}

// Per-channel fp32 scales: required with e4m3 weights, refused with bf16 ones.
void check_weight_scale(const std::optional<at::Tensor>& scale, const char* name, bool e4m3,
                        std::vector<int64_t> shape, const at::Device& dev) {
  NK_CHECK(scale.has_value() == e4m3, name, e4m3 ? " is required with e4m3 weights" : " applies to e4m3 weights only");
  if (scale) check_gemm_operand(*scale, name, std::move(shape), dev, at::kFloat);
}

// MoE decode GEMV: the routed projection of T tokens' k assignments straight from topk_idx (no permute), and
// optionally the shared expert in the same launch. d[j] = act(a[j / a_div] @ b[topk_idx[j]]^T (* b_scale)) with
// a [T, K] (a_div = k: the tokens) or [T*k, K] (a_div = 1: one row per assignment), b [E, N, K] bf16, or e4m3 with
// b_scale [E, N]; shared_d = act(shared_a [T, Ks] @ shared_b [Ns, Ks]^T (* shared_b_scale [Ns])), Ns a multiple
// of N. An expert id outside [0, E) gives a zero row. -> (d [T*k, N], shared_d [T, Ns]; [T, 0] without), bf16.
std::tuple<at::Tensor, at::Tensor> moe_decode_gemv(
    const at::Tensor& a, const at::Tensor& topk_idx, const at::Tensor& b, const std::optional<at::Tensor>& b_scale,
    const std::optional<at::Tensor>& shared_a, const std::optional<at::Tensor>& shared_b,
    const std::optional<at::Tensor>& shared_b_scale, bool relu2, int64_t gemv_split) {
  check_path(2, gemv_split);
  check_cuda(a, "a");
  const auto dev = a.device();
  check_gemm_operand(a, "a", {-1, -1}, dev);
  check_device(topk_idx, "topk_idx", dev);
  check_dtype(topk_idx, "topk_idx", {at::kInt});
  check_shape(topk_idx, "topk_idx", {-1, -1});
  check_contiguous(topk_idx, "topk_idx");
  const int64_t ntokens = topk_idx.size(0), top_k = topk_idx.size(1), assignments = ntokens * top_k;
  NK_CHECK_VALUE(a.size(0) == ntokens || a.size(0) == assignments, "a must have T = ", num(ntokens),
                    " rows (the tokens) or T*k = ", num(assignments), " (one per assignment), got ", num(a.size(0)));
  const int64_t k = a.size(1);
  const auto [fp8, experts, n] = check_decode_weights(b, "b", k, "K (a.shape[1], b.shape[2])", "N (b.shape[1])", dev);
  const auto wdtype = fp8 ? at::kFloat8_e4m3fn : at::kBFloat16;
  check_weight_scale(b_scale, "b_scale", fp8, {experts, n}, dev);
  const bool has_shared = shared_a.has_value();
  NK_CHECK(has_shared == shared_b.has_value(), "shared_a and shared_b: pass both (the shared expert) or neither");
  int64_t shared_n = 0, shared_k = 0;
  if (has_shared) {
    check_gemm_operand(*shared_a, "shared_a", {ntokens, -1}, dev);
    shared_k = shared_a->size(1);
    check_gemm_operand(*shared_b, "shared_b", {-1, shared_k}, dev, wdtype);
    shared_n = shared_b->size(0);
    check_decode_k(shared_k, "Ks (shared_a.shape[1], shared_b.shape[1])", fp8);
    NK_CHECK_VALUE(n > 0 && shared_n % n == 0, "shared_b must have a multiple of N = ", num(n),
                      " rows (it runs in blocks of N channels), got ", num(shared_n));
    check_weight_scale(shared_b_scale, "shared_b_scale", fp8, {shared_n}, dev);
  } else {
    NK_CHECK(!shared_b_scale, "shared_b_scale without the shared expert (shared_a, shared_b)");
  }
  const int64_t shared_tasks = n > 0 ? shared_n / n : 0;
  NK_CHECK_VALUE(assignments + shared_tasks <= 65535, "T*k + Ns/N = ", num(assignments + shared_tasks),
                    " exceeds the grid's 65535 rows: this GEMV is for decode (a few tokens)");
  auto d = at::empty({assignments, n}, a.options());
  auto shared_d = at::empty({ntokens, shared_n}, a.options());
#ifdef NEMOTRON_WITH_CUDA
  const c10::cuda::CUDAGuard guard(dev);
  const int sm_count = moe::sm_count_of(dev.index());
  NK_CHECK(sm_count > 0, "moe_decode_gemv: could not read the multiprocessor count of cuda:", num(dev.index()));
  using moe::GemmKind;
  const GemmKind kind = fp8 ? (relu2 ? GemmKind::kW8NTReLU2 : GemmKind::kW8NT)
                            : (relu2 ? GemmKind::kNTReLU2 : GemmKind::kNT);
  moe::MoeDecodeGemvParams p{kind,
                             a.data_ptr(),
                             b.data_ptr(),
                             b_scale ? b_scale->data_ptr<float>() : nullptr,
                             d.data_ptr(),
                             topk_idx.data_ptr<int32_t>(),
                             int(assignments),
                             a.size(0) == assignments ? 1 : int(top_k),
                             int(experts),
                             int(n),
                             int(k),
                             has_shared ? shared_a->data_ptr() : nullptr,
                             has_shared ? shared_b->data_ptr() : nullptr,
                             shared_b_scale ? shared_b_scale->data_ptr<float>() : nullptr,
                             has_shared ? shared_d.data_ptr() : nullptr,
                             int(ntokens),
                             int(shared_tasks),
                             int(shared_k),
                             sm_count,
                             c10::cuda::getCurrentCUDAStream(dev.index()).stream(),
                             int(gemv_split)};
  const char* err = moe::moe_decode_gemv_run(p);
  NK_CHECK(err[0] == '\0', "moe_decode_gemv: ", err);
#endif
  return {d, shared_d};
}

// Work units of moe_decode_down's CTA (its shared arrays): top_k + Is / I.
constexpr int64_t kDecodeDownMaxUnits = 16;
#ifdef NEMOTRON_WITH_CUDA
static_assert(kDecodeDownMaxUnits == moe::kDecodeDownMaxUnits);
#endif

// MoE decode, one token: the down projection and the weighted sum in one launch. h [k, I] bf16 (the routed rows in
// slot order, as moe_decode_gemv's up writes them), topk_idx [1, k] int32, topk_weight [1, k] fp32, down [E, H, I]
// bf16 or e4m3 with down_scale [E, H]; hs [1, Is] bf16, shared_down [H, Is] (down's dtype, shared_down_scale [H]
// for e4m3), Is a multiple of I -> out [1, H] bf16: moe_unpermute(moe_decode_gemv(h, ...down...), None, w, ys).
// channels: output channels per CTA (0: the kernel's default; the others for scripts/sweep_gemv_split.py).
at::Tensor moe_decode_down(const at::Tensor& h, const at::Tensor& topk_idx, const at::Tensor& topk_weight,
                           const at::Tensor& down, const std::optional<at::Tensor>& down_scale, const at::Tensor& hs,
                           const at::Tensor& shared_down, const std::optional<at::Tensor>& shared_down_scale,
                           int64_t channels) {
  check_cuda(h, "h");
  NK_CHECK_VALUE(channels == 0 || channels == 1 || channels == 2 || channels == 4 || channels == 8,
                    "channels (per CTA) must be 0 (the default), 1, 2, 4 or 8, got ", num(channels));
  const auto dev = h.device();
  check_device(topk_idx, "topk_idx", dev);
  check_dtype(topk_idx, "topk_idx", {at::kInt});
  check_shape(topk_idx, "topk_idx", {1, -1});
  check_contiguous(topk_idx, "topk_idx");
  const int64_t top_k = topk_idx.size(1);
  check_topk_weight(h, topk_weight, 1, top_k);
  check_gemm_operand(h, "h", {top_k, -1}, dev);
  const int64_t inter = h.size(1);
  const auto [w8, experts, hidden] = check_decode_weights(down, "down", inter, "I (h.shape[1], down.shape[2])",
                                                          "H (down.shape[1])", dev);
  const auto wdtype = w8 ? at::kFloat8_e4m3fn : at::kBFloat16;
  check_gemm_operand(hs, "hs", {1, -1}, dev);
  const int64_t shared_inter = hs.size(1);
  NK_CHECK_VALUE(shared_inter % inter == 0, "hs must have a multiple of I = ", num(inter),
                    " columns (the shared expert runs in pieces of I), got ", num(shared_inter));
  check_gemm_operand(shared_down, "shared_down", {hidden, shared_inter}, dev, wdtype);
  check_weight_scale(down_scale, "down_scale", w8, {experts, hidden}, dev);
  check_weight_scale(shared_down_scale, "shared_down_scale", w8, {hidden}, dev);
  const int64_t pieces = shared_inter / inter;
  NK_CHECK_VALUE(top_k + pieces <= kDecodeDownMaxUnits, "top_k + Is / I = ", num(top_k + pieces),
                    " exceeds the kernel's ", num(kDecodeDownMaxUnits), " work units");
  auto out = at::empty({1, hidden}, h.options());
#ifdef NEMOTRON_WITH_CUDA
  const c10::cuda::CUDAGuard guard(dev);
  moe::MoeDecodeDownParams p{w8,
                             h.data_ptr(),
                             topk_idx.data_ptr<int32_t>(),
                             topk_weight.data_ptr<float>(),
                             down.data_ptr(),
                             down_scale ? down_scale->data_ptr<float>() : nullptr,
                             hs.data_ptr(),
                             shared_down.data_ptr(),
                             shared_down_scale ? shared_down_scale->data_ptr<float>() : nullptr,
                             out.data_ptr(),
                             int(top_k),
                             int(experts),
                             int(hidden),
                             int(inter),
                             int(pieces),
                             int(channels),
                             c10::cuda::getCurrentCUDAStream(dev.index()).stream()};
  const char* err = moe::moe_decode_down_run(p);
  NK_CHECK(err[0] == '\0', "moe_decode_down: ", err);
#endif
  return out;
}

}  // namespace

void register_moe(pybind11::module_& m) {
  namespace py = pybind11;
#ifdef NEMOTRON_WITH_CUDA
  m.def("gemv_split_for", &moe::gemv_split_for,
        "the grouped GEMV's automatic K split for N, K, bytes per weight element, groups with rows and resident "
        "CTAs (exposed for the tests of the rule)",
        py::arg("n"), py::arg("k"), py::arg("elem_bytes"), py::arg("touched_groups"), py::arg("resident"));
#endif
  m.def("moe_permute_rows", &moe_permute_rows,
        "x [T,H], row_of_assignment [T,k] int32, token_of_row [M] int32 (-1: padding) -> rows [M,H]: moe_permute's "
        "row copy for a permutation made elsewhere (moe_router_permute) (CUDA)",
        py::arg("x"), py::arg("row_of_assignment"), py::arg("token_of_row"));
  m.def("moe_permute", &moe_permute, "x [T,H], topk_idx [T,k] int32 -> (rows [M,H], row_of_assignment [T,k], "
        "expert_offsets [E+1], row_scale [M] or [0]) (CUDA)", py::arg("x"), py::arg("topk_idx"),
        py::arg("num_experts"), py::arg("pad_to"), py::arg("x_scale"));
  m.def("quantize_fp8_rowwise", &quantize_fp8_rowwise, "x [R,C] -> (q [R,C] e4m3, scale [R] fp32) (CUDA)",
        py::arg("x"));
  m.def("grouped_gemm_fp8_nt", &grouped_gemm_fp8_nt,
        "e4m3 a [M,K] @ b[e]^T per expert, dequantised by a_scale [M] and b_scale [E,N], relu^2 optionally -> bf16",
        py::arg("a"), py::arg("a_scale"), py::arg("b"), py::arg("b_scale"), py::arg("expert_offsets"),
        py::arg("relu2"), py::arg("path") = -1, py::arg("gemv_split") = 0);
  m.def("grouped_gemm_w8_nt", &grouped_gemm_w8_nt,
        "bf16 a [M,K] @ e4m3 b[e]^T per expert, scaled by b_scale [E,N], relu^2 optionally, or each row times "
        "row_scale [M] fp32 -> bf16 (grouped GEMV)",
        py::arg("a"), py::arg("b"), py::arg("b_scale"), py::arg("expert_offsets"), py::arg("relu2"),
        py::arg("gemv_split") = 0, py::arg("row_scale") = py::none());
  m.def("moe_decode_gemv", &moe_decode_gemv,
        "routed (from topk_idx, no permute) + shared expert projection of a few tokens in one GEMV launch -> "
        "(d [T*k,N], shared_d [T,Ns] or [T,0]) (CUDA)",
        py::arg("a"), py::arg("topk_idx"), py::arg("b"), py::arg("b_scale"), py::arg("shared_a"), py::arg("shared_b"),
        py::arg("shared_b_scale"), py::arg("relu2"), py::arg("gemv_split") = 0);
  m.def("moe_decode_down", &moe_decode_down,
        "one token's routed + shared down projection and weighted sum in one launch -> out [1,H] (CUDA)",
        py::arg("h"), py::arg("topk_idx"), py::arg("topk_weight"), py::arg("down"), py::arg("down_scale"),
        py::arg("hs"), py::arg("shared_down"), py::arg("shared_down_scale"), py::arg("channels") = 0);
  m.attr("moe_decode_down_max_units") = kDecodeDownMaxUnits;
  m.def("moe_unpermute", &moe_unpermute,
        "rows [M,H] -> (add +) sum_j w[t,j] rows[row_of_assignment[t,j]] [T,H]; row_of_assignment None: row t*k+j "
        "(CUDA)",
        py::arg("rows"), py::arg("row_of_assignment"), py::arg("topk_weight"), py::arg("add"));
  m.def("moe_unpermute_bwd", &moe_unpermute_bwd,
        "backward of moe_unpermute -> (d_rows [m_rows,H], d_weight [T,k] fp32 or [0,0] without rows) (CUDA)",
        py::arg("dout"), py::arg("rows"), py::arg("row_of_assignment"), py::arg("topk_weight"), py::arg("m_rows"));
  m.def("grouped_gemm_nt", &grouped_gemm_nt,
        "a [M,K] @ b[e]^T per expert (b [E,N,K]), relu^2 fused optionally, or each row times row_scale [M] fp32",
        py::arg("a"), py::arg("b"), py::arg("expert_offsets"), py::arg("relu2"), py::arg("path") = -1,
        py::arg("gemv_split") = 0, py::arg("row_scale") = py::none());
  m.def("grouped_gemm_nn", &grouped_gemm_nn, "a [M,K] @ b[e] per expert (b [E,K,N])", py::arg("a"), py::arg("b"),
        py::arg("expert_offsets"));
  m.def("grouped_gemm_tn", &grouped_gemm_tn, "per expert a[rows_e]^T @ b[rows_e] -> [E,P,Q]", py::arg("a"),
        py::arg("b"), py::arg("expert_offsets"));
}

}  // namespace nk
