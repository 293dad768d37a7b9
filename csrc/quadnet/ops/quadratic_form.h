#pragma once
// The quadratic layer's ops (docs/quadratic_layer.rst): y_i = (W x)^T sym(S_i) (W x), its
// canonical form and the diagonal (squared-activation) model. Each is registered as torch.ops.quadnet.<name>
// (schemas in quadratic_form.cpp); the C++ functions below call through the dispatcher, so C++ callers
// get the same kernels, autograd and tracing behaviour as Python callers.

#include <ATen/core/Tensor.h>

#include <tuple>

namespace quadnet {

// x (..., d), weight (r, d), S (n, r, r)  ->  (..., n) with
//   y[..., i] = h^T sym(S_i) h,  h = weight @ x[...],  sym(S) = (S + S^T) / 2.
// Forward is one GEMM for all outputs (H · [S_1 … S_n]); the backward is its own op
// (_quadratic_form_backward) with no B×n×d×d or B×n×r×r temporaries. Double backward is exact.
// Kernels: CompositeExplicitAutograd (ATen ops, any device), Meta (shapes, symbolic sizes
// included), Autograd (the hand-written backward).
at::Tensor quadratic_form(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S);

// The forward with what the backward needs: x (B, d) -> (y (B, n), h (B, r), z (B, n, r)),
// z[b, i] = sym(S_i) h_b. Registered as torch.ops.quadnet._quadratic_form_forward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward(const at::Tensor& x, const at::Tensor& weight,
                                                                      const at::Tensor& S);

// The backward of y[b, i] = h_b^T z[b, i] given grad = ∂ℓ/∂y (B, n), h (B, r), z (B, n, r):
// returns (∂ℓ/∂h (B, r), ∂ℓ/∂S (n, r, r)); ∂ℓ/∂x and ∂ℓ/∂weight follow by one GEMM each.
// Registered as torch.ops.quadnet._quadratic_form_backward.
std::tuple<at::Tensor, at::Tensor> quadratic_form_backward(const at::Tensor& grad, const at::Tensor& h,
                                                           const at::Tensor& z);

// The older diagonal ("squared activation") model: x (..., d), weight (r, d),
// alpha (n, r)  ->  (..., n) with y = alpha @ (weight @ x)^2.
at::Tensor diagonal_quadratic_form(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha);

// Canonical gradient of a quadratic layer: X (B, d), G = ∂ℓ/∂y (B, n)  ->  (n, d, d) with
// entry i = X^T diag(G[:, i]) X = Σ_b G[b, i] x_b x_b^T (the gradient of ℓ w.r.t. A_i).
// Never forms a B×n×d×d tensor. Also the S-gradient of quadratic_form (with X = H).
at::Tensor canonical_gradient(const at::Tensor& X, const at::Tensor& G);

// Canonical matrices of the symmetric model: weight (r, d), S (n, r, r) -> A (n, d, d),
// A_i = W^T sym(S_i) W.
at::Tensor canonical_form(const at::Tensor& weight, const at::Tensor& S);

// Canonical matrices of the diagonal model: A_i = W^T diag(alpha_i) W, (n, d, d).
at::Tensor diagonal_canonical_form(const at::Tensor& weight, const at::Tensor& alpha);

}  // namespace quadnet
