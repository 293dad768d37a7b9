#include "glram.h"

#include <ATen/ATen.h>

#include <algorithm>
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

// The eigenvectors of the r largest eigenvalues of a symmetric M (m × m), largest first.
at::Tensor top_eigenvectors(const at::Tensor& M, int64_t r) {
  auto eig = at::linalg_eigh(M);  // ascending eigenvalues
  return std::get<1>(eig).narrow(1, M.size(0) - r, r).flip({1});
}

// Orthonormal basis (d × r) of the dominant r-dim left singular subspace of P (d × c):
// the top eigenvectors of P P^T, from whichever of the two Gram sides is smaller.
at::Tensor top_subspace(const at::Tensor& P, int64_t r) {
  if (P.size(1) < P.size(0)) {
    auto U = std::get<0>(at::linalg_svd(P, /*full_matrices=*/false));
    return U.narrow(1, 0, r);
  }
  return top_eigenvectors(at::mm(P, P.t()), r);
}

// ||t||_F^2 without a temporary of t's size.
double squared_norm(const at::Tensor& t) {
  auto flat = t.reshape(-1);
  return at::dot(flat, flat).item<double>();
}

// The projected cores V^T A_i V (n × r × r) from AV = A V (n × d × r). Written (A_i V)^T V so
// both products are 3-D × 2-D matmuls that fold into one GEMM (no broadcast copies of V).
at::Tensor project(const at::Tensor& AV, const at::Tensor& V) { return at::matmul(AV.transpose(1, 2), V); }

// Orthonormal basis of the row space of a warm-start weight (r × d), or undefined if the
// weight is numerically rank deficient (then the classic start is better).
at::Tensor orthonormal_rows(const at::Tensor& weight) {
  auto qr = at::linalg_qr(weight.t(), "reduced");
  auto diag = std::get<1>(qr).diagonal().abs();
  const double largest = diag.max().item<double>();
  if (!(largest > 0) || diag.min().item<double>() <= 1e-10 * largest) return at::Tensor();
  return std::get<0>(qr);
}

// GLRAM's alternating loop works on any representation of the matrices that offers, for an
// orthonormal V (m × r), a `State at(V)` and:
//   total()                  Σ_i ||A_i||_F^2
//   captured(state)          f(V) = Σ_i ||V^T A_i V||_F^2
//   top(state, r, shift)     top-r eigenvectors of Σ_i A_i V V^T A_i + shift · V V^T
//   projected(state)         V^T A_i V (n × r × r)
// Two representations: the explicit matrices (DenseMatrices) and the factored cores of a
// projected step (FactoredCores), which never forms an n·k² tensor.

// Explicit symmetric A (n, m, m).
class DenseMatrices {
 public:
  struct State {
    at::Tensor V, AV;  // AV = A V (n × m × r), reused between iterations
  };
  explicit DenseMatrices(at::Tensor A) : A_(std::move(A)), total_(squared_norm(A_)) {}

  double total() const { return total_; }
  State at(const at::Tensor& V) const { return {V, at::matmul(A_, V)}; }
  double captured(const State& s) const { return project(s.AV, s.V).square().sum().item<double>(); }
  at::Tensor projected(const State& s) const { return project(s.AV, s.V); }
  at::Tensor top(const State& s, int64_t r, double shift) const {
    // Σ_i A_i V V^T A_i = P P^T with P = [A_1 V … A_n V] (m × n·r).
    const auto n = A_.size(0), m = A_.size(1);
    auto P = s.AV.permute({1, 0, 2}).reshape({m, n * r});
    if (shift > 0) P = at::cat({P, s.V * std::sqrt(shift)}, 1);
    return top_subspace(P, r);
  }
  // Classic start: top eigenvectors of Σ_i A_i A_i = [A_1 … A_n][A_1 … A_n]^T.
  at::Tensor classic_start(int64_t r) const {
    const auto n = A_.size(0), m = A_.size(1);
    return top_subspace(A_.permute({1, 0, 2}).reshape({m, n * m}), r);
  }

