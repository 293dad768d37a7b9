// The one place where quadnet's ops are declared to the dispatcher (torch.ops.quadnet.*), as
// PyTorch 2.x expects of custom ops: the schema in TORCH_LIBRARY, kernels per dispatch key.
//
// quadratic_form, quadratic_features and the forward/backward ops they are built from have
//   CompositeExplicitAutograd  the ATen composition (CPU, CUDA, any device ATen runs on),
//   Meta                       output shapes only (FakeTensor: torch.compile, torch.export;
//                              symbolic sizes included),
//   Autograd                   quadratic_form / quadratic_features: the hand-written backward (an
//                              autograd node that calls the forward and backward ops below
//                              autograd); _quadratic_form_forward and the _backward ops: their
//                              formulas as differentiable ATen ops when their own inputs need
//                              gradients (double backward, direct calls).
// The other ops (the convolutions included: conv2d + quadratic_features) are short compositions:
// CompositeImplicitAutograd (autograd, devices and tracing come from the ATen ops they call).
// Every public op has AutocastCPU / AutocastCUDA kernels (autocast.cpp): float32 inside.
// torch.func: under vmap (FuncTorchBatched) every op decomposes into its ATen composition, whose
// ops have batching rules (instead of functorch's per-sample loop); under the other transforms
// and forward-mode AD the Autograd kernels record that composition (needs_composite_autograd).
#include <torch/library.h>

#include "detail.h"

// Every op is pt2_compliant_tag: its kernels (Meta included) follow the PT2 rules opcheck
// tests (tests/python/test_pt2.py), so torch.compile and torch.export trust it.
namespace {
const std::vector<at::Tag> kPt2Compliant{at::Tag::pt2_compliant_tag};
}  // namespace

TORCH_LIBRARY(quadnet, m) {
  m.def("quadratic_form(Tensor x, Tensor weight, Tensor S) -> Tensor", kPt2Compliant);
  m.def("_quadratic_form_forward(Tensor x, Tensor weight, Tensor S) -> (Tensor y, Tensor h, Tensor z)", kPt2Compliant);
  m.def("_quadratic_form_backward(Tensor grad, Tensor h, Tensor z) -> (Tensor grad_h, Tensor grad_S)", kPt2Compliant);
  m.def("diagonal_quadratic_form(Tensor x, Tensor weight, Tensor alpha) -> Tensor",
        TORCH_FN(quadnet::ops::diagonal_quadratic_form_composite), kPt2Compliant);
  m.def("quadratic_features(Tensor h, Tensor S) -> Tensor", kPt2Compliant);
  m.def("_quadratic_features_backward(Tensor grad, Tensor h, Tensor S) -> (Tensor grad_h, Tensor grad_S)",
        kPt2Compliant);
  m.def(
      "quadratic_conv2d(Tensor x, Tensor weight, Tensor S, int[2] stride=1, int[2] padding=0, int[2] dilation=1) "
      "-> Tensor",
      TORCH_FN(quadnet::ops::quadratic_conv2d_composite), kPt2Compliant);
  m.def(
      "diagonal_quadratic_conv2d(Tensor x, Tensor weight, Tensor alpha, int[2] stride=1, int[2] padding=0, "
      "int[2] dilation=1) -> Tensor",
      TORCH_FN(quadnet::ops::diagonal_quadratic_conv2d_composite), kPt2Compliant);
  m.def("canonical_gradient(Tensor X, Tensor G) -> Tensor", TORCH_FN(quadnet::ops::canonical_gradient_composite),
        kPt2Compliant);
  m.def("canonical_form(Tensor weight, Tensor S) -> Tensor", TORCH_FN(quadnet::ops::canonical_form_composite),
        kPt2Compliant);
  m.def("diagonal_canonical_form(Tensor weight, Tensor alpha) -> Tensor",
        TORCH_FN(quadnet::ops::diagonal_canonical_form_composite), kPt2Compliant);
}

// The ops with kernels of their own (CPU, Meta, Autograd): their ATen compositions, also what
// vmap runs (FuncTorchBatched, below).
#define QUADNET_REGISTER_EXPLICIT_COMPOSITES                                                     \
  m.impl("quadratic_form", TORCH_FN(quadnet::ops::quadratic_form_composite));                    \
  m.impl("_quadratic_form_forward", TORCH_FN(quadnet::ops::quadratic_form_forward_composite));   \
  m.impl("_quadratic_form_backward", TORCH_FN(quadnet::ops::quadratic_form_backward_composite)); \
  m.impl("quadratic_features", TORCH_FN(quadnet::ops::quadratic_features_composite));            \
  m.impl("_quadratic_features_backward", TORCH_FN(quadnet::ops::quadratic_features_backward_composite));

