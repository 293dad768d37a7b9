#pragma once
// The kernels behind the op registrations (ops/register_ops.cpp), per dispatch key (not part of
// the public API: call the functions of quadratic_form.h, which go through the dispatcher).

#include <ATen/core/Tensor.h>

#include <tuple>

namespace quadnet {
namespace ops {
at::Tensor quadratic_form_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S);
at::Tensor quadratic_form_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S);
at::Tensor quadratic_form_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S);
std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward_composite(const at::Tensor& x,
                                                                                const at::Tensor& weight,
                                                                                const at::Tensor& S);
std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward_autograd(const at::Tensor& x,
                                                                               const at::Tensor& weight,
                                                                               const at::Tensor& S);
std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward_meta(const at::Tensor& x,
                                                                           const at::Tensor& weight,
                                                                           const at::Tensor& S);
std::tuple<at::Tensor, at::Tensor> quadratic_form_backward_composite(const at::Tensor& grad, const at::Tensor& h,
                                                                     const at::Tensor& z);
std::tuple<at::Tensor, at::Tensor> quadratic_form_backward_meta(const at::Tensor& grad, const at::Tensor& h,
                                                                const at::Tensor& z);
std::tuple<at::Tensor, at::Tensor> quadratic_form_backward_autograd(const at::Tensor& grad, const at::Tensor& h,
                                                                    const at::Tensor& z);
at::Tensor diagonal_quadratic_form_composite(const at::Tensor& x, const at::Tensor& weight,
                                             const at::Tensor& alpha);
at::Tensor canonical_gradient_composite(const at::Tensor& X, const at::Tensor& G);
at::Tensor canonical_form_composite(const at::Tensor& weight, const at::Tensor& S);
at::Tensor diagonal_canonical_form_composite(const at::Tensor& weight, const at::Tensor& alpha);
}  // namespace ops
}  // namespace quadnet