 private:
  at::Tensor A_;
  double total_;
};

// The cores of a projected step, K_i = R1 S_i R1^T − lr · R2 diag(G[:, i]) R2^T (k × k,
// R = [R1 | R2] with [W^T | X^T] = Q R), kept as factors. With P1 = R1^T V and P2 = R2^T V every
// quantity GLRAM needs costs O(n·r²·(r + B) + k³): K_i V = R Z_i with
// Z_i = [S_i P1; −lr·diag(g_i) P2], so Σ_i K_i V V^T K_i = R (Σ_i Z_i Z_i^T) R^T, and
// V^T K_i V = P1^T S_i P1 − lr · P2^T diag(g_i) P2. The n blocks are laid side by side,
// Y = [S_1 P1 … S_n P1] (r × n·r) and E = [diag(g_1) P2 … diag(g_n) P2] (B × n·r), so every
// sum over i is one GEMM.
class FactoredCores {
 public:
  struct State {
    at::Tensor V, P2, Y, E, cores;  // cores = V^T K_i V (n × r × r)
  };
  // T = R^T R, the Gram matrix of [W^T | X^T].
  FactoredCores(at::Tensor R, const at::Tensor& T, at::Tensor S, at::Tensor G, double lr)
      : R_(std::move(R)),
        S_(S.contiguous()),
        G_(std::move(G)),
        lr_(lr),
        n_(S_.size(0)),
        r_(S_.size(1)),
        R1_(R_.narrow(1, 0, r_)),
        R2_(R_.narrow(1, r_, R_.size(1) - r_)) {
    const auto B = G_.size(0);
    auto T11 = T.narrow(0, 0, r_).narrow(1, 0, r_), T12 = T.narrow(0, 0, r_).narrow(1, r_, B),
         T22 = T.narrow(0, r_, B).narrow(1, r_, B);
    GG_ = at::mm(G_, G_.t());  // B × B
    // ||K_i||^2 = tr(S_i T11 S_i T11) − 2 lr Σ_b g_ib t_b^T S_i t_b + lr² g_i^T (T22∘T22) g_i,
    // t_b = T12[:, b].
    auto TS = at::matmul(T11, S_);
    auto first = (TS * TS.transpose(1, 2)).sum({1, 2});
    auto cross = (at::mm(S_.view({n_ * r_, r_}), T12).view({n_, r_, B}) * T12).sum(1);  // (n, B): t_b^T S_i t_b
    auto middle = (cross * G_.t()).sum(1);
    auto last = (at::mm(T22.square(), G_) * G_).sum(0);
    total_ = (first - 2 * lr_ * middle + lr_ * lr_ * last).sum().item<double>();
  }

  double total() const { return total_; }
  State at(const at::Tensor& V) const {
    const auto B = G_.size(0);
    auto P1 = at::mm(R1_.t(), V), P2 = at::mm(R2_.t(), V);
    auto SP1 = at::mm(S_.view({n_ * r_, r_}), P1).view({n_, r_, r_});  // S_i P1
    auto Y = SP1.permute({1, 0, 2}).reshape({r_, n_ * r_});
    auto E = (G_.unsqueeze(2) * P2.unsqueeze(1)).view({B, n_ * r_});
    // (r × n·r) → (n, r, r): block i is P1^T S_i P1 − lr P2^T diag(g_i) P2.
    auto cores = (at::mm(P1.t(), Y) - at::mm(P2.t(), E) * lr_).view({r_, n_, r_}).permute({1, 0, 2});
    return {V, P2, Y, E, symmetric_part(cores)};
  }
  double captured(const State& s) const { return s.cores.square().sum().item<double>(); }
  at::Tensor projected(const State& s) const { return s.cores; }
  at::Tensor top(const State& s, int64_t r, double shift) const {
    // N = Σ_i Z_i Z_i^T in blocks: N11 = Y Y^T, N12 = −lr Y E^T, N22 = lr² E E^T = lr² (P2 P2^T)∘(G G^T).
    auto N11 = at::mm(s.Y, s.Y.t());
    auto N12 = at::mm(s.Y, s.E.t()) * (-lr_);
    auto N22 = at::mm(s.P2, s.P2.t()) * GG_ * (lr_ * lr_);
    auto N = at::cat({at::cat({N11, N12}, 1), at::cat({N12.t(), N22}, 1)}, 0);
    auto M = at::mm(at::mm(R_, N), R_.t());
    if (shift > 0) M = M + at::mm(s.V, s.V.t()) * shift;
    return top_eigenvectors(symmetric_part(M), r);
  }

