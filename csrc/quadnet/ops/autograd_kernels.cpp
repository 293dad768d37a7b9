// Autograd kernels of quadratic_form and quadratic_features (hand-written backward: an autograd
// node that calls the forward and backward ops below autograd) and of their helper ops
// (_quadratic_form_forward and the _backward ops: their compositions, recorded by autograd, when
// their own inputs need gradients — double backward, direct calls).
// Under torch.func transforms and forward-mode AD every kernel records its ATen composition
// instead (needs_composite_autograd).
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../utils/shapes.h"
#include "detail.h"

namespace quadnet {
namespace ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
using utils::flatten_samples;
using utils::output_shape;

// Whether an Autograd kernel must record its ATen composition instead of its own autograd node:
// a torch.func transform is active (functorch refuses C++ autograd nodes; the ATen ops have its
// batching rules and forward derivatives), or an input carries a forward-mode tangent
// (torch.autograd.forward_ad: the node has no forward derivative).
bool needs_composite_autograd(std::initializer_list<at::Tensor> inputs) {
  // functorch includes its front/back-mode keys in the thread's dispatch keys while any
  // transform is on its stack (the condition under which it refuses a C++ autograd Function).
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode)) return true;
  for (const auto& t : inputs) {
    if (t.defined() && t._fw_grad(/*level=*/0).defined()) return true;
  }
  return false;
}

// The helper ops record their composition when an input needs gradients under grad mode, or
// when needs_composite_autograd; otherwise the caller is the public op's node, which owns the
// backward, and the op redispatches below autograd.
bool records_composition(std::initializer_list<at::Tensor> inputs) {
  if (at::GradMode::is_enabled()) {
    for (const auto& t : inputs) {
      if (t.defined() && t.requires_grad()) return true;
    }
  }
  return needs_composite_autograd(inputs);
}

// The Autograd kernel of a helper op: its composition, recorded, or the op below autograd.
template <class Composite, class Op, class... Args>
auto composite_or_below_autograd(Composite composite, const Op& op, const Args&... args) {
  if (records_composition({args...})) return composite(args...);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(args...);
}

// The autograd node of quadratic_form: forward through _quadratic_form_forward (below autograd),
// backward through _quadratic_form_backward plus one GEMM for each of ∂x and ∂weight.
class QuadraticFormFunction : public torch::autograd::Function<QuadraticFormFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x2d, const at::Tensor& weight,
                            const at::Tensor& S) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, H, Z] = form_forward_op().call(x2d, weight, S);
    ctx->save_for_backward({x2d, weight, S, H, Z});
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto &x2d = saved[0], &weight = saved[1], &S = saved[2];
    auto H = saved[3], Z = saved[4];
    if (at::GradMode::is_enabled()) {
      // create_graph=True: the saved H and Z carry no history, so recompute them from the inputs
      // with the recorded composition; the backward op then differentiates through them too.
      std::tie(std::ignore, H, Z) = quadratic_form_forward_composite(x2d, weight, S);
    }
    auto [dH, dS] = form_backward_op().call(grad_outputs[0], H, Z);
    at::Tensor dx, dweight;
    if (ctx->needs_input_grad(0)) dx = at::mm(dH, weight);
    if (ctx->needs_input_grad(1)) dweight = at::mm(dH.t(), x2d);
    if (!ctx->needs_input_grad(2)) dS = at::Tensor();
    return {dx, dweight, dS};
  }
};

// The autograd node of quadratic_features: saves only its inputs (h, S); the backward op
// recomputes the products, so nothing of size B·r(r+1)/2 lives between forward and backward.
class QuadraticFeaturesFunction : public torch::autograd::Function<QuadraticFeaturesFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h2d, const at::Tensor& S) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({h2d, S});
    return features_op().call(h2d, S);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    // With create_graph=True the backward op records its composition (its Autograd kernel),
    // differentiating through h and S.
    auto [grad_h, grad_S] = features_backward_op().call(grad_outputs[0], saved[0], saved[1]);
    if (!ctx->needs_input_grad(0)) grad_h = at::Tensor();
    if (!ctx->needs_input_grad(1)) grad_S = at::Tensor();
    return {grad_h, grad_S};
  }
};

at::Tensor quadratic_form_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  if (needs_composite_autograd({x, weight, S})) return quadratic_form_composite(x, weight, S);
  check_quadratic_args(x, weight, S, "quadratic_form", "S", 3);
  auto y = QuadraticFormFunction::apply(flatten_samples(x), weight, S);
  return y.view_symint(output_shape(x, S.sym_size(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward_autograd(const at::Tensor& x,
                                                                               const at::Tensor& weight,
                                                                               const at::Tensor& S) {
  return composite_or_below_autograd(quadratic_form_forward_composite, form_forward_op(), x, weight, S);
}

std::tuple<at::Tensor, at::Tensor> quadratic_form_backward_autograd(const at::Tensor& grad, const at::Tensor& h,
                                                                    const at::Tensor& z) {
  return composite_or_below_autograd(quadratic_form_backward_composite, form_backward_op(), grad, h, z);
}

at::Tensor quadratic_features_autograd(const at::Tensor& h, const at::Tensor& S) {
  if (needs_composite_autograd({h, S})) return quadratic_features_composite(h, S);
  check_features_args(h, S);
  auto y = QuadraticFeaturesFunction::apply(flatten_samples(h), S);
  return y.view_symint(output_shape(h, S.sym_size(0)));
}

std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_autograd(const at::Tensor& grad, const at::Tensor& h,
                                                                        const at::Tensor& S) {
  return composite_or_below_autograd(quadratic_features_backward_composite, features_backward_op(), grad, h, S);
}

}  // namespace
}  // namespace ops
}  // namespace quadnet

TORCH_LIBRARY_IMPL(quadnet, Autograd, m) {
  m.impl("quadratic_form", TORCH_FN(quadnet::ops::quadratic_form_autograd));
  m.impl("_quadratic_form_forward", TORCH_FN(quadnet::ops::quadratic_form_forward_autograd));
  m.impl("_quadratic_form_backward", TORCH_FN(quadnet::ops::quadratic_form_backward_autograd));
  m.impl("quadratic_features", TORCH_FN(quadnet::ops::quadratic_features_autograd));
  m.impl("_quadratic_features_backward", TORCH_FN(quadnet::ops::quadratic_features_backward_autograd));
}
