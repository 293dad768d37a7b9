#pragma once
// GLRAM: projection of canonical matrices back onto the quadratic model (docs/glram.rst).

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <string>

namespace quadnet {
namespace linalg {

// How each GLRAM iteration finds the next subspace (docs/glram.rst, "Solvers"). Python and saved
// optimizer state name them by their enumerator: "rayleigh_ritz", "exact".
enum class GLRAMSolver {
  // The best r-dim subspace of span[V, M V] for the GLRAM iteration matrix M = Σ_i A_i V V^T A_i
  // (a 2r×2r eigen-solve and products with the factors of A_i); on large moves the block grows
  // (span[V, M V, M² V, …], up to 7r wide) until the step is the exact one to 1e-4 of its gain.
  // The same fixed points and a monotone objective, as "exact".
  rayleigh_ritz,
  // The full GLRAM iteration, V ← top-r eigenvectors of M (an m×m eigen-solve, m = d, or
  // k = rank + batch in projected_step).
  exact,
};
// One output (n = 1) is always solved exactly (eigen-decomposition: the global optimum).

// The solver's name: "rayleigh_ritz" or "exact".
const char* solver_name(GLRAMSolver solver);
// The solver named `name`; otherwise throws c10::ValueError (Python: ValueError)
// "<op>: solver must be "rayleigh_ritz" or "exact", got "<name>"".
GLRAMSolver parse_solver(const std::string& name, const char* op);

struct GLRAMOptions {
  // Stop when one iteration lowers the error by less than tol · Σ_i ||A_i||_F^2.
  TORCH_ARG(double, tol) = 1e-6;
  // Most alternating iterations after the initial subspace.
  TORCH_ARG(int64_t, max_iter) = 100;
  // Warm start: a (rank, d) weight whose row space starts the iteration (orthonormalised
  // internally). Undefined, or numerically rank deficient: the classic start, the top-rank
  // eigenvectors of Σ_i A_i A_i.
  TORCH_ARG(at::Tensor, init);
  // How each iteration finds the next subspace (GLRAMSolver).
  TORCH_ARG(GLRAMSolver, solver) = GLRAMSolver::rayleigh_ritz;
};

struct GLRAMResult {
  at::Tensor weight;     // (rank, d), orthonormal rows, dtype of the input
  at::Tensor S;          // (n, rank, rank), symmetric, S_i = W A_i W^T
  at::Tensor objective;  // float64 (iterations + 1): Σ_i ||A_i - W^T S_i W||_F^2 after the
                         // initial subspace and after every iteration; never increases
  int64_t iterations = 0;
  bool converged = false;  // tol reached (always true for the exact n = 1 solution)
};

// Finds W (rank × d, orthonormal rows) and symmetric S_i minimising Σ_i ||A_i − W^T S_i W||_F^2
// for symmetric A (n, d, d). n = 1 is solved exactly: the rank eigenvectors of A with the
// largest |λ|, S = diag(λ). For n > 1, alternating maximisation of Σ_i ||W A_i W^T||_F^2:
// W_t^T = top eigenvectors of Σ_i A_i W_{t-1}^T W_{t-1} A_i. If such a step would raise the
// error (possible for indefinite A_i), the step is redone on the convexified problem (shift
// c = Σ_i ||A_i||_F^2, a minorise-maximise step that provably does not), so the objective is
// monotone. No claim of a global optimum for n > 1. Eigen-solves run in float64.
GLRAMResult glram(const at::Tensor& A, int64_t rank, const GLRAMOptions& options = {});

// One projected SGD step in the canonical space (docs/glram.rst): the GLRAM projection of
//   A_i = W^T sym(S_i) W − lr · X^T diag(G[:, i]) X,
// warm-started from `weight`; the same result as glram() on the dense A_i with that warm start
// and options.solver, but no d×d matrix is formed unless k = rank + batch ≥ d (then the dense
// A_i are no larger than the factors). A weight of rank < r (e.g. zero) has no warm
// start: the iteration starts from the classic start instead. weight (r, d), S (n, r, r),
// X (B, d), G = ∂ℓ/∂y (B, n); options.init must be unset (the warm start is `weight`).
// How each solver is routed (span coordinates, QR, dense form) is described in docs/glram.rst.
GLRAMResult projected_step(const at::Tensor& weight, const at::Tensor& S, const at::Tensor& X, const at::Tensor& G,
                           double lr, const GLRAMOptions& options = {});

}  // namespace linalg
}  // namespace quadnet
