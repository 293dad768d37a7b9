// Meta kernels of the ops with kernels of their own: the argument checks, then outputs of the
// right shapes, dtypes and devices and no data (FakeTensor: torch.compile, torch.export;
// symbolic sizes included). The compositions need none: their ATen ops have theirs.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../utils/shapes.h"
#include "detail.h"

namespace quadnet {
namespace ops {
namespace {

using utils::output_shape;

at::Tensor quadratic_form_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  check_quadratic_args(x, weight, S, "quadratic_form", "S", 3);
  return x.new_empty_symint(output_shape(x, S.sym_size(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward_meta(const at::Tensor& x,
                                                                           const at::Tensor& weight,
                                                                           const at::Tensor& S) {
  check_form_forward_args(x, weight, S);
  const auto B = x.sym_size(0), n = S.sym_size(0), r = S.sym_size(1);
  return {x.new_empty_symint({B, n}), x.new_empty_symint({B, r}), x.new_empty_symint({B, n, r})};
}

std::tuple<at::Tensor, at::Tensor> quadratic_form_backward_meta(const at::Tensor& grad, const at::Tensor& h,
                                                                const at::Tensor& z) {
  check_form_backward_args(grad, h, z);
  const auto n = z.sym_size(1), r = z.sym_size(2);
  return {h.new_empty_symint(h.sym_sizes()), h.new_empty_symint({n, r, r})};
}

at::Tensor quadratic_features_meta(const at::Tensor& h, const at::Tensor& S) {
  check_features_args(h, S);
  return h.new_empty_symint(output_shape(h, S.sym_size(0)));
}

std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_meta(const at::Tensor& grad, const at::Tensor& h,
                                                                    const at::Tensor& S) {
  check_features_backward_args(grad, h, S);
  return {h.new_empty_symint(h.sym_sizes()), S.new_empty_symint(S.sym_sizes())};
}

}  // namespace
}  // namespace ops
}  // namespace quadnet

TORCH_LIBRARY_IMPL(quadnet, Meta, m) {
  m.impl("quadratic_form", TORCH_FN(quadnet::ops::quadratic_form_meta));
  m.impl("_quadratic_form_forward", TORCH_FN(quadnet::ops::quadratic_form_forward_meta));
  m.impl("_quadratic_form_backward", TORCH_FN(quadnet::ops::quadratic_form_backward_meta));
  m.impl("quadratic_features", TORCH_FN(quadnet::ops::quadratic_features_meta));
  m.impl("_quadratic_features_backward", TORCH_FN(quadnet::ops::quadratic_features_backward_meta));
}
