#pragma once
// The convolutional quadratic layer's ops (docs/quadratic_conv.rst): per output pixel p,
//   y_i(p) = h(p)^T sym(S_i) h(p),   h = conv2d(x, weight)  (rank channels),
// i.e. the dense layer's quadratic form applied to every rank-r pixel of a convolution's
// output. Registered as torch.ops.quadnet.<name> (schemas in quadratic_conv.cpp); the C++ functions
// below call through the dispatcher (same kernels, autograd and tracing as from Python).

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <tuple>

namespace quadnet {

// h (..., r), S (n, r, r)  ->  (..., n) with y[..., i] = h^T sym(S_i) h: the quadratic form of
// every feature vector, from the upper triangle of h h^T (r(r+1)/2 products per vector) and
// one GEMM with the matching entries of all S_i. Backward is its own op
// (_quadratic_features_backward); double backward is exact. Kernels: CompositeExplicitAutograd,
// Meta, Autograd (as quadratic_form).
at::Tensor quadratic_features(const at::Tensor& h, const at::Tensor& S);

// The backward of quadratic_features given grad = ∂ℓ/∂y (B, n), h (B, r), S (n, r, r):
// (∂ℓ/∂h (B, r), ∂ℓ/∂S (n, r, r) = Σ_b grad[b, i] h_b h_b^T). Registered as
// torch.ops.quadnet._quadratic_features_backward.
std::tuple<at::Tensor, at::Tensor> quadratic_features_backward(const at::Tensor& grad, const at::Tensor& h,
                                                               const at::Tensor& S);

// x (N, C, H, W) or (C, H, W), weight (r, C, kh, kw), S (n, r, r)  ->  (N, n, H', W') (or
// (n, H', W')): h = conv2d(x, weight, stride, padding, dilation), then quadratic_features over
// h's channels at every pixel. No patch matrix: the only per-pixel temporaries are h (r
// values) and its r(r+1)/2 products. The output is channels-last in memory (its strides),
// which every ATen op accepts. CompositeImplicitAutograd: autograd, Meta and tracing come from
// conv2d and quadratic_features.
at::Tensor quadratic_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S,
                            at::IntArrayRef stride = 1, at::IntArrayRef padding = 0, at::IntArrayRef dilation = 1);

// The diagonal ("squared activation") convolutional model: y_i(p) = Σ_j alpha_ij h_j(p)^2 with
// h = conv2d(x, weight); x as above, weight (m, C, kh, kw), alpha (n, m).
at::Tensor diagonal_quadratic_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                                     at::IntArrayRef stride = 1, at::IntArrayRef padding = 0,
                                     at::IntArrayRef dilation = 1);

}  // namespace quadnet