TORCH_LIBRARY_IMPL(quadnet, CompositeExplicitAutograd, m){QUADNET_REGISTER_EXPLICIT_COMPOSITES}

// quadratic_features' CPU kernels: the same formulas, tiled so the per-vector products stay in
// cache (ops/quadratic_conv.cpp); other devices use the composite kernels.
TORCH_LIBRARY_IMPL(quadnet, CPU, m) {
  m.impl("quadratic_features", TORCH_FN(quadnet::ops::quadratic_features_cpu));
  m.impl("_quadratic_features_backward", TORCH_FN(quadnet::ops::quadratic_features_backward_cpu));
}

TORCH_LIBRARY_IMPL(quadnet, Meta, m) {
  m.impl("quadratic_form", TORCH_FN(quadnet::ops::quadratic_form_meta));
  m.impl("_quadratic_form_forward", TORCH_FN(quadnet::ops::quadratic_form_forward_meta));
  m.impl("_quadratic_form_backward", TORCH_FN(quadnet::ops::quadratic_form_backward_meta));
  m.impl("quadratic_features", TORCH_FN(quadnet::ops::quadratic_features_meta));
  m.impl("_quadratic_features_backward", TORCH_FN(quadnet::ops::quadratic_features_backward_meta));
}

TORCH_LIBRARY_IMPL(quadnet, Autograd, m) {
  m.impl("quadratic_form", TORCH_FN(quadnet::ops::quadratic_form_autograd));
  m.impl("_quadratic_form_forward", TORCH_FN(quadnet::ops::quadratic_form_forward_autograd));
  m.impl("_quadratic_form_backward", TORCH_FN(quadnet::ops::quadratic_form_backward_autograd));
  m.impl("quadratic_features", TORCH_FN(quadnet::ops::quadratic_features_autograd));
  m.impl("_quadratic_features_backward", TORCH_FN(quadnet::ops::quadratic_features_backward_autograd));
}

#define QUADNET_REGISTER_AUTOCAST(device)                                                                  \
  m.impl("quadratic_form", TORCH_FN(quadnet::ops::quadratic_form_autocast<device>));                       \
  m.impl("diagonal_quadratic_form", TORCH_FN(quadnet::ops::diagonal_quadratic_form_autocast<device>));     \
  m.impl("quadratic_features", TORCH_FN(quadnet::ops::quadratic_features_autocast<device>));               \
  m.impl("quadratic_conv2d", TORCH_FN(quadnet::ops::quadratic_conv2d_autocast<device>));                   \
  m.impl("diagonal_quadratic_conv2d", TORCH_FN(quadnet::ops::diagonal_quadratic_conv2d_autocast<device>)); \
  m.impl("canonical_gradient", TORCH_FN(quadnet::ops::canonical_gradient_autocast<device>));               \
  m.impl("canonical_form", TORCH_FN(quadnet::ops::canonical_form_autocast<device>));                       \
  m.impl("diagonal_canonical_form", TORCH_FN(quadnet::ops::diagonal_canonical_form_autocast<device>));

TORCH_LIBRARY_IMPL(quadnet, AutocastCPU,
                   m){QUADNET_REGISTER_AUTOCAST(c10::DeviceType::CPU)} TORCH_LIBRARY_IMPL(quadnet, AutocastCUDA, m) {
  QUADNET_REGISTER_AUTOCAST(c10::DeviceType::CUDA)
}
#undef QUADNET_REGISTER_AUTOCAST

// vmap: the ATen compositions run on the batched tensors (the argument checks see per-sample shapes).
TORCH_LIBRARY_IMPL(quadnet, FuncTorchBatched, m) {
  QUADNET_REGISTER_EXPLICIT_COMPOSITES
  m.impl("diagonal_quadratic_form", TORCH_FN(quadnet::ops::diagonal_quadratic_form_composite));
  m.impl("quadratic_conv2d", TORCH_FN(quadnet::ops::quadratic_conv2d_composite));
  m.impl("diagonal_quadratic_conv2d", TORCH_FN(quadnet::ops::diagonal_quadratic_conv2d_composite));
  m.impl("canonical_gradient", TORCH_FN(quadnet::ops::canonical_gradient_composite));
  m.impl("canonical_form", TORCH_FN(quadnet::ops::canonical_form_composite));
  m.impl("diagonal_canonical_form", TORCH_FN(quadnet::ops::diagonal_canonical_form_composite));
}
#undef QUADNET_REGISTER_EXPLICIT_COMPOSITES
