// Host entry of the fused router (after the logits GEMM): checks, CPU/CUDA dispatch, current stream, no sync.
#include <torch/extension.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <tuple>

#ifdef NEMOTRON_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "common/checks.h"
#include "router/moe_router_common.h"
#include "router/router.h"

namespace nk {
namespace {

#ifdef NEMOTRON_WITH_CUDA
int sm_count(c10::DeviceIndex device) {
  static std::array<std::atomic<int>, 256> cache{};  // 0 = not asked yet
  const auto slot = static_cast<size_t>(device) % cache.size();
  int n = cache[slot].load(std::memory_order_relaxed);
  if (n == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    cache[slot].store(n, std::memory_order_relaxed);
  }
  return n;
}
#endif

// Checks the fused router's arguments for T tokens of E fp32 logits on `device`.
void check_router_args(int64_t num_tokens, int64_t num_experts, const at::Tensor& bias, const c10::Device& device,
                       int64_t top_k, int64_t n_group, int64_t topk_group) {
  check_dtype(bias, "bias", {at::kFloat});
  check_shape(bias, "bias", {num_experts});
  check_contiguous(bias, "bias");
  check_device(bias, "bias", device);
  NK_CHECK(device.is_cpu() || device.is_cuda(), "logits must be on cpu or cuda, got ", device.str());
  NK_CHECK_VALUE(num_experts >= 1 && num_experts <= std::numeric_limits<int32_t>::max(),
                    "logits must have 1 to 2^31-1 experts (columns), got ", num(num_experts));
  NK_CHECK_VALUE(top_k >= 1 && top_k <= num_experts, "top_k must be in [1, E=", num(num_experts), "], got ",
                    num(top_k));
  NK_CHECK_VALUE(n_group >= 1 && num_experts % n_group == 0, "n_group (", num(n_group),
                    ") must divide the number of experts E=", num(num_experts));
  NK_CHECK_VALUE(topk_group >= 1 && topk_group <= n_group, "topk_group must be in [1, n_group=",
                    num(n_group), "], got ", num(topk_group));
  NK_CHECK_VALUE(top_k <= topk_group * (num_experts / n_group), "top_k (", num(top_k),
                    ") must be <= topk_group * E / n_group = ", num(topk_group * (num_experts / n_group)));
  if (device.is_cuda()) {
    NK_CHECK_VALUE(num_experts <= router::kCudaMaxExperts, "logits: the CUDA kernel supports up to ",
                      num(router::kCudaMaxExperts), " experts, got E=", num(num_experts));
    NK_CHECK_VALUE(num_tokens <= std::numeric_limits<int32_t>::max(),
                      "logits: the CUDA kernel supports up to 2^31-1 tokens, got T=", num(num_tokens));
  }
}

// The fused router's outputs for `logits` [T, E] and their kernel arguments.
struct Routed {
  at::Tensor topk_idx, topk_weight, counts;  // [T, k] int32, [T, k] fp32, [E] int32
  router::RouterArgs args;
};

Routed routed(const at::Tensor& logits, const at::Tensor& bias, int64_t top_k, double routed_scaling_factor,
              int64_t n_group, int64_t topk_group) {
  const int64_t num_tokens = logits.size(0), num_experts = logits.size(1);
  auto topk_idx = at::empty({num_tokens, top_k}, logits.options().dtype(at::kInt));
  auto topk_weight = at::empty({num_tokens, top_k}, logits.options());
  auto counts = at::empty({num_experts}, logits.options().dtype(at::kInt));
  const router::RouterArgs args{logits.data_ptr<float>(),      bias.data_ptr<float>(),
                                topk_idx.data_ptr<int32_t>(),  topk_weight.data_ptr<float>(),
                                counts.data_ptr<int32_t>(),    num_tokens,
                                static_cast<int>(num_experts), static_cast<int>(top_k),
                                static_cast<int>(n_group),     static_cast<int>(topk_group),
                                static_cast<float>(routed_scaling_factor)};
  return {topk_idx, topk_weight, counts, args};
}

// logits [T, E] fp32, bias [E] fp32 -> (topk_idx [T, k] int32, topk_weight [T, k] fp32, counts [E] int32).
std::tuple<at::Tensor, at::Tensor, at::Tensor> moe_router_fused(const at::Tensor& logits, const at::Tensor& bias,
                                                                int64_t top_k, double routed_scaling_factor,
                                                                int64_t n_group, int64_t topk_group) {
  check_dtype(logits, "logits", {at::kFloat});
  check_shape(logits, "logits", {-1, -1});
  check_contiguous(logits, "logits");
  const auto device = logits.device();
  check_router_args(logits.size(0), logits.size(1), bias, device, top_k, n_group, topk_group);
  Routed r = routed(logits, bias, top_k, routed_scaling_factor, n_group, topk_group);
  if (device.is_cpu()) {
    router::moe_router_cpu(r.args);
  } else {
#ifdef NEMOTRON_WITH_CUDA
    const c10::cuda::CUDAGuard guard(device);
    const auto stream = c10::cuda::getCurrentCUDAStream(device.index());
    C10_CUDA_CHECK(router::moe_router_cuda(r.args, sm_count(device.index()), stream.stream()));
#else
    NK_CHECK(false, "logits is on ", device.str(), " but nemotron_kernels._C was built without CUDA");
#endif
  }
  return {r.topk_idx, r.topk_weight, r.counts};
}

// The fused router and the expert-sorted permutation in two launches (CUDA): logits [T, E] fp32, bias [E] fp32 ->
// (topk_idx [T, k] int32, topk_weight [T, k] fp32, counts [E] int32, row_of_assignment [T, k] int32,
//  expert_offsets [E+1] int32, token_of_row [M] int32), M = T*k + E*(pad_to-1) when pad_to > 1, else T*k;
// the last three are what moe_permute's ranking writes for topk_idx.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_router_permute(
    const at::Tensor& logits, const at::Tensor& bias, int64_t top_k, double routed_scaling_factor, int64_t n_group,
    int64_t topk_group, int64_t pad_to) {
  check_dtype(logits, "logits", {at::kFloat});
  check_shape(logits, "logits", {-1, -1});
  check_contiguous(logits, "logits");
  const auto device = logits.device();
  NK_CHECK_VALUE(device.is_cuda(), "moe_router_permute: logits must be on a CUDA device, got ", device.str());
  check_router_args(logits.size(0), logits.size(1), bias, device, top_k, n_group, topk_group);
  NK_CHECK_VALUE(pad_to >= 1 && pad_to <= 4096, "pad_to must be in [1, 4096], got ", num(pad_to));
  const int64_t num_tokens = logits.size(0), num_experts = logits.size(1), n_assign = num_tokens * top_k;
  const int64_t m_rows = n_assign + (pad_to > 1 ? num_experts * (pad_to - 1) : 0);
  NK_CHECK_VALUE(m_rows <= std::numeric_limits<int32_t>::max(), "T*k (+ padding) = ", num(m_rows),
                 " rows exceed 2^31-1");
  Routed r = routed(logits, bias, top_k, routed_scaling_factor, n_group, topk_group);
  const auto ints = logits.options().dtype(at::kInt);
  auto row_of_assignment = at::empty({num_tokens, top_k}, ints);
  auto expert_offsets = at::empty({num_experts + 1}, ints);
  auto token_of_row = at::empty({m_rows}, ints);
#ifdef NEMOTRON_WITH_CUDA
  const c10::cuda::CUDAGuard guard(device);
  const auto stream = c10::cuda::getCurrentCUDAStream(device.index());
  const int sms = sm_count(device.index());
  auto scratch = at::empty({num_experts * router::moe_router_blocks(r.args, sms) + n_assign}, ints);
  r.args.block_hist = scratch.data_ptr<int32_t>();
  r.args.local_rank = r.args.block_hist + (scratch.numel() - n_assign);
  const router::PermutationArgs perm{row_of_assignment.data_ptr<int32_t>(), expert_offsets.data_ptr<int32_t>(),
                                     token_of_row.data_ptr<int32_t>(), m_rows, static_cast<int>(pad_to)};
  C10_CUDA_CHECK(router::moe_router_permute_cuda(r.args, perm, sms, stream.stream()));
#else
  NK_CHECK(false, "logits is on ", device.str(), " but nemotron_kernels._C was built without CUDA");
#endif
  return {r.topk_idx, r.topk_weight, r.counts, row_of_assignment, expert_offsets, token_of_row};
}

// Checks the logits GEMV's x [T, K] bf16 and weight [E, K] fp32 (CUDA, T <= kLogitsMaxTokens, K % 4 == 0).
void check_logits_args(const at::Tensor& x, const at::Tensor& weight) {
  check_dtype(x, "x", {at::kBFloat16});
  check_shape(x, "x", {-1, -1});
  check_contiguous(x, "x");
  const int64_t tokens = x.size(0), k = x.size(1);
  check_dtype(weight, "weight", {at::kFloat});
  check_shape(weight, "weight", {-1, k});
  check_contiguous(weight, "weight");
  check_device(weight, "weight", x.device());
  const int64_t experts = weight.size(0);
  NK_CHECK(x.device().is_cuda(), "x must be on cuda (the CPU path is torch's matmul), got ", x.device().str());
  NK_CHECK_VALUE(tokens <= router::kLogitsMaxTokens, "x: the logits GEMV takes up to ",
                 num(router::kLogitsMaxTokens), " tokens, got T=", num(tokens));
  NK_CHECK_VALUE(k % 4 == 0, "x: K must be a multiple of 4 (16-byte weight pieces), got K=", num(k));
  NK_CHECK_VALUE(experts <= std::numeric_limits<int32_t>::max() / 4 && k <= std::numeric_limits<int32_t>::max(),
                 "weight: E and K must fit the kernel's int32 indices, got [", num(experts), ", ", num(k), "]");
  NK_CHECK_VALUE(reinterpret_cast<uintptr_t>(x.data_ptr()) % 8 == 0 &&
                     reinterpret_cast<uintptr_t>(weight.data_ptr()) % 16 == 0,
                 "x and weight must be 8- and 16-byte aligned (a fresh tensor is)");
}

#ifdef NEMOTRON_WITH_CUDA
router::LogitsArgs logits_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& logits) {
  return {x.data_ptr(), weight.data_ptr<float>(), logits.data_ptr<float>(), static_cast<int>(x.size(0)),
          static_cast<int>(weight.size(0)), static_cast<int>(x.size(1))};
}
#endif

