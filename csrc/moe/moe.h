// MoE host entries: token permutation and the grouped GEMMs (see moe_api.cpp).
#pragma once
#include <pybind11/pybind11.h>

namespace nk {
void register_moe(pybind11::module_& m);
}  // namespace nk
