// Router domain: registers the host entries of the MoE router with the _C module.
#pragma once
#include <pybind11/pybind11.h>

namespace nk {

void register_router(pybind11::module_& m);

}  // namespace nk