 private:
  at::Tensor R_, S_, G_;
  double lr_;
  int64_t n_, r_;
  at::Tensor R1_, R2_;  // the columns of R for W^T and for X^T
  at::Tensor GG_;       // G G^T (B × B)
  double total_ = 0;
};

// [W^T | X^T] = Q R (d × k, R k × k upper triangular) for the factored step. Q is kept
// implicit when possible: CholeskyQR (R from the Gram C^T C, Q = C R^{-1}) is one GEMM, ~5×
// cheaper here than Householder QR with its explicit Q, and exact enough when Q comes out
// orthonormal to kMaxBasisDrift — cond(C)² · eps, ~1e-12 on real batches (cond ≈ 40–100 for
// standardised Fashion-MNIST). Near-duplicate samples or a rank-deficient C fall back to
// Householder QR, which keeps an explicit Q.
struct CoreBasis {
  at::Tensor R;
  at::Tensor T;     // the Gram matrix C^T C = R^T R
  at::Tensor Q;     // explicit (Householder) or undefined
  at::Tensor Rinv;  // R^{-1} when Q is implicit
  // CholeskyQR succeeded: no near-dependent columns (cond(C) ≲ 1e3).
  bool well_conditioned() const { return !Q.defined(); }
  // Q V for core coordinates V (k × r).
  at::Tensor expand(const at::Tensor& C, const at::Tensor& V) const {
    return Q.defined() ? at::mm(Q, V) : at::mm(C, at::mm(Rinv, V));
  }
};

constexpr double kMaxBasisDrift = 1e-10;  // max |Q^T Q − I| accepted from CholeskyQR

CoreBasis core_basis(const at::Tensor& C) {
  auto T = at::mm(C.t(), C);
  auto chol = at::linalg_cholesky_ex(T, /*upper=*/true);
  if (std::get<1>(chol).item<int64_t>() == 0) {
    const auto& R = std::get<0>(chol);
    auto eye = at::eye(C.size(1), C.options());
    auto Rinv = at::linalg_solve_triangular(R, eye, /*upper=*/true);
    const double drift = (at::mm(at::mm(Rinv.t(), T), Rinv) - eye).abs().max().item<double>();
    if (drift <= kMaxBasisDrift) return {R, T, at::Tensor(), Rinv};
  }
  auto qr = at::linalg_qr(C, "reduced");
  return {std::get<1>(qr), T, std::get<0>(qr), at::Tensor()};
}

// The alternating loop from an orthonormal start V (m × r).
// Host synchronisation: the monotonicity guard and the stopping rule read each objective value
// on the host (`captured`, one .item() per evaluation: 1–2 per iteration, a device sync on CUDA).
// An iteration count decided by convergence needs them; everything else stays on the device.
template <class Problem>
GLRAMResult alternate(const Problem& problem, at::Tensor V, const GLRAMOptions& options) {
  const auto r = V.size(1);
  const double total = problem.total();
  GLRAMResult result;
  std::vector<double> trace;
  auto state = problem.at(V);
  double f = problem.captured(state);
  trace.push_back(std::max(0.0, total - f));
  for (int64_t it = 0; it < options.max_iter(); ++it) {
    auto next = problem.at(problem.top(state, r, 0.0));
    double f_new = problem.captured(next);
    if (f_new < f) {
      // Convexified step: M + c V V^T with c ≥ −λ_min(Σ A_i ⊗ A_i) cannot lower f.
      next = problem.at(problem.top(state, r, total));
      f_new = problem.captured(next);
    }
    if (!(f_new >= f)) {  // only rounding can get here: keep the better subspace
      result.converged = true;
      break;
    }
    state = next;
    ++result.iterations;
    const double gain = f_new - f;
    f = f_new;
    trace.push_back(std::max(0.0, total - f));
    if (gain <= options.tol() * total) {
      result.converged = true;
      break;
    }
  }
  result.S = symmetric_part(problem.projected(state));
  result.weight = state.V.t();
  result.objective = at::tensor(trace, at::kDouble);
  return result;
}

