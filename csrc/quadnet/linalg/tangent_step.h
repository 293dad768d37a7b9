#pragma once
// The tangent-space projected step (docs/glram.rst, "Tangent step"): the first-order form of the
// projected step, computed from a quadratic layer's gradients alone (no batch), and its pieces.
//
// The model at (W, S) is the set of canonical matrices A_i = W^T sym(S_i) W (W: rank × d). A
// tangent vector there is
//   ξ_i = W^T dS_i W + dW^T S_i W + W^T S_i dW,   dS_i symmetric, dW W^T = 0,
// the differential of A along (dW, dS) with dW's rows orthogonal to W's (the horizontal gauge).
// It has the shapes of the layer's parameters (dW like weight, dS like S).

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <string>

#include "glram.h"

namespace quadnet {
namespace linalg {

struct TangentVector {
  at::Tensor dW;  // (rank, d), rows orthogonal to the weight's rows; undefined: no vector
  at::Tensor dS;  // (n, rank, rank), symmetric
  bool defined() const { return dW.defined() && dS.defined(); }
};

// Empty when the tangent step applies at (weight, S); else why not: the weight's rows are
// numerically dependent (rank < r, e.g. zero), or Σ_i sym(S_i)² (in the frame where the weight's
// rows are orthonormal) is singular: its smallest eigenvalue ≤ min(1e4·eps², 1e-8) × its largest,
// eps of the parameters' dtype (rank-deficient S, e.g. zero). There the model is not a manifold
// of rank r and only the full projected step (projected_step, which needs the batch) is defined.
// weight (r, d), S (n, r, r).
std::string tangent_step_unavailable(const at::Tensor& weight, const at::Tensor& S);

// The step rule of GLRAMSGD's tangent projection (torch.optim.SGD's rule, in the tangent space).
struct TangentUpdateOptions {
  TangentUpdateOptions(double lr = 0.01) : lr_(lr) {}
  TORCH_ARG(double, lr);
  TORCH_ARG(double, weight_decay) = 0;  // d = P_T(G) + weight_decay · A (a tangent vector)
  TORCH_ARG(double, momentum) = 0;      // b ← momentum · b + (1 − dampening) · d (b = d at first)
  TORCH_ARG(double, dampening) = 0;
  TORCH_ARG(bool, nesterov) = false;  // step along d + momentum · b instead of b
  TORCH_ARG(GLRAMOptions, glram);     // the 2r-sized projection back onto the model
};

struct TangentUpdateResult {
  // Non-empty: the tangent step does not apply at (weight, S) (tangent_step_unavailable's reason),
  // and nothing else is set.
  std::string unavailable;
  GLRAMResult projection;         // the new weight (orthonormal rows) and S, the GLRAM trace
  TangentVector momentum_buffer;  // b at the new point; undefined when momentum = 0
  std::string unavailable_after;  // tangent_step_unavailable at the new point
};

// One tangent-space projected step of a quadratic layer from its parameters and gradients (no
// batch), docs/glram.rst "Tangent step":
//  1. the frame: W^T = Q R, (W, S) → (Q^T, R sym(S_i) R^T) — the same A_i, orthonormal rows;
//  2. P_T(G), the orthogonal projection onto the tangent space of the canonical gradient
//     G_i = X^T diag(g_i) X implied by weight_grad = 2 Σ_i sym(S_i) W G_i and S_grad = W G_i W^T:
//       dS_i = sym(S.grad_i),  dW^T = (I − W^T W) (weight.grad^T / 2) (Σ_j S_j²)^{-1}
//     (in the frame), then weight decay and momentum as above, momentum_buffer (a tangent vector
//     at (weight, S) as given; undefined: none yet) carried to the frame by projection;
//  3. the GLRAM projection of A − lr·ξ (ξ the step direction) back onto the model: A − lr·ξ lies
//     in span[W^T | dW^T], so this is GLRAM on n matrices of size ≤ 2r × 2r, warm-started from W
//     (exact for one output) and monotone from it: ||Π(A − lr ξ) − A||_F ≤ 2·lr·||ξ||_F;
//  4. the new buffer: b projected onto the tangent space at the new point.
// Every product with a d-sized factor is one of O(1) GEMMs of r × d × r (the Gram matrix of
// [W^T | weight.grad^T | buffer.dW^T] and the outputs); the rest is O(n·r³); float64 inside,
// results in weight's dtype. Agrees with projected_step(weight, S, X, G, lr) to O(lr²) (no
// momentum, no weight decay). Where the step does not apply returns only `unavailable` (so a
// caller learns it from the frame this computes anyway); throws on bad arguments or a non-finite
// result.
TangentUpdateResult tangent_update(const at::Tensor& weight, const at::Tensor& S, const at::Tensor& weight_grad,
                                   const at::Tensor& S_grad, const TangentVector& momentum_buffer,
                                   const TangentUpdateOptions& options);

// The plain tangent step, Π(A − lr·P_T(G)): tangent_update without momentum or weight decay.
// Throws, naming the reason, where the step does not apply. options.init must be unset (the warm
// start is `weight`).
GLRAMResult tangent_step(const at::Tensor& weight, const at::Tensor& S, const at::Tensor& weight_grad,
                         const at::Tensor& S_grad, double lr, const GLRAMOptions& options = {});

}  // namespace linalg
}  // namespace quadnet
