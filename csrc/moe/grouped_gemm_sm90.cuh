// Grouped BF16 GEMM for sm_90a built from CUTLASS 3.x collectives: TMA loads, warp-specialised persistent wgmma
// kernel over ptr-array ("grouped") problem shapes, TMA-store epilogue with a fused elementwise op.
// Each translation unit (grouped_gemm_<kind>.cu) instantiates ONE configuration (compile memory: ~3 GB per TU).
//
// The per-group arguments (problem shape, A/B/C/D pointers and strides) live in the workspace and are written by
// build_group_args_kernel from the device-side expert offsets, so the host never reads the group sizes; CUTLASS
// gets no host problem shapes and launches a persistent grid of sm_count CTAs that walks the groups on device.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "moe/moe_kernels.h"

namespace nk::moe::sm90 {

using namespace cute;
using Bf16 = cutlass::bfloat16_t;

// ---- epilogue elementwise ops (Sm90Compute applies them to fragments: Array<float, N>) ----

// relu(x)^2
template <class T>
struct SquaredReLU {
  CUTLASS_HOST_DEVICE T operator()(T const& x) const {
    T r = x > T(0) ? x : T(0);
    return r * r;
  }
};
template <class T, int N>
struct SquaredReLU<cutlass::Array<T, N>> {
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& x) const {
    cutlass::Array<T, N> y;
    SquaredReLU<T> f;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = f(x[i]);
    return y;
  }
};

using namespace cutlass::epilogue::fusion;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;
using EpiIdentity = LinearCombination<Bf16, float>;                             // D = acc (alpha 1, beta 0)
using EpiReLU2 = Sm90EVT<Sm90Compute<SquaredReLU, Bf16, float, kRound>, Sm90AccFetch>;  // D = relu(acc)^2

// FP8: dequantise in the epilogue, D = act(acc * a_scale[m] * b_scale[e][n]). Both scales come as per-group
// pointer arrays (a_scale + first row of the group, b_scale + e * N); a_scale is read one float at a time
// (a group may start at any row), b_scale 16 bytes at a time (N % 8 == 0).
template <class TileShape>
using ScaleOfRow = Sm90ColBroadcast<0, TileShape, float*, float, Stride<_1, _0, _0>, 1>;
template <class TileShape>
using ScaleOfCol = Sm90RowBroadcast<0, TileShape, float*, float, Stride<_0, _1, _0>, 4>;
template <class TileShape, class ElementOut>
using EpiDequant = Sm90EVT<Sm90Compute<cutlass::multiplies, ElementOut, float, kRound>,        // (.) * b_scale
                           Sm90EVT<Sm90Compute<cutlass::multiplies, float, float, kRound>,     // acc * a_scale
                                   Sm90AccFetch, ScaleOfRow<TileShape>>,
                           ScaleOfCol<TileShape>>;
template <class TileShape>
using EpiDequantReLU2 = Sm90EVT<Sm90Compute<SquaredReLU, Bf16, float, kRound>, EpiDequant<TileShape, float>>;

// The same for swapped operands (SwapAB below): D^T's rows are channels (b_scale) and its columns are the group's
// rows (a_scale, which may start at any row: read one float at a time).
template <class TileShape>
using ScaleOfColAnyAlign = Sm90RowBroadcast<0, TileShape, float*, float, Stride<_0, _1, _0>, 1>;
template <class TileShape, class ElementOut>
using EpiDequantSwap = Sm90EVT<Sm90Compute<cutlass::multiplies, ElementOut, float, kRound>,    // (.) * a_scale
                               Sm90EVT<Sm90Compute<cutlass::multiplies, float, float, kRound>, // acc * b_scale
                                       Sm90AccFetch, ScaleOfRow<TileShape>>,
                               ScaleOfColAnyAlign<TileShape>>;
template <class TileShape>
using EpiDequantSwapReLU2 = Sm90EVT<Sm90Compute<SquaredReLU, Bf16, float, kRound>, EpiDequantSwap<TileShape, float>>;

// BF16 with a per-row scale (routing weights): D = acc * a_scale[m]; swapped, the rows are D^T's columns.
template <class TileShape>
using EpiRowScale = Sm90EVT<Sm90Compute<cutlass::multiplies, Bf16, float, kRound>, Sm90AccFetch, ScaleOfRow<TileShape>>;
template <class TileShape>
using EpiRowScaleSwap =
    Sm90EVT<Sm90Compute<cutlass::multiplies, Bf16, float, kRound>, Sm90AccFetch, ScaleOfColAnyAlign<TileShape>>;

