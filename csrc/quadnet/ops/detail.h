#pragma once
// The kernels behind the op registrations (ops/register_ops.cpp), per dispatch key, and the
// dispatcher lookup the public functions use (not part of the public API: call the functions of
// quadratic_form.h and quadratic_conv.h, which go through the dispatcher).

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <c10/util/ArrayRef.h>

#include <initializer_list>
#include <tuple>

namespace quadnet {
namespace ops {

// An op's typed handle, looked up by name (each caller keeps it in a function-local static).
template <class Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Whether an Autograd kernel must record its ATen composition instead of its own autograd node:
// a torch.func transform is active (functorch refuses C++ autograd nodes; the ATen ops have its
// batching rules and forward derivatives), or an input carries a forward-mode tangent
// (torch.autograd.forward_ad: the node has no forward derivative).
bool needs_composite_autograd(std::initializer_list<at::Tensor> inputs);

// The pattern of the helper ops' Autograd kernels (_quadratic_form_forward, the _backward ops):
// record the ATen composition when called with inputs that need gradients under grad mode
// (double backward, direct calls) or when needs_composite_autograd; otherwise redispatch below
// autograd (quadratic_form's own node has called them and owns the backward).
bool records_composition(std::initializer_list<at::Tensor> inputs);

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
at::Tensor diagonal_quadratic_form_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha);
at::Tensor canonical_gradient_composite(const at::Tensor& X, const at::Tensor& G);
at::Tensor canonical_form_composite(const at::Tensor& weight, const at::Tensor& S);
at::Tensor diagonal_canonical_form_composite(const at::Tensor& weight, const at::Tensor& alpha);

at::Tensor quadratic_features_composite(const at::Tensor& h, const at::Tensor& S);
at::Tensor quadratic_features_cpu(const at::Tensor& h, const at::Tensor& S);
std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_cpu(const at::Tensor& grad, const at::Tensor& h,
                                                                   const at::Tensor& S);
at::Tensor quadratic_features_meta(const at::Tensor& h, const at::Tensor& S);
at::Tensor quadratic_features_autograd(const at::Tensor& h, const at::Tensor& S);
std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_composite(const at::Tensor& grad, const at::Tensor& h,
                                                                         const at::Tensor& S);
std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_meta(const at::Tensor& grad, const at::Tensor& h,
                                                                    const at::Tensor& S);
std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_autograd(const at::Tensor& grad, const at::Tensor& h,
                                                                        const at::Tensor& S);
at::Tensor quadratic_conv2d_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S,
                                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);
at::Tensor diagonal_quadratic_conv2d_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                                               at::IntArrayRef stride, at::IntArrayRef padding,
                                               at::IntArrayRef dilation);

// Autocast kernels (autocast.cpp), instantiated for CPU and CUDA: the op in float32, the result
// in its first input's dtype.
template <c10::DeviceType device>
at::Tensor quadratic_form_autocast(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S);
template <c10::DeviceType device>
at::Tensor diagonal_quadratic_form_autocast(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha);
template <c10::DeviceType device>
at::Tensor quadratic_features_autocast(const at::Tensor& h, const at::Tensor& S);
template <c10::DeviceType device>
at::Tensor quadratic_conv2d_autocast(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);
template <c10::DeviceType device>
at::Tensor diagonal_quadratic_conv2d_autocast(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation);
template <c10::DeviceType device>
at::Tensor canonical_gradient_autocast(const at::Tensor& X, const at::Tensor& G);
template <c10::DeviceType device>
at::Tensor canonical_form_autocast(const at::Tensor& weight, const at::Tensor& S);
template <c10::DeviceType device>
at::Tensor diagonal_canonical_form_autocast(const at::Tensor& weight, const at::Tensor& alpha);
}  // namespace ops
}  // namespace quadnet
