// The one place where quadnet's ops are declared to the dispatcher (torch.ops.quadnet.*).
// The kernels are composite (ATen ops + a C++ autograd Function), so one registration
// serves every device, autograd and TorchScript.
#include <torch/library.h>

#include "quadratic_form.h"

TORCH_LIBRARY(quadnet, m) {
  m.def("quadratic_form(Tensor x, Tensor weight, Tensor S) -> Tensor", &quadnet::quadratic_form);
  m.def("diagonal_quadratic_form(Tensor x, Tensor weight, Tensor alpha) -> Tensor",
        &quadnet::diagonal_quadratic_form);
  m.def("canonical_gradient(Tensor X, Tensor G) -> Tensor", &quadnet::canonical_gradient);
  m.def("canonical_form(Tensor weight, Tensor S) -> Tensor", &quadnet::canonical_form);
  m.def("diagonal_canonical_form(Tensor weight, Tensor alpha) -> Tensor",
        &quadnet::diagonal_canonical_form);
}