// x [T, K] bf16, weight [E, K] fp32 -> logits [T, E] fp32 (CUDA, T <= kLogitsMaxTokens, K % 4 == 0).
at::Tensor moe_router_logits(const at::Tensor& x, const at::Tensor& weight) {
  check_logits_args(x, weight);
  auto logits = at::empty({x.size(0), weight.size(0)}, weight.options());
#ifdef NEMOTRON_WITH_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  C10_CUDA_CHECK(router::moe_router_logits_cuda(logits_args(x, weight, logits), stream.stream()));
#else
  NK_CHECK(false, "x is on ", x.device().str(), " but nemotron_kernels._C was built without CUDA");
#endif
  return logits;
}

// The two above from one call for a few tokens: the logits GEMV also zeroes the counts, so the fused kernel needs
// no memset launch at T = 17..64 (its counts are atomics over several CTAs there).
// -> (logits [T, E] fp32, topk_idx [T, k] int32, topk_weight [T, k] fp32, counts [E] int32).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_router_few(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t top_k,
    double routed_scaling_factor, int64_t n_group, int64_t topk_group) {
  check_logits_args(x, weight);
  check_router_args(x.size(0), weight.size(0), bias, x.device(), top_k, n_group, topk_group);
  auto logits = at::empty({x.size(0), weight.size(0)}, weight.options());
  Routed r = routed(logits, bias, top_k, routed_scaling_factor, n_group, topk_group);
#ifdef NEMOTRON_WITH_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  router::LogitsArgs la = logits_args(x, weight, logits);
  la.zero_counts = r.counts.data_ptr<int32_t>();
  C10_CUDA_CHECK(router::moe_router_logits_cuda(la, stream.stream()));
  r.args.counts_zeroed = true;  // (T = 0 launches no GEMV; the fused entry then memsets the counts regardless)
  C10_CUDA_CHECK(router::moe_router_cuda(r.args, sm_count(x.device().index()), stream.stream()));
#else
  NK_CHECK(false, "x is on ", x.device().str(), " but nemotron_kernels._C was built without CUDA");
#endif
  return {logits, r.topk_idx, r.topk_weight, r.counts};
}

}  // namespace