// GLRAM on float64 symmetric A (n, d, d); V0 (d × r) orthonormal or undefined (classic start).
GLRAMResult glram_float64(const at::Tensor& A, int64_t r, at::Tensor V, const GLRAMOptions& options) {
  if (A.size(0) == 1) {  // exact: Eckart–Young by |λ|
    const double total = squared_norm(A);
    auto eig = at::linalg_eigh(A[0]);
    auto order = std::get<0>(eig).abs().argsort(/*dim=*/0, /*descending=*/true).narrow(0, 0, r);
    V = std::get<1>(eig).index_select(1, order);
    auto S = project(at::matmul(A, V), V);
    GLRAMResult result;
    result.converged = true;
    result.S = symmetric_part(S);
    result.weight = V.t();
    result.objective = at::tensor({std::max(0.0, total - S.square().sum().item<double>())}, at::kDouble);
    return result;
  }
  DenseMatrices problem(A);
  return alternate(problem, V.defined() ? V : problem.classic_start(r), options);
}

void check_finite(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(utils::all_finite(t), op, ": ", name, " contains NaN or Inf");
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
  // Beyond the float64 copy of a float32 A, one temporary of A's size (A − A^T, reused for the
  // symmetric part): at n·d² sizes, checks with more temporaries cost more than GLRAM itself.
  auto A64 = A.to(at::kDouble);
  const double hi = A64.max().item<double>(), lo = A64.min().item<double>();
  TORCH_CHECK(std::isfinite(hi) && std::isfinite(lo), op, ": A contains NaN or Inf");
  const double scale = std::max({1.0, hi, -lo});
  const double sym_tol = A.scalar_type() == at::kDouble ? 1e-10 : 1e-4;
  auto skew = A64 - A64.transpose(1, 2);
  const double asym = std::max(skew.max().item<double>(), -skew.min().item<double>());
  TORCH_CHECK(asym <= sym_tol * scale, op, ": A must be symmetric; max |A - A^T| = ", asym,
              " exceeds ", sym_tol, " x max(1, max |A|)");
  A64 = skew.mul_(-0.5).add_(A64);  // A − (A − A^T)/2, the symmetric part

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
  auto C = at::cat({W64.t(), X64.t()}, 1);  // d × k
  const auto basis = core_basis(C);
  const auto& R = basis.R;
  auto R1 = R.narrow(1, 0, r), R2 = R.narrow(1, r, k - r);
  // The warm start W^T = Q R1: its core coordinates are R1.
  auto V0 = orthonormal_rows(R1.t());
  GLRAMResult result;
  if (n > 1 && V0.defined() && basis.well_conditioned()) {
    result = alternate(FactoredCores(R, basis.T, S64, G64, lr), V0, options);
  } else {
    // The k × k cores themselves: for the exact single output, the classic start, and nearly
    // dependent samples, where the factored Σ_i ||K_i||^2 (a sum over sample pairs) could cancel.
    auto cores = symmetric_part(at::matmul(at::matmul(R1, S64), R1.t()) - canonical_gradient(R2.t(), G64) * lr);
    result = glram_float64(cores, r, V0, options);
  }
  result.weight = basis.expand(C, result.weight.t()).t();  // (Q V)^T
  return cast_result(result, weight);
}

}  // namespace linalg
}  // namespace quadnet