// Fills the fusion arguments that depend on the per-group arrays (only the scaling epilogues have any).
template <class FusionOp>
struct FusionArgs {
  template <class Args>
  static void fill(Args&, float const**, float const**) {}
};
template <class TileShape, class ElementOut>
struct FusionArgs<EpiDequant<TileShape, ElementOut>> {
  template <class Args>
  static void fill(Args& args, float const** a_scale, float const** b_scale) {
    args.op_0.op_1.ptr_col = a_scale;  // {op_0: {acc, a_scale, *}, op_1: b_scale, op_2: *}
    args.op_1.ptr_row = b_scale;
  }
};
template <class TileShape>
struct FusionArgs<EpiDequantReLU2<TileShape>> {
  template <class Args>
  static void fill(Args& args, float const** a_scale, float const** b_scale) {
    FusionArgs<EpiDequant<TileShape, float>>::fill(args.op_0, a_scale, b_scale);  // {op_0: dequant, op_1: relu^2}
  }
};
template <class TileShape, class ElementOut>
struct FusionArgs<EpiDequantSwap<TileShape, ElementOut>> {
  template <class Args>
  static void fill(Args& args, float const** a_scale, float const** b_scale) {
    args.op_0.op_1.ptr_col = b_scale;  // {op_0: {acc, b_scale, *}, op_1: a_scale, op_2: *}
    args.op_1.ptr_row = a_scale;
  }
};
template <class TileShape>
struct FusionArgs<EpiRowScale<TileShape>> {
  template <class Args>
  static void fill(Args& args, float const** a_scale, float const**) {
    args.op_1.ptr_col = a_scale;  // {op_0: acc, op_1: a_scale, op_2: *}
  }
};
template <class TileShape>
struct FusionArgs<EpiRowScaleSwap<TileShape>> {
  template <class Args>
  static void fill(Args& args, float const** a_scale, float const**) {
    args.op_1.ptr_row = a_scale;
  }
};
template <class TileShape>
struct FusionArgs<EpiDequantSwapReLU2<TileShape>> {
  template <class Args>
  static void fill(Args& args, float const** a_scale, float const** b_scale) {
    FusionArgs<EpiDequantSwap<TileShape, float>>::fill(args.op_0, a_scale, b_scale);
  }
};

// ---- one kernel configuration ----

using Fp8 = cutlass::float_e4m3_t;
using RowMajor = cutlass::layout::RowMajor;
using ColumnMajor = cutlass::layout::ColumnMajor;

// Cooperative schedule: both consumer warp groups share one tile (M >= 128).
// Tiles: 128x192 where N is an expert width (1856 = 10 x 192 minus 3%, 2688 = 14 x 192): 0.5-3% faster than
// 128x256 (which pads 1856 by 10%) at T = 16384; the weight-gradient TN and the FP8 down kept 128x256 (no gain).
// FP8 accumulates in the tensor cores' own precision ("fast accumulation"): the default FP8 mainloop promotes
// into a second fp32 accumulator every 4 k-blocks, which costs registers (128x256 tiles spill) and issue slots;
// for K <= 2688 the fast-accumulation error is far below the e4m3 quantisation error the test budgets for.
// SwapAB (NT kinds, few rows per group): computes d^T = b[e] @ a[rows_e]^T, so the weights' channels fill the
// wgmma's 64-row M side and the group's few rows a narrow N tile; d^T is stored column-major, i.e. d row-major.
// ClusterShape: 1x2 clusters take two N tiles of one M tile, and TMA multicasts the A tile to both CTAs (the BF16
// forward kinds): one group of all rows (the shared expert) -8 to -11%, the routed layout unchanged (session 19).
template <class ElementAB_, class LayoutA_, class LayoutB_, class FusionOp_, class TileShape_, bool SwapAB = false,
          class ClusterShape_ = Shape<_1, _1, _1>>
struct GroupedGemm {
  static constexpr bool kSwapAB = SwapAB;
  static constexpr bool kFp8 = cute::is_same_v<ElementAB_, cutlass::float_e4m3_t>;
  using KernelSchedule_ =
      cute::conditional_t<kFp8, cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8FastAccum,
                          cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>;
  using EpilogueSchedule_ = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;
  using ElementAB = ElementAB_;  // Bf16 or cutlass::float_e4m3_t
  using LayoutA = LayoutA_;
  using LayoutB = LayoutB_;
  using LayoutD = cute::conditional_t<SwapAB, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  using FusionOp = FusionOp_;
  using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // (M, N, K) per group
  static constexpr int kAlign = 8;                                               // 16 bytes of bf16 (D)
  static constexpr int kAlignAB = 16 / int(sizeof(ElementAB));                   // 16 bytes of A, B (TMA)

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape_, ClusterShape_,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD*, kAlign, Bf16, LayoutD*,
      kAlign, EpilogueSchedule_, FusionOp_>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, LayoutA*, kAlignAB, ElementAB, LayoutB*, kAlignAB,
      float,
      TileShape_, ClusterShape_,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule_>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideC = typename Kernel::InternalStrideC;
  using StrideD = typename Kernel::InternalStrideD;
  using Shape3 = typename ProblemShape::UnderlyingProblemShape;
};