void register_router(pybind11::module_& m) {
  m.attr("moe_router_logits_max_tokens") = router::kLogitsMaxTokens;
  m.def("moe_router_logits", &moe_router_logits,
        "The router's fp32 logits for a few tokens (CUDA): x [T, K] bf16 (T <= moe_router_logits_max_tokens, "
        "K % 4 == 0), weight [E, K] fp32 -> x @ weight^T [T, E] fp32, fp32 FMAs (no TF32), deterministic",
        pybind11::arg("x"), pybind11::arg("weight"));
  m.def("moe_router_few", &moe_router_few,
        "moe_router_logits then moe_router_fused in one call for a few tokens (CUDA; the GEMV zeroes the counts, "
        "so no memset launch): x [T, K] bf16, weight [E, K] fp32, bias [E] fp32 -> (logits [T, E] fp32, "
        "topk_idx [T, k] int32, topk_weight [T, k] fp32, counts [E] int32), bitwise the two calls",
        pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("top_k"),
        pybind11::arg("routed_scaling_factor"), pybind11::arg("n_group"), pybind11::arg("topk_group"));
  m.attr("moe_router_cuda_max_experts") = router::kCudaMaxExperts;
  m.def("moe_router_fused", &moe_router_fused,
        "Fused MoE router after the logits GEMM: sigmoid, +bias for selection, group-limited top-k (ties -> lower "
        "expert index), renormalise, scale; also the tokens per expert.\n"
        "logits [T, E] fp32, bias [E] fp32 -> (topk_idx [T, k] int32, topk_weight [T, k] fp32, counts [E] int32)",
        pybind11::arg("logits"), pybind11::arg("bias"), pybind11::arg("top_k"),
        pybind11::arg("routed_scaling_factor"), pybind11::arg("n_group"), pybind11::arg("topk_group"));
  m.def("moe_router_permute", &moe_router_permute,
        "moe_router_fused and the expert-sorted permutation in two launches (CUDA): logits [T, E] fp32, bias [E] "
        "fp32 -> (topk_idx [T, k] int32, topk_weight [T, k] fp32, counts [E] int32, row_of_assignment [T, k] int32, "
        "expert_offsets [E+1] int32, token_of_row [M] int32 (-1: padding)), the last three bitwise moe_permute's",
        pybind11::arg("logits"), pybind11::arg("bias"), pybind11::arg("top_k"),
        pybind11::arg("routed_scaling_factor"), pybind11::arg("n_group"), pybind11::arg("topk_group"),
        pybind11::arg("pad_to") = 1);
}

}  // namespace nk
