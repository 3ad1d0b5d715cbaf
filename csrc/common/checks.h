// Argument checks for host entries: every message names the argument and what was expected.
// They raise Python exceptions (ValueError for shapes/values, TypeError for dtypes, RuntimeError for devices).
//
// Messages are text only (num(), shape_str(), Device::str()), never a number or a Device: on the H200's
// toolchain (g++ 13.3, torch 2.11) an integer inserted into a std::ostream inside _C segfaults (bench/NOTES.md,
// session 9: c10::str -> std::ostream::_M_insert<long>). NK_CHECK* enforce it at compile time: they join the
// pieces in nk::msg, which accepts text only, and hand torch one std::string (no ostream on the way).
#pragma once
#include <torch/extension.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace nk {

template <typename... Parts>
std::string msg(const Parts&... parts) {
  static_assert((std::is_convertible_v<const Parts&, std::string_view> && ...),
                "check messages take text only: nk::num() for numbers, nk::shape_str() for shapes, .str() for devices");
  std::string out;
  (out.append(std::string_view(parts)), ...);
  return out;
}

#define NK_CHECK(cond, ...) TORCH_CHECK(cond, ::nk::msg(__VA_ARGS__))
#define NK_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::nk::msg(__VA_ARGS__))
#define NK_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, ::nk::msg(__VA_ARGS__))

inline std::string num(int64_t v) { return std::to_string(v); }

inline std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + num(s[i]);
  return out + "]";
}

inline void check_device(const at::Tensor& t, const char* name, const at::Device& dev) {
  NK_CHECK(t.device() == dev, name, " must be on ", dev.str(), " (like the other inputs), got ",
              t.device().str());
}

inline void check_dtype(const at::Tensor& t, const char* name, std::initializer_list<at::ScalarType> ok) {
  bool found = false;
  std::string names;
  for (auto d : ok) {
    found |= t.scalar_type() == d;
    names += (names.empty() ? "" : " or ") + std::string(c10::toString(d));
  }
  NK_CHECK_TYPE(found, name, " must have dtype ", names, ", got ", c10::toString(t.scalar_type()));
}

// Exact shape check; -1 in `want` matches any size.
inline void check_shape(const at::Tensor& t, const char* name, std::vector<int64_t> want) {
  bool ok = t.dim() == (int64_t)want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || t.size(i) == want[i];
  NK_CHECK_VALUE(ok, name, " must have shape ", shape_str(want), " (-1 = any), got ", shape_str(t.sizes()));
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  NK_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous, got strides ", shape_str(t.strides()),
                    " for shape ", shape_str(t.sizes()));
}

}  // namespace nk