// ---- per-group argument arrays, carved out of the workspace after CUTLASS's own part ----

template <class G>
struct GroupArrays {
  typename G::Shape3* shapes;
  typename G::ElementAB const** ptr_a;
  typename G::ElementAB const** ptr_b;
  Bf16** ptr_d;
  float const** ptr_a_scale;  // FP8 and kNTScaled only
  float const** ptr_b_scale;
  typename G::StrideA* stride_a;
  typename G::StrideB* stride_b;
  typename G::StrideC* stride_c;
  typename G::StrideD* stride_d;
};
constexpr int kPointerArrays = 5;

inline size_t round_up_256(size_t x) { return (x + 255) / 256 * 256; }

template <class G>
size_t cutlass_workspace_bytes(int groups, int sm_count) {
  typename G::Gemm::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
  args.problem_shape = {groups, nullptr, nullptr};
  args.hw_info.sm_count = sm_count;
  return round_up_256(G::Gemm::get_workspace_size(args));
}

template <class G>
size_t arrays_bytes(int groups) {
  const size_t g = size_t(groups);
  return round_up_256(g * sizeof(typename G::Shape3)) + kPointerArrays * round_up_256(g * sizeof(void*)) +
         round_up_256(g * sizeof(typename G::StrideA)) + round_up_256(g * sizeof(typename G::StrideB)) +
         round_up_256(g * sizeof(typename G::StrideC)) + round_up_256(g * sizeof(typename G::StrideD));
}

template <class G>
size_t workspace_bytes(int groups, int sm_count) {
  return cutlass_workspace_bytes<G>(groups, sm_count) + arrays_bytes<G>(groups);
}

template <class G>
GroupArrays<G> carve_arrays(char* base, int groups) {
  const size_t g = size_t(groups);
  GroupArrays<G> r;
  auto take = [&](size_t bytes) {
    char* p = base;
    base += round_up_256(bytes);
    return p;
  };
  r.shapes = reinterpret_cast<typename G::Shape3*>(take(g * sizeof(typename G::Shape3)));
  r.ptr_a = reinterpret_cast<typename G::ElementAB const**>(take(g * sizeof(void*)));
  r.ptr_b = reinterpret_cast<typename G::ElementAB const**>(take(g * sizeof(void*)));
  r.ptr_d = reinterpret_cast<Bf16**>(take(g * sizeof(void*)));
  r.ptr_a_scale = reinterpret_cast<float const**>(take(g * sizeof(void*)));
  r.ptr_b_scale = reinterpret_cast<float const**>(take(g * sizeof(void*)));
  r.stride_a = reinterpret_cast<typename G::StrideA*>(take(g * sizeof(typename G::StrideA)));
  r.stride_b = reinterpret_cast<typename G::StrideB*>(take(g * sizeof(typename G::StrideB)));
  r.stride_c = reinterpret_cast<typename G::StrideC*>(take(g * sizeof(typename G::StrideC)));
  r.stride_d = reinterpret_cast<typename G::StrideD*>(take(g * sizeof(typename G::StrideD)));
  return r;
}

