#include "glram.h"

#include <ATen/ATen.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "../ops/quadratic_form.h"
#include "../utils/checks.h"
#include "../utils/symmetric.h"

namespace quadnet {
namespace linalg {
namespace {

using utils::symmetric_part;

// Orthonormal basis (d × r) of the dominant r-dim left singular subspace of P (d × c):
// the top eigenvectors of P P^T, from whichever of the two Gram sides is smaller.
at::Tensor top_subspace(const at::Tensor& P, int64_t r) {
  if (P.size(1) < P.size(0)) {
    auto U = std::get<0>(at::linalg_svd(P, /*full_matrices=*/false));
    return U.narrow(1, 0, r);
  }
  auto eig = at::linalg_eigh(at::mm(P, P.t()));  // ascending eigenvalues
  return std::get<1>(eig).narrow(1, P.size(0) - r, r).flip({1});
}

// The projected cores V^T A_i V (n × r × r) from AV = A V (n × d × r). Written (A_i V)^T V so
// both products are 3-D × 2-D matmuls that fold into one GEMM (no broadcast copies of V).
at::Tensor project(const at::Tensor& AV, const at::Tensor& V) { return at::matmul(AV.transpose(1, 2), V); }

// Captured energy f(V) = Σ_i ||V^T A_i V||_F^2 for orthonormal V (d × r), given AV = A V.
double captured(const at::Tensor& AV, const at::Tensor& V) { return project(AV, V).square().sum().item<double>(); }

// Orthonormal basis of the row space of a warm-start weight (r × d), or undefined if the
// weight is numerically rank deficient (then the classic start is better).
at::Tensor orthonormal_rows(const at::Tensor& weight) {
  auto qr = at::linalg_qr(weight.t(), "reduced");
  auto diag = std::get<1>(qr).diagonal().abs();
  const double largest = diag.max().item<double>();
  if (!(largest > 0) || diag.min().item<double>() <= 1e-10 * largest) return at::Tensor();
  return std::get<0>(qr);
}

// GLRAM on float64 symmetric A (n, d, d); V0 (d × r) orthonormal or undefined.
// Returns V (d × r) and fills the objective trace.
GLRAMResult glram_float64(const at::Tensor& A, int64_t r, at::Tensor V, const GLRAMOptions& options) {
  const auto n = A.size(0), d = A.size(1);
  const double total = A.square().sum().item<double>();
  GLRAMResult result;
  std::vector<double> trace;

  at::Tensor AV;
  if (n == 1) {  // exact: Eckart–Young by |λ|
    auto eig = at::linalg_eigh(A[0]);
    auto order = std::get<0>(eig).abs().argsort(/*dim=*/0, /*descending=*/true).narrow(0, 0, r);
    V = std::get<1>(eig).index_select(1, order);
    AV = at::matmul(A, V);
    trace.push_back(std::max(0.0, total - captured(AV, V)));
    result.converged = true;
  } else {
    if (!V.defined()) {
      // Classic start: top eigenvectors of Σ_i A_i A_i = [A_1 … A_n][A_1 … A_n]^T.
      V = top_subspace(A.permute({1, 0, 2}).reshape({d, n * d}), r);
    }
    AV = at::matmul(A, V);
    double f = captured(AV, V);
    trace.push_back(std::max(0.0, total - f));
    for (int64_t it = 0; it < options.max_iter(); ++it) {
      // M = Σ_i A_i V V^T A_i = P P^T with P = [A_1 V … A_n V] (d × n·r).
      auto P = AV.permute({1, 0, 2}).reshape({d, n * r});
      auto V_new = top_subspace(P, r);
      auto AV_new = at::matmul(A, V_new);
      double f_new = captured(AV_new, V_new);
      if (f_new < f) {
        // Convexified step: M + c V V^T with c ≥ −λ_min(Σ A_i ⊗ A_i) cannot lower f.
        auto shifted = at::cat({P, V * std::sqrt(total)}, 1);
        V_new = top_subspace(shifted, r);
        AV_new = at::matmul(A, V_new);
        f_new = captured(AV_new, V_new);
      }
      if (!(f_new >= f)) {  // only rounding can get here: keep the better subspace
        result.converged = true;
        break;
      }
      V = V_new;
      AV = AV_new;
      ++result.iterations;
      const double gain = f_new - f;
      f = f_new;
      trace.push_back(std::max(0.0, total - f));
      if (gain <= options.tol() * total) {
        result.converged = true;
        break;
      }
    }
  }
  result.S = symmetric_part(project(AV, V));
  result.weight = V.t();
  result.objective = at::tensor(trace, at::kDouble);
  return result;
}

void check_finite(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::isfinite(t).all().item<bool>(), op, ": ", name, " contains NaN or Inf");
}

void check_options(const char* op, const GLRAMOptions& options) {
  TORCH_CHECK(options.tol() >= 0 && std::isfinite(options.tol()), op,
              ": tol must be a finite number >= 0, got ", options.tol());
  TORCH_CHECK(options.max_iter() >= 0, op, ": max_iter must be >= 0, got ", options.max_iter());
}

void check_rank(const char* op, int64_t rank, int64_t d) {
  TORCH_CHECK(rank >= 1 && rank <= d, op, ": rank must be in [1, ", d, "] (the matrix size), got ", rank);
}

GLRAMResult cast_result(GLRAMResult result, const at::Tensor& like) {
  result.weight = result.weight.to(like.options());
  result.S = result.S.to(like.options());
  return result;
}

}  // namespace

GLRAMResult glram(const at::Tensor& A, int64_t rank, const GLRAMOptions& options) {
  constexpr const char* op = "glram";
  TORCH_CHECK(A.dim() == 3 && A.size(1) == A.size(2), op,
              ": expected A of shape (n, d, d) (a stack of square matrices), got shape ", A.sizes());
  TORCH_CHECK(A.size(0) >= 1 && A.size(1) >= 1, op, ": A is empty, shape ", A.sizes());
  utils::check_same_floating(op, {{"A", A}});
  check_rank(op, rank, A.size(1));
  check_options(op, options);
  check_finite(op, "A", A);
  auto A64 = A.to(at::kDouble);
  const double scale = std::max(1.0, A64.abs().max().item<double>());
  const double sym_tol = A.scalar_type() == at::kDouble ? 1e-10 : 1e-4;
  const double asym = (A64 - A64.transpose(1, 2)).abs().max().item<double>();
  TORCH_CHECK(asym <= sym_tol * scale, op, ": A must be symmetric; max |A - A^T| = ", asym,
              " exceeds ", sym_tol, " x max(1, max |A|)");
  A64 = symmetric_part(A64);

  at::Tensor V;
  if (options.init().defined()) {
    const auto& init = options.init();
    TORCH_CHECK(init.dim() == 2 && init.size(0) == rank && init.size(1) == A.size(1), op,
                ": expected init of shape (rank=", rank, ", d=", A.size(1), "), got shape ", init.sizes());
    check_finite(op, "init", init);
    V = orthonormal_rows(init.to(A64.options()));
  }
  return cast_result(glram_float64(A64, rank, V, options), A);
}

GLRAMResult projected_step(const at::Tensor& weight, const at::Tensor& S, const at::Tensor& X,
                           const at::Tensor& G, double lr, const GLRAMOptions& options) {
  constexpr const char* op = "projected_step";
  TORCH_CHECK(weight.dim() == 2, op, ": expected weight of shape (rank, d), got shape ", weight.sizes());
  const auto r = weight.size(0), d = weight.size(1);
  TORCH_CHECK(S.dim() == 3 && S.size(1) == r && S.size(2) == r, op,
              ": expected S of shape (n, rank=", r, ", rank=", r, "), got shape ", S.sizes());
  const auto n = S.size(0);
  TORCH_CHECK(X.dim() == 2 && X.size(1) == d, op, ": expected X of shape (batch, d=", d,
              "), got shape ", X.sizes());
  TORCH_CHECK(G.dim() == 2 && G.size(0) == X.size(0) && G.size(1) == n, op,
              ": expected G of shape (batch=", X.size(0), ", n=", n, "), got shape ", G.sizes());
  utils::check_same_floating(op, {{"weight", weight}, {"S", S}, {"X", X}, {"G", G}});
  TORCH_CHECK(std::isfinite(lr), op, ": lr must be finite, got ", lr);
  TORCH_CHECK(!options.init().defined(), op, ": the warm start is `weight`; options.init must be unset");
  check_options(op, options);
  check_rank(op, r, d);
  for (const auto& t : {std::make_pair("weight", weight), std::make_pair("S", S),
                        std::make_pair("X", X), std::make_pair("G", G)}) {
    check_finite(op, t.first, t.second);
  }

  auto W64 = weight.to(at::kDouble), X64 = X.to(at::kDouble), G64 = G.to(at::kDouble);
  auto S64 = symmetric_part(S.to(at::kDouble));
  const auto k = r + X.size(0);
  if (k >= d) {  // the factored form brings nothing: materialise A
    auto A = canonical_form(W64, S64) - canonical_gradient(X64, G64) * lr;
    return cast_result(glram_float64(A, r, orthonormal_rows(W64), options), weight);
  }
  // A_i = Q (R C_i R^T) Q^T with [W^T | X^T] = Q R and C_i = blockdiag(S_i, −lr·diag(G[:, i])).
  auto qr = at::linalg_qr(at::cat({W64.t(), X64.t()}, 1), "reduced");
  const auto& Q = std::get<0>(qr);  // d × k
  const auto& R = std::get<1>(qr);  // k × k
  auto R1 = R.narrow(1, 0, r), R2 = R.narrow(1, r, k - r);
  auto cores = symmetric_part(at::matmul(at::matmul(R1, S64), R1.t()) - canonical_gradient(R2.t(), G64) * lr);
  // The warm start W^T lies in range(Q): its core coordinates are Q^T W^T.
  auto result = glram_float64(cores, r, orthonormal_rows(at::mm(W64, Q)), options);
  result.weight = at::mm(result.weight, Q.t());  // (V^T) Q^T
  return cast_result(result, weight);
}

}  // namespace linalg
}  // namespace quadnet
