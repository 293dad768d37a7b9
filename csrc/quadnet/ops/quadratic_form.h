#pragma once
// The quadratic layer's core op (DESIGN §1): y_i = (W x)^T sym(S_i) (W x).

#include <ATen/core/Tensor.h>

namespace quadnet {

// x (..., d), weight (r, d), S (n, r, r)  ->  (..., n) with
//   y[..., i] = h^T sym(S_i) h,  h = weight @ x[...],  sym(S) = (S + S^T) / 2.
// Forward is one GEMM for all outputs (H · [S_1 … S_n]); backward is hand written
// (no B×n×d×d or B×n×r×r temporaries). Double backward is supported: when the graph
// of the backward is requested, the gradients are recomputed from the inputs with
// differentiable ATen ops.
// Registered as torch.ops.quadnet.quadratic_form.
at::Tensor quadratic_form(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S);

// The older diagonal ("squared activation") model: x (..., d), weight (r, d),
// alpha (n, r)  ->  (..., n) with y = alpha @ (weight @ x)^2.
// Registered as torch.ops.quadnet.diagonal_quadratic_form.
at::Tensor diagonal_quadratic_form(const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& alpha);

// Canonical gradient of a quadratic layer: X (B, d), G = ∂ℓ/∂y (B, n)  ->  (n, d, d) with
// entry i = X^T diag(G[:, i]) X = Σ_b G[b, i] x_b x_b^T (the gradient of ℓ w.r.t. A_i).
// Never forms a B×n×d×d tensor. Also the S-gradient of quadratic_form (with X = H).
at::Tensor canonical_gradient(const at::Tensor& X, const at::Tensor& G);

// Canonical matrices of the symmetric model: weight (r, d), S (n, r, r) -> A (n, d, d),
// A_i = W^T sym(S_i) W. Registered as torch.ops.quadnet.canonical_form.
at::Tensor canonical_form(const at::Tensor& weight, const at::Tensor& S);

// Canonical matrices of the diagonal model: A_i = W^T diag(alpha_i) W, (n, d, d).
// Registered as torch.ops.quadnet.diagonal_canonical_form.
at::Tensor diagonal_canonical_form(const at::Tensor& weight, const at::Tensor& alpha);

}  // namespace quadnet