// One thread per group: rows [start, end) of the grouped operand, clamped to [0, m_rows] so that bad offsets can
// never address memory outside the tensors (they give wrong groups, not a crash).
template <class G, GemmKind K>
__global__ void build_group_args_kernel(GroupedGemmParams p, GroupArrays<G> arr) {
  static_assert(!G::kSwapAB || is_nt(K), "swapped operands are built for the NT kinds only");
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= p.groups) return;
  const int64_t start = min(max(int64_t(p.offsets[e]), int64_t(0)), p.m_rows);
  const int64_t end = min(max(int64_t(p.offsets[e + 1]), start), p.m_rows);
  const int rows = int(end - start);
  using AB = typename G::ElementAB;
  const AB* a = static_cast<const AB*>(p.a);
  const AB* b = static_cast<const AB*>(p.b);
  Bf16* d = static_cast<Bf16*>(p.d);
  if constexpr (K == GemmKind::kTN) {
    // d[e] (N1 x N2) = a_e^T (N1 x rows) @ b_e (rows x N2): M = N1, N = N2, K = rows. An empty group gets no
    // tiles (a zero-K mainloop would leave the accumulators unset); zero_empty_groups_kernel writes its zeros.
    arr.shapes[e] = typename G::Shape3(rows > 0 ? p.n : 0, p.k, rows);
    arr.ptr_a[e] = a + start * p.n;
    arr.ptr_b[e] = b + start * p.k;
    arr.ptr_d[e] = d + int64_t(e) * p.n * p.k;
    arr.ptr_a_scale[e] = nullptr;
    arr.ptr_b_scale[e] = nullptr;
    arr.stride_a[e] = cutlass::make_cute_packed_stride(typename G::StrideA{}, {p.n, rows, 1});  // M-major
    arr.stride_b[e] = cutlass::make_cute_packed_stride(typename G::StrideB{}, {p.k, rows, 1});  // N-major
    arr.stride_c[e] = cutlass::make_cute_packed_stride(typename G::StrideC{}, {p.n, p.k, 1});
    arr.stride_d[e] = cutlass::make_cute_packed_stride(typename G::StrideD{}, {p.n, p.k, 1});
  } else if constexpr (G::kSwapAB) {
    // d[rows_e]^T (N x rows) = b[e] (N x K) @ a[rows_e]^T: M = N, N = rows; d^T column-major is d row-major.
    arr.shapes[e] = typename G::Shape3(p.n, rows, p.k);
    arr.ptr_a[e] = b + int64_t(e) * p.n * p.k;
    arr.ptr_b[e] = a + start * p.k;
    arr.ptr_d[e] = d + start * p.n;
    arr.ptr_a_scale[e] = p.a_scale ? p.a_scale + start : nullptr;
    arr.ptr_b_scale[e] = p.b_scale ? p.b_scale + int64_t(e) * p.n : nullptr;
    arr.stride_a[e] = cutlass::make_cute_packed_stride(typename G::StrideA{}, {p.n, p.k, 1});
    arr.stride_b[e] = cutlass::make_cute_packed_stride(typename G::StrideB{}, {rows, p.k, 1});
    arr.stride_c[e] = cutlass::make_cute_packed_stride(typename G::StrideC{}, {p.n, rows, 1});
    arr.stride_d[e] = cutlass::make_cute_packed_stride(typename G::StrideD{}, {p.n, rows, 1});
  } else {
    // d[rows_e] (rows x N) = a[rows_e] (rows x K) @ op(b[e]), op(b[e]) = b[e]^T (NT, b[e] is N x K) or b[e] (NN).
    arr.shapes[e] = typename G::Shape3(rows, p.n, p.k);
    arr.ptr_a[e] = a + start * p.k;
    arr.ptr_b[e] = b + int64_t(e) * p.n * p.k;
    arr.ptr_d[e] = d + start * p.n;
    arr.ptr_a_scale[e] = p.a_scale ? p.a_scale + start : nullptr;
    arr.ptr_b_scale[e] = p.b_scale ? p.b_scale + int64_t(e) * p.n : nullptr;
    arr.stride_a[e] = cutlass::make_cute_packed_stride(typename G::StrideA{}, {rows, p.k, 1});
    arr.stride_b[e] = cutlass::make_cute_packed_stride(typename G::StrideB{}, {p.n, p.k, 1});
    arr.stride_c[e] = cutlass::make_cute_packed_stride(typename G::StrideC{}, {rows, p.n, 1});
    arr.stride_d[e] = cutlass::make_cute_packed_stride(typename G::StrideD{}, {rows, p.n, 1});
  }
}

inline const char* status_text(cutlass::Status s, const char* where) {
  if (s == cutlass::Status::kSuccess) return "";
  static thread_local char buf[256];
  snprintf(buf, sizeof(buf), "%s: %s", where, cutlass::cutlassGetStatusString(s));
  return buf;
}

// cudaFuncAttributeMaxDynamicSharedMemorySize for the kernel, once per device (devices 0..63; others every call).
template <class Kernel>
const char* raise_smem_limit(int device) {
  static std::atomic<bool> done[64] = {};
  const bool cached = device >= 0 && device < 64;
  if (cached && done[device].load(std::memory_order_acquire)) return "";
  const int smem = Kernel::SharedStorageSize;
  if (smem >= (48 << 10)) {
    const cudaError_t err = cudaFuncSetAttribute(cutlass::device_kernel<Kernel>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return cudaGetErrorString(err);
    }
  }
  if (cached) done[device].store(true, std::memory_order_release);
  return "";
}

