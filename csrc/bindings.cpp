// The one pybind11 module: it only registers each domain's host entries.
#include <torch/extension.h>

#include "moe/moe.h"
#include "router/router.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "nemotron-kernels compiled ops (host entries check arguments, then dispatch to CPU or CUDA)";
#ifdef NEMOTRON_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  nk::register_router(m);
  nk::register_moe(m);
}
