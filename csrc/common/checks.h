// Argument checks for host entries: every message names the argument and what was expected.
// They raise Python exceptions (ValueError for shapes/values, TypeError for dtypes, RuntimeError for devices).
//
// Messages pass TORCH_CHECK* / c10::str strings only (num(), shape_str(), Device::str()), never a number or a
// Device: on the H200's toolchain (g++ 13.3, torch 2.11) an integer inserted into a std::ostream inside _C
// segfaults (bench/NOTES.md, session 9: c10::str -> std::ostream::_M_insert<long>).
#pragma once
#include <torch/extension.h>

#include <cstdint>
#include <string>
#include <vector>

namespace nk {

inline std::string num(int64_t v) { return std::to_string(v); }

inline std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + num(s[i]);
  return out + "]";
}

inline void check_device(const at::Tensor& t, const char* name, const at::Device& dev) {
  TORCH_CHECK(t.device() == dev, name, " must be on ", dev.str(), " (like the other inputs), got ",
              t.device().str());
}

inline void check_dtype(const at::Tensor& t, const char* name, std::initializer_list<at::ScalarType> ok) {
  bool found = false;
  std::string names;
  for (auto d : ok) {
    found |= t.scalar_type() == d;
    names += (names.empty() ? "" : " or ") + std::string(c10::toString(d));
  }
  TORCH_CHECK_TYPE(found, name, " must have dtype ", names, ", got ", c10::toString(t.scalar_type()));
}

// Exact shape check; -1 in `want` matches any size.
inline void check_shape(const at::Tensor& t, const char* name, std::vector<int64_t> want) {
  bool ok = t.dim() == (int64_t)want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || t.size(i) == want[i];
  TORCH_CHECK_VALUE(ok, name, " must have shape ", shape_str(want), " (-1 = any), got ", shape_str(t.sizes()));
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous, got strides ", shape_str(t.strides()),
                    " for shape ", shape_str(t.sizes()));
}

}  // namespace nk
