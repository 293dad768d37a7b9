// Python bindings of quadnet's C++ library (the quadnet._C extension). The ops themselves
// are reached through torch.ops.quadnet.* (registered in ops/register_ops.cpp); this file
// exposes the non-op API. Python only adapts these: no algorithm is written twice.
#include <torch/extension.h>

#include "quadnet/quadnet.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "quadnet C++ core";
  auto nn = m.def_submodule("nn", "module helpers");
  nn.def("init_quadratic_layer_",
         [](torch::Tensor weight, torch::Tensor S, c10::optional<torch::Tensor> bias) {
           auto b = bias.value_or(torch::Tensor());
           quadnet::nn::init::quadratic_layer_(weight, S, b);
         },
         py::arg("weight"), py::arg("S"), py::arg("bias"));
  nn.def("init_diagonal_quadratic_layer_",
         [](torch::Tensor weight, torch::Tensor alpha, c10::optional<torch::Tensor> bias) {
           auto b = bias.value_or(torch::Tensor());
           quadnet::nn::init::diagonal_quadratic_layer_(weight, alpha, b);
         },
         py::arg("weight"), py::arg("alpha"), py::arg("bias"));
}