// Clusters of the kernel's shape that fit on the device at once with its real shared memory, once per device (0 on
// failure). CUTLASS sizes the persistent grid from it; without it, it guesses from 18 SMs per GPC, and a grid of
// more clusters than fit runs a second, nearly empty wave.
template <class Kernel>
int max_active_clusters(int device) {
  static std::atomic<int> cache[64] = {};
  const bool cached = device >= 0 && device < 64;
  if (cached && cache[device].load(std::memory_order_acquire) > 0) return cache[device].load();
  using Cluster = typename Kernel::ClusterShape;
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = size<0>(Cluster{});
  attr.val.clusterDim.y = size<1>(Cluster{});
  attr.val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(size<0>(Cluster{}), size<1>(Cluster{}), 1);
  config.blockDim = dim3(Kernel::MaxThreadsPerBlock, 1, 1);
  config.dynamicSmemBytes = Kernel::SharedStorageSize;
  config.attrs = &attr;
  config.numAttrs = 1;
  int n = 0;
  if (cudaOccupancyMaxActiveClusters(&n, cutlass::device_kernel<Kernel>, &config) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  if (cached) cache[device].store(n, std::memory_order_release);
  return n;
}

template <class G, GemmKind K>
const char* run(const GroupedGemmParams& p) {
  using Gemm = typename G::Gemm;
  char* ws = static_cast<char*>(p.workspace);
  const size_t cutlass_bytes = cutlass_workspace_bytes<G>(p.groups, p.sm_count);
  GroupArrays<G> arr = carve_arrays<G>(ws + cutlass_bytes, p.groups);

  build_group_args_kernel<G, K><<<(p.groups + 127) / 128, 128, 0, p.stream>>>(p, arr);
  if constexpr (K == GemmKind::kTN) zero_empty_groups(p);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return cudaGetErrorString(err);

  cutlass::KernelHardwareInfo hw_info;
  hw_info.device_id = p.device;
  hw_info.sm_count = p.sm_count;

  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {p.groups, arr.shapes, nullptr},  // no host problem shapes: the sizes stay on the device
      {arr.ptr_a, arr.stride_a, arr.ptr_b, arr.stride_b},
      {{}, nullptr, arr.stride_c, arr.ptr_d, arr.stride_d},
      hw_info};
  FusionArgs<typename G::FusionOp>::fill(args.epilogue.thread, arr.ptr_a_scale, arr.ptr_b_scale);

  // GemmUniversalAdapter::initialize() would also raise the kernel's shared-memory limit on every call; do that
  // once per device instead (host overhead, and no driver attribute calls during CUDA-graph capture after the
  // first eager call), then build the params and launch.
  using Kernel = typename Gemm::GemmKernel;
  if (auto s = Gemm::can_implement(args); s != cutlass::Status::kSuccess) return status_text(s, "can_implement");
  if (const char* err = raise_smem_limit<Kernel>(p.device); err[0] != '\0') return err;
  if constexpr (size(typename Kernel::ClusterShape{}) > 1)
    args.hw_info.max_active_clusters = max_active_clusters<Kernel>(p.device);
  if (auto s = Kernel::initialize_workspace(args, ws, p.stream); s != cutlass::Status::kSuccess)
    return status_text(s, "initialize_workspace");
  typename Gemm::Params params = Kernel::to_underlying_arguments(args, ws);
  if (auto s = Gemm::run(params, p.stream); s != cutlass::Status::kSuccess) return status_text(s, "run");
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return cudaGetErrorString(err);
  return "";
}

}  // namespace nk::moe::sm90

// One configuration per translation unit (compile memory): defines grouped_gemm_<name>_workspace / _run, which
// grouped_gemm_dispatch.cu declares, for kind GemmKind::<kind>, tile M x N x K and Config (which may name Tile).
#define NK_GROUPED_GEMM_TU(name, kind, M, N, K, ...)                     \
  namespace nk::moe {                                                    \
  namespace {                                                            \
  using namespace sm90;                                                  \
  using Tile = Shape<Int<M>, Int<N>, Int<K>>;                            \
  using Config = __VA_ARGS__;                                            \
  }                                                                      \
  size_t grouped_gemm_##name##_workspace(int groups, int sm_count) {     \
    return sm90::workspace_bytes<Config>(groups, sm_count);              \
  }                                                                      \
  const char* grouped_gemm_##name##_run(const GroupedGemmParams& p) {    \
    return sm90::run<Config, GemmKind::kind>(p);                         \
  }                                                                      \
  }
