// The quadratic layer's ops: their schemas (torch.ops.quadnet.*), the argument checks every
// kernel runs first, and the dispatcher wrappers that are the public C++ functions. The kernels
// are in the files of their dispatch keys (detail.h lists them).
#include "quadratic_form.h"

#include <torch/library.h>

#include "../utils/checks.h"
#include "detail.h"

namespace quadnet {
namespace ops {

void check_model_args(const at::Tensor& weight, const at::Tensor& coefficients, const char* op,
                      const char* coefficients_name, int64_t coefficients_dim) {
  TORCH_CHECK(weight.dim() == 2, op, ": expected weight of shape (rank, in_features), got shape ", weight.sym_sizes());
  TORCH_CHECK(coefficients.dim() == coefficients_dim, op, ": expected ", coefficients_name, " of shape ",
              coefficients_dim == 3 ? "(out_features, rank, rank)" : "(out_features, rank)", ", got shape ",
              coefficients.sym_sizes());
  TORCH_CHECK(coefficients.sym_size(1) == weight.sym_size(0), op, ": ", coefficients_name, " of shape ",
              coefficients.sym_sizes(), " does not match rank ", weight.sym_size(0), " of weight of shape ",
              weight.sym_sizes());
  if (coefficients_dim == 3) {
    TORCH_CHECK(coefficients.sym_size(2) == coefficients.sym_size(1), op,
                ": expected square matrices S of shape (out_features, rank, rank), got shape ",
                coefficients.sym_sizes());
  }
  utils::check_same_floating(op, {{"weight", weight}, {coefficients_name, coefficients}});
}

void check_quadratic_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& coefficients, const char* op,
                          const char* coefficients_name, int64_t coefficients_dim) {
  TORCH_CHECK(x.dim() >= 1, op, ": expected x of shape (..., in_features) with at least 1 dim, got ", x.dim(),
              "-dim tensor");
  check_model_args(weight, coefficients, op, coefficients_name, coefficients_dim);
  TORCH_CHECK(x.sym_size(-1) == weight.sym_size(1), op, ": x has ", x.sym_size(-1),
              " features in its last dim but weight of shape ", weight.sym_sizes(), " expects ", weight.sym_size(1),
              " (weight is (rank, in_features))");
  utils::check_same_floating(op, {{"x", x}, {"weight", weight}});
}

void check_form_forward_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  check_quadratic_args(x, weight, S, "_quadratic_form_forward", "S", 3);
  TORCH_CHECK(x.dim() == 2, "_quadratic_form_forward: expected x of shape (batch, in_features), got shape ",
              x.sym_sizes());
}

void check_form_backward_args(const at::Tensor& grad, const at::Tensor& h, const at::Tensor& z) {
  const char* op = "_quadratic_form_backward";
  TORCH_CHECK(h.dim() == 2, op, ": expected h of shape (batch, rank), got shape ", h.sym_sizes());
  TORCH_CHECK(z.dim() == 3 && z.sym_size(0) == h.sym_size(0) && z.sym_size(2) == h.sym_size(1), op,
              ": expected z of shape (batch=", h.sym_size(0), ", out_features, rank=", h.sym_size(1), "), got shape ",
              z.sym_sizes());
  TORCH_CHECK(grad.dim() == 2 && grad.sym_size(0) == z.sym_size(0) && grad.sym_size(1) == z.sym_size(1), op,
              ": expected grad of shape (batch=", z.sym_size(0), ", out_features=", z.sym_size(1), "), got shape ",
              grad.sym_sizes());
  utils::check_same_floating(op, {{"grad", grad}, {"h", h}, {"z", z}});
}

void check_canonical_gradient_args(const at::Tensor& X, const at::Tensor& G) {
  TORCH_CHECK(X.dim() == 2, "canonical_gradient: expected X of shape (batch, features), got shape ", X.sym_sizes());
  TORCH_CHECK(G.dim() == 2 && G.sym_size(0) == X.sym_size(0),
              "canonical_gradient: expected G of shape (batch=", X.sym_size(0), ", out_features), got shape ",
              G.sym_sizes());
  utils::check_same_floating("canonical_gradient", {{"X", X}, {"G", G}});
}

const c10::TypedOperatorHandle<TripleOfTernary>& form_forward_op() {
  static const auto op = typed_op<TripleOfTernary>("quadnet::_quadratic_form_forward");
  return op;
}

const c10::TypedOperatorHandle<PairOfTernary>& form_backward_op() {
  static const auto op = typed_op<PairOfTernary>("quadnet::_quadratic_form_backward");
  return op;
}

}  // namespace ops

at::Tensor quadratic_form(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  static const auto op = ops::typed_op<ops::Ternary>("quadnet::quadratic_form");
  return op.call(x, weight, S);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward(const at::Tensor& x, const at::Tensor& weight,
                                                                      const at::Tensor& S) {
  return ops::form_forward_op().call(x, weight, S);
}

std::tuple<at::Tensor, at::Tensor> quadratic_form_backward(const at::Tensor& grad, const at::Tensor& h,
                                                           const at::Tensor& z) {
  return ops::form_backward_op().call(grad, h, z);
}

at::Tensor diagonal_quadratic_form(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha) {
  static const auto op = ops::typed_op<ops::Ternary>("quadnet::diagonal_quadratic_form");
  return op.call(x, weight, alpha);
}

at::Tensor canonical_gradient(const at::Tensor& X, const at::Tensor& G) {
  static const auto op = ops::typed_op<ops::Binary>("quadnet::canonical_gradient");
  return op.call(X, G);
}

at::Tensor canonical_form(const at::Tensor& weight, const at::Tensor& S) {
  static const auto op = ops::typed_op<ops::Binary>("quadnet::canonical_form");
  return op.call(weight, S);
}

at::Tensor diagonal_canonical_form(const at::Tensor& weight, const at::Tensor& alpha) {
  static const auto op = ops::typed_op<ops::Binary>("quadnet::diagonal_canonical_form");
  return op.call(weight, alpha);
}

}  // namespace quadnet

// The one TORCH_LIBRARY of the namespace (loading a second copy of quadnet fails here, clearly);
// the convolutional ops add theirs as a fragment (quadratic_conv.cpp).
TORCH_LIBRARY(quadnet, m) {
  const auto tags = quadnet::ops::op_tags();
  m.def("quadratic_form(Tensor x, Tensor weight, Tensor S) -> Tensor", tags);
  m.def("_quadratic_form_forward(Tensor x, Tensor weight, Tensor S) -> (Tensor y, Tensor h, Tensor z)", tags);
  m.def("_quadratic_form_backward(Tensor grad, Tensor h, Tensor z) -> (Tensor grad_h, Tensor grad_S)", tags);
  m.def("diagonal_quadratic_form(Tensor x, Tensor weight, Tensor alpha) -> Tensor", tags);
  m.def("canonical_gradient(Tensor X, Tensor G) -> Tensor", tags);
  m.def("canonical_form(Tensor weight, Tensor S) -> Tensor", tags);
  m.def("diagonal_canonical_form(Tensor weight, Tensor alpha) -> Tensor", tags);
}
