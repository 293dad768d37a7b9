// The convolutional quadratic layer's ops: their schemas (a fragment of the quadnet library), the
// argument checks every kernel runs first, and the dispatcher wrappers that are the public C++
// functions. The kernels are in the files of their dispatch keys (detail.h lists them).
#include "quadratic_conv.h"

#include <torch/library.h>

#include "../utils/checks.h"
#include "detail.h"

namespace quadnet {
namespace ops {
namespace {

void check_S(const at::Tensor& S, const char* op) {
  TORCH_CHECK(S.dim() == 3 && S.sym_size(1) == S.sym_size(2), op,
              ": expected S of shape (out_features, rank, rank), got shape ", S.sym_sizes());
}

}  // namespace

void check_features_args(const at::Tensor& h, const at::Tensor& S) {
  const char* op = "quadratic_features";
  TORCH_CHECK(h.dim() >= 1, op, ": expected h of shape (..., rank) with at least 1 dim, got ", h.dim(), "-dim tensor");
  check_S(S, op);
  TORCH_CHECK(h.sym_size(-1) == S.sym_size(1), op, ": h has ", h.sym_size(-1),
              " features in its last dim but S of shape ", S.sym_sizes(), " expects rank ", S.sym_size(1));
  utils::check_same_floating(op, {{"h", h}, {"S", S}});
}

void check_features_backward_args(const at::Tensor& grad, const at::Tensor& h, const at::Tensor& S) {
  const char* op = "_quadratic_features_backward";
  check_S(S, op);
  TORCH_CHECK(h.dim() == 2 && h.sym_size(1) == S.sym_size(1), op, ": expected h of shape (batch, rank=", S.sym_size(1),
              "), got shape ", h.sym_sizes());
  TORCH_CHECK(grad.dim() == 2 && grad.sym_size(0) == h.sym_size(0) && grad.sym_size(1) == S.sym_size(0), op,
              ": expected grad of shape (batch=", h.sym_size(0), ", out_features=", S.sym_size(0), "), got shape ",
              grad.sym_sizes());
  utils::check_same_floating(op, {{"grad", grad}, {"h", h}, {"S", S}});
}

void check_conv_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& coefficients, const char* op,
                     const char* coefficients_name, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation) {
  TORCH_CHECK(x.dim() == 3 || x.dim() == 4, op,
              ": expected x of shape (batch, in_channels, height, width) or (in_channels, height, width), got shape ",
              x.sym_sizes());
  TORCH_CHECK(weight.dim() == 4, op,
              ": expected weight of shape (rank, in_channels, kernel_height, kernel_width), got shape ",
              weight.sym_sizes());
  TORCH_CHECK(x.sym_size(-3) == weight.sym_size(1), op, ": x of shape ", x.sym_sizes(), " has ", x.sym_size(-3),
              " channels but weight of shape ", weight.sym_sizes(), " expects ", weight.sym_size(1),
              " (weight is (rank, in_channels, kernel_height, kernel_width))");
  const bool quadratic = coefficients.dim() == 3;
  TORCH_CHECK((coefficients.dim() == 3 || coefficients.dim() == 2) && coefficients.sym_size(1) == weight.sym_size(0) &&
                  (!quadratic || coefficients.sym_size(2) == weight.sym_size(0)),
              op, ": expected ", coefficients_name, " of shape ",
              quadratic ? "(out_channels, rank, rank)" : "(out_channels, rank)",
              " with rank = weight.size(0) = ", weight.sym_size(0), ", got shape ", coefficients.sym_sizes());
  auto check_pair = [op](at::IntArrayRef values, const char* name, int64_t least) {
    TORCH_CHECK(values.size() == 1 || values.size() == 2, op, ": expected ", name,
                " to be one int or two (height, width), got ", values);
    for (auto v : values) TORCH_CHECK(v >= least, op, ": expected ", name, " >= ", least, ", got ", values);
  };
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  utils::check_same_floating(op, {{"x", x}, {"weight", weight}, {coefficients_name, coefficients}});
}

const c10::TypedOperatorHandle<Binary>& features_op() {
  static const auto op = typed_op<Binary>("quadnet::quadratic_features");
  return op;
}

const c10::TypedOperatorHandle<PairOfTernary>& features_backward_op() {
  static const auto op = typed_op<PairOfTernary>("quadnet::_quadratic_features_backward");
  return op;
}

}  // namespace ops

at::Tensor quadratic_features(const at::Tensor& h, const at::Tensor& S) { return ops::features_op().call(h, S); }

std::tuple<at::Tensor, at::Tensor> quadratic_features_backward(const at::Tensor& grad, const at::Tensor& h,
                                                               const at::Tensor& S) {
  return ops::features_backward_op().call(grad, h, S);
}

at::Tensor quadratic_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op = ops::typed_op<ops::Conv>("quadnet::quadratic_conv2d");
  return op.call(x, weight, S, stride, padding, dilation);
}

at::Tensor diagonal_quadratic_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op = ops::typed_op<ops::Conv>("quadnet::diagonal_quadratic_conv2d");
  return op.call(x, weight, alpha, stride, padding, dilation);
}

}  // namespace quadnet

TORCH_LIBRARY_FRAGMENT(quadnet, m) {
  const auto tags = quadnet::ops::op_tags();
  m.def("quadratic_features(Tensor h, Tensor S) -> Tensor", tags);
  m.def("_quadratic_features_backward(Tensor grad, Tensor h, Tensor S) -> (Tensor grad_h, Tensor grad_S)", tags);
  m.def(
      "quadratic_conv2d(Tensor x, Tensor weight, Tensor S, int[2] stride=1, int[2] padding=0, int[2] dilation=1) "
      "-> Tensor",
      tags);
  m.def(
      "diagonal_quadratic_conv2d(Tensor x, Tensor weight, Tensor alpha, int[2] stride=1, int[2] padding=0, "
      "int[2] dilation=1) -> Tensor",
      tags);
}
