#include "glram.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
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

constexpr double kMaxBasisDrift = 1e-10;  // max |Q^T Q − I| accepted from CholeskyQR

// A basis's Gram matrix (Q^T Q, or Q Q^T for a basis as rows) is the identity to kMaxBasisDrift.
bool near_identity(const at::Tensor& gram) {
  const double drift = (gram - at::eye(gram.size(0), gram.options())).abs().max().item<double>();
  return drift <= kMaxBasisDrift;
}

// CholeskyQR of C (m × c): (R, R^{-1}) with C = Q R, Q = C R^{-1}, if Q comes out orthonormal to
// kMaxBasisDrift (cond(C) ≲ 1e3); else undefined tensors. T = C^T C.
std::pair<at::Tensor, at::Tensor> cholesky_qr(const at::Tensor& T) {
  auto chol = at::linalg_cholesky_ex(T, /*upper=*/true);
  if (std::get<1>(chol).item<int64_t>() != 0) return {};
  const auto& R = std::get<0>(chol);
  auto Rinv = at::linalg_solve_triangular(R, at::eye(T.size(0), T.options()), /*upper=*/true);
  if (!near_identity(at::mm(at::mm(Rinv.t(), T), Rinv))) return {};
  return {R, Rinv};
}

// Orthonormal basis of the row space of a warm-start weight (r × d), or undefined if the
// weight is numerically rank deficient (then the classic start is better). CholeskyQR (one
// r×r Gram matrix) when the rows are well conditioned, as a trained weight's are; else
// Householder QR. The CholeskyQR basis is checked itself (d·r² flops): cholesky_qr's check is
// against the rounded Gram matrix, which no longer holds a direction the rows span only by
// ~1e-8 of their size (nearly dependent rows), so it can pass on a basis that misses it.
at::Tensor orthonormal_rows(const at::Tensor& weight) {
  if (auto fast = cholesky_qr(at::mm(weight, weight.t())); fast.second.defined()) {
    auto Q = at::mm(weight.t(), fast.second);
    if (near_identity(at::mm(Q.t(), Q))) return Q;
  }
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
  // Rayleigh–Ritz interface (see rayleigh_ritz): Image = A U (n × m × u).
  using Image = at::Tensor;
  Image image(const at::Tensor& U) const { return at::matmul(A_, U); }
  // U^T A_i V (n × u × v) from the image of V.
  at::Tensor cross(const at::Tensor& U, const Image& /*AU*/, const Image& AV) const {
    return project(AV, U).transpose(1, 2);
  }
  // Σ_i A_i V K_i (m × w) for K (n × v × w).
  at::Tensor apply(const Image& AV, const at::Tensor& K) const { return at::matmul(AV, K).sum(0); }
  // The image of U Y from those of U's column blocks and Y's matching row blocks.
  static Image combine(const std::vector<Image>& images, const std::vector<at::Tensor>& Y) {
    auto out = at::matmul(images[0], Y[0]);
    for (size_t j = 1; j < images.size(); ++j) out += at::matmul(images[j], Y[j]);
    return out;
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

// Σ_i ||A_i||_F^2 for A_i = W^T S_i W − lr X^T diag(G[:, i]) X from the Gram blocks
// T11 = W W^T, T12 = W X^T, T22 = X X^T:
//   ||A_i||^2 = tr(S_i T11 S_i T11) − 2 lr Σ_b g_ib t_b^T S_i t_b + lr² g_i^T (T22∘T22) g_i,
// t_b = T12[:, b]. The same formula holds for the k×k cores of the exact projected step.
// Also returns a bound on the size of its terms, Σ_i ||W^T S_i W||² + 2 lr Σ_ib |g_ib t_b^T S_i t_b|
// + lr² Σ_i (Σ_b |g_ib| ||x_b||²)²: the rounding error of the sum is ~eps · k times that, large
// against the sum only when terms cancel (nearly collinear samples weighted with opposite signs).
std::pair<double, double> factored_total(const at::Tensor& T11, const at::Tensor& T12, const at::Tensor& T22,
                                         const at::Tensor& S, const at::Tensor& G, double lr) {
  const auto n = S.size(0), r = S.size(1), B = G.size(0);
  auto TS = at::matmul(T11, S);
  auto first = (TS * TS.transpose(1, 2)).sum();
  // (n, B): t_b^T S_i t_b = <S_i, t_b t_b^T>, one GEMM against the samples' outer products.
  auto cross = at::mm(S.reshape({n, r * r}), (T12.t().unsqueeze(2) * T12.t().unsqueeze(1)).view({B, r * r}).t());
  auto middle = (cross * G.t()).sum();
  auto last = (at::mm(T22.square(), G) * G).sum();
  auto total = first - 2 * lr * middle + lr * lr * last;
  auto spread = at::mv(G.abs().t(), T22.diagonal());  // (n): Σ_b |g_ib| ||x_b||²
  auto magnitude = first + 2 * lr * (cross * G.t()).abs().sum() + lr * lr * spread.square().sum();
  return {total.item<double>(), magnitude.item<double>()};
}

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
    GG_ = at::mm(G_, G_.t());  // B × B
    total_ = factored_total(T.narrow(0, 0, r_).narrow(1, 0, r_), T.narrow(0, 0, r_).narrow(1, r_, B),
                            T.narrow(0, r_, B).narrow(1, r_, B), S_, G_, lr_).first;
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

// A_i = W^T S_i W − lr · X^T diag(G[:, i]) X (d × d) kept as its factors, for the
// Rayleigh–Ritz solver of a projected step: applying all n matrices to a block U (d × u)
// costs two GEMMs with the d-sized factors, W U and X U, and O(n·u·(r + B)·u) on small
// matrices; nothing of size d × k or k × k is formed except the B×B Gram matrix of X (for
// Σ_i ||A_i||_F^2, once). The sample terms Σ_b g_ib (XU)_b (XV)_b^T (all i) are one GEMM,
// either against the B × n·v copies of XV weighted by each output's g_i or against the
// B × u·v per-sample outer products: the same flops, and whichever is smaller to form
// (weighted copies for few outputs, n ≤ v; outer products for many: measured 25–45% faster
// per projection at n = 100, r = 10, and ~10% slower than the copies at n = 10, r = 25).
class LowRankMatrices {
 public:
  struct Image {
    at::Tensor WU, XU;  // W U (r × u), X U (B × u)
    at::Tensor E;       // [g_1∘XU … g_n∘XU] (B × n·u) when few_outputs(u), else undefined
  };
  // total: Σ_i ||A_i||_F^2 (factored_total of the Gram blocks of W and X).
  LowRankMatrices(at::Tensor W, at::Tensor S, at::Tensor X, at::Tensor G, double lr, double total)
      : W_(std::move(W)), S_(S.contiguous()), X_(std::move(X)), G_(std::move(G)), lr_(lr), n_(S_.size(0)), r_(S_.size(1)), total_(total) {
    S_rows_ = S_.permute({1, 0, 2}).reshape({r_, n_ * r_});
  }

  double total() const { return total_; }
  // The same matrices in the coordinates of span[W^T | X^T] = span Q, Q = [W^T | X^T] R^{-1}
  // (R upper triangular, k × k): Q^T A_i Q = R1 S_i R1^T − lr R2 diag(g_i) R2^T, factors R1^T
  // and R2^T (R's columns for W^T and for X^T).
  LowRankMatrices in_coordinates(const at::Tensor& R) const {
    return LowRankMatrices(R.narrow(1, 0, r_).t(), S_, R.narrow(1, r_, X_.size(0)).t(), G_, lr_, total_);
  }
  // The rows (C Z)^T = Z_W^T W + Z_X^T X (v × d) of the vectors with coefficients Z (k × v) in
  // C = [W^T | X^T].
  at::Tensor rows(const at::Tensor& Z) const {
    return at::addmm(at::mm(Z.narrow(0, r_, X_.size(0)).t(), X_), Z.narrow(0, 0, r_).t(), W_);
  }
  Image image(const at::Tensor& U) const { return with_weighted({at::mm(W_, U), at::mm(X_, U), {}}); }
  // U^T A_i V = (WU)^T S_i (WV) − lr Σ_b g_ib (XU)_b (XV)_b^T  (n × u × v).
  at::Tensor cross(const at::Tensor& /*U*/, const Image& a, const Image& b) const {
    const auto u = a.WU.size(1), v = b.WU.size(1), B = G_.size(0);
    // (WU)^T S_i (WV): (WU)^T [S_1 … S_n] (u × n·r), then each r-block times WV, as two GEMMs.
    auto US = at::mm(a.WU.t(), S_rows_).view({u * n_, r_});
    auto out = at::mm(US, b.WU).view({u, n_, v});
    if (few_outputs(v)) {
      out.sub_(at::mm(a.XU.t(), b.E).view({u, n_, v}), lr_);
    } else {
      auto outer = (a.XU.unsqueeze(2) * b.XU.unsqueeze(1)).view({B, u * v});
      out.sub_(at::mm(G_.t(), outer).view({n_, u, v}).permute({1, 0, 2}), lr_);
    }
    return out.permute({1, 0, 2});  // stored (u, n, v): rayleigh_ritz reads it as (u, n·v)
  }
  // Σ_i A_i V K_i (d × w) for K (n × v × w): W^T Σ_i S_i (WV) K_i − lr X^T Z with
  // Z_b = (XV)_b^T Σ_i g_ib K_i.
  at::Tensor apply(const Image& b, const at::Tensor& K) const {
    const auto v = b.WU.size(1), w = K.size(2), B = G_.size(0);
    auto stacked = K.reshape({n_ * v, w});
    auto SWV = at::mm(S_.view({n_ * r_, r_}), b.WU).view({n_, r_, v}).permute({1, 0, 2}).reshape({r_, n_ * v});
    auto Z = few_outputs(v) ? at::mm(b.E, stacked)
                            : at::bmm(b.XU.unsqueeze(1), at::mm(G_, K.reshape({n_, v * w})).view({B, v, w})).squeeze(1);
    return at::mm(W_.t(), at::mm(SWV, stacked)) - at::mm(X_.t(), Z) * lr_;
  }
  // The image of U Y from those of U's column blocks and Y's matching row blocks.
  Image combine(const std::vector<Image>& images, const std::vector<at::Tensor>& Y) const {
    auto WU = at::mm(images[0].WU, Y[0]), XU = at::mm(images[0].XU, Y[0]);
    for (size_t j = 1; j < images.size(); ++j) {
      WU.addmm_(images[j].WU, Y[j]);
      XU.addmm_(images[j].XU, Y[j]);
    }
    return with_weighted({WU, XU, {}});
  }

 private:
  bool few_outputs(int64_t v) const { return n_ <= v; }
  Image with_weighted(Image image) const {
    const auto B = G_.size(0), u = image.XU.size(1);
    if (few_outputs(u)) image.E = (G_.unsqueeze(2) * image.XU.unsqueeze(1)).view({B, n_ * u});
    return image;
  }
  at::Tensor W_, S_, X_, G_;
  at::Tensor S_rows_;  // [S_1 … S_n] (r × n·r)
  double lr_;
  int64_t n_, r_;
  double total_;
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

CoreBasis core_basis(const at::Tensor& C) {
  auto T = at::mm(C.t(), C);
  auto fast = cholesky_qr(T);
  if (fast.first.defined()) return {fast.first, T, at::Tensor(), fast.second};
  auto qr = at::linalg_qr(C, "reduced");
  return {std::get<1>(qr), T, std::get<0>(qr), at::Tensor()};
}

// A state of either solver with its captured energy f = Σ_i ||V^T A_i V||_F^2.
template <class State>
struct Scored {
  State state;
  double f;
};

// The GLRAM iteration both solvers share. `propose(point)` returns a callable shift -> next
// point: the plain step at shift 0, and — when that would lower f, possible for indefinite A_i —
// the convexified step at shift c = Σ_i ||A_i||_F^2 (a minorise-maximise step: M + c V V^T with
// c ≥ −λ_min(Σ A_i ⊗ A_i) cannot lower f). Stops when an iteration gains ≤ tol · total or after
// max_iter; fills result's iterations, converged and objective (Σ_i ||A_i||^2 − f per iterate).
// Host synchronisation: the guard and the stopping rule read each f on the host (one .item()
// per evaluation: 1–2 per iteration, a device sync on CUDA). An iteration count decided by
// convergence needs them; everything else stays on the device.
template <class Point, class Propose>
Point iterate(Point point, double total, const GLRAMOptions& options, const Propose& propose, GLRAMResult& result) {
  std::vector<double> trace{std::max(0.0, total - point.f)};
  for (int64_t it = 0; it < options.max_iter(); ++it) {
    auto step = propose(point);
    Point next = step(0.0);
    if (next.f < point.f) next = step(total);
    if (!(next.f >= point.f)) {  // only rounding can get here: keep the better subspace
      result.converged = true;
      break;
    }
    const double gain = next.f - point.f;
    point = std::move(next);
    ++result.iterations;
    trace.push_back(std::max(0.0, total - point.f));
    if (gain <= options.tol() * total) {
      result.converged = true;
      break;
    }
  }
  result.objective = at::tensor(trace, at::kDouble);
  return point;
}

// The exact solver: from an orthonormal start V (m × r), V ← top-r eigenvectors of
// M = Σ_i A_i V V^T A_i (+ c V V^T when convexified).
template <class Problem>
GLRAMResult alternate(const Problem& problem, const at::Tensor& V, const GLRAMOptions& options) {
  const auto r = V.size(1);
  using Point = Scored<typename Problem::State>;
  auto score = [&problem](typename Problem::State state) {
    const double f = problem.captured(state);
    return Point{std::move(state), f};
  };
  auto propose = [&problem, &score, r](const Point& point) {
    return [&problem, &score, &point, r](double shift) { return score(problem.at(problem.top(point.state, r, shift))); };
  };
  GLRAMResult result;
  const auto end = iterate(score(problem.at(V)), problem.total(), options, propose, result);
  result.S = symmetric_part(problem.projected(end.state));
  result.weight = end.state.V.t();
  return result;
}

// An orthonormal basis (m × q) of the part of span Z outside span V (V orthonormal, m × r;
// Z already projected off V once). A second projection (Gram–Schmidt needs it), then
// CholeskyQR, a few r×r products. When that is inaccurate — Z nearly rank deficient, as at a
// fixed point where M V ⊂ span V — Householder QR of [V | Z], whose last columns are
// orthonormal and orthogonal to V whatever Z is.
at::Tensor orthonormal_extension(const at::Tensor& V, at::Tensor Z, int64_t q) {
  if (q == Z.size(1)) {
    Z = Z - at::mm(V, at::mm(V.t(), Z));
    auto fast = cholesky_qr(at::mm(Z.t(), Z));
    if (fast.second.defined()) return at::mm(Z, fast.second);
  }
  return std::get<0>(at::linalg_qr(at::cat({V, Z}, 1), "reduced")).narrow(1, V.size(1), q);
}

// When a Rayleigh–Ritz iteration grows its block beyond [V | Q_2] (docs/glram.rst, "Solvers").
// The block Krylov space [V, M V, M² V, …] approaches the top-r eigenspace of M, so a grown
// block makes the iteration take the exact solver's step where the two would otherwise part:
// on large moves, where the 2r-wide block alone drifts to another fixed point (measured 1–8%
// apart from the exact solver on random problems; ≤ 1.3e-5 apart with these rules). A
// projection grows blocks only if its first Ritz gain marks a large move: ≥ 2.7e-3 × Σ||A_i||²
// on the random problems measured, 4e-3–4e-2 × on the first Fashion-MNIST steps of
// QuadraticLayer(784, 10, 25) at lr 0.01 (these grow), ≤ 3e-4 × on the student–teacher
// training steps of the benchmark (these do not: they cost what they did with Q_2 alone).
constexpr double kLargeMove = 1e-3;  // first Ritz gain above this × Σ_i ||A_i||_F²: a large move
constexpr double kGrowAbove = 1e-4;  // then grow while the Ritz gain exceeds this × Σ_i ||A_i||_F²
constexpr double kGrowWhile = 1e-4;  // and the newest block raised it by more than this × the gain
constexpr int64_t kMaxBlocks = 6;    // blocks beyond V

// GLRAM with Rayleigh–Ritz steps from an orthonormal start V (m × r). Each iteration extends
// V by Q_2, an orthonormal basis of the part of M V outside span V (M = Σ_i A_i V V^T A_i, the
// matrix whose top eigenvectors the exact iteration takes), then, while the rules above ask
// for it, by Q_3, Q_4, … from M Q_2, M Q_3, … (a block Krylov space of M), and keeps the best
// r-dim subspace of U = [V | Q_2 | …] for M: the top eigenvectors of U^T M U = H H^T with
// H = [U^T A_1 V … U^T A_n V], a (u × u) eigen-solve. Since V ⊂ span U, tr(V'^T M V') ≥
// tr(V^T M V) = f(V), which is what the monotonicity argument of the exact iteration needs
// (docs/glram.rst); the same guard (redo with the shift c = Σ_i ||A_i||_F^2 on span V) covers
// indefinite A_i. A fixed point of the exact iteration (M V ⊂ span V) is one of this one, and
// the stopping rule is the same. Every quantity comes from the problem's images (A U in
// whatever factored form), which are linear in U: the image of V' = U Y is combined from those
// of the blocks, not recomputed. Host synchronisation: one .item() per block (the growth rule).
template <class Problem>
GLRAMResult rayleigh_ritz(const Problem& problem, const at::Tensor& V0, const GLRAMOptions& options) {
  using Image = typename Problem::Image;
  const auto m = V0.size(0), r = V0.size(1);
  const double total = problem.total();
  struct Ritz {
    at::Tensor V;
    Image image;       // A V
    at::Tensor cores;  // V^T A_i V
  };
  using Point = Scored<Ritz>;
  auto score = [&problem](at::Tensor V, Image image) {
    auto cores = symmetric_part(problem.cross(V, image, image)).contiguous();
    const double f = squared_norm(cores);
    return Point{{std::move(V), std::move(image), std::move(cores)}, f};
  };
  std::optional<bool> large_move;  // decided by the first iteration's Ritz gain
  auto propose = [&problem, &score, &large_move, total, m, r](const Point& point) {
    const auto& [V, image, cores] = point.state;
    // H = [U^T A_1 V … U^T A_n V] laid out (u, n·r), kept as its row blocks, one per block of
    // U; the first is the cores (symmetric: V^T A_i V side by side). U and U^T M U = H H^T
    // grow by one block per step, written into buffers sized for the widest block.
    const auto widest = std::min(m, r * (kMaxBlocks + 1));
    auto U_buffer = at::empty({m, widest}, V.options());
    auto gram_buffer = at::empty({widest, widest}, V.options());
    U_buffer.narrow(1, 0, r).copy_(V);
    std::vector<at::Tensor> H{cores.permute({1, 0, 2}).reshape({r, -1})};
    gram_buffer.narrow(0, 0, r).narrow(1, 0, r).copy_(at::mm(H[0], H[0].t()));  // Σ_i K_i K_i
    std::vector<Image> images{image};
    at::Tensor newest = cores;  // V^T A_i Q for the newest block Q (n × r × w)
    int64_t u = r;
    // Its eigenvalues decide the growth: eigenvectors with them for the first block (where
    // training steps stop), only eigenvalues for later ones (eigvalsh, ~2.3× cheaper than eigh
    // at these sizes).
    at::Tensor gram, first_vectors;
    double previous = point.f;  // tr(V^T M V) = Σ_i ||V^T A_i V||² = f(V)
    for (int64_t block = 0; block < kMaxBlocks && u < widest; ++block) {
      const int64_t w = newest.size(2);
      auto U = U_buffer.narrow(1, 0, u);
      // M Q = Σ_i A_i V (V^T A_i Q); its part in span U, U^T M Q = H H_Q^T (H_Q: Q's rows of
      // H, a block column of the Gram matrix), is known: the first Gram–Schmidt projection is free.
      auto MQ = problem.apply(image, newest) - at::mm(U, gram_buffer.narrow(0, 0, u).narrow(1, u - w, w));
      const auto q = std::min(w, widest - u);
      auto Q = orthonormal_extension(U, MQ, q);
      auto imageQ = problem.image(Q);
      auto C = problem.cross(Q, imageQ, image).permute({1, 0, 2}).reshape({q, -1});  // Q^T A_i V, (q, n·r)
      int64_t row = 0;
      for (const auto& Hj : H) {  // U^T M Q block by block
        auto block_product = at::mm(Hj, C.t());
        gram_buffer.narrow(0, row, Hj.size(0)).narrow(1, u, q).copy_(block_product);
        gram_buffer.narrow(0, u, q).narrow(1, row, Hj.size(0)).copy_(block_product.t());
        row += Hj.size(0);
      }
      gram_buffer.narrow(0, u, q).narrow(1, u, q).copy_(at::mm(C, C.t()));
      U_buffer.narrow(1, u, q).copy_(Q);
      H.push_back(C);
      images.push_back(std::move(imageQ));
      newest = C.view({q, -1, r}).permute({1, 2, 0});  // V^T A_i Q (n × r × q)
      u += q;
      gram = symmetric_part(gram_buffer.narrow(0, 0, u).narrow(1, 0, u));
      at::Tensor values;  // ascending
      if (block == 0) {
        std::tie(values, first_vectors) = at::linalg_eigh(gram);
      } else {
        values = at::linalg_eigvalsh(gram);
        first_vectors.reset();
      }
      const double ritz = values.narrow(0, u - r, r).sum().item<double>();
      const double gain = ritz - point.f;
      if (!large_move) large_move = gain > kLargeMove * total;
      if (!*large_move || !(gain > kGrowAbove * total) || !(ritz - previous > kGrowWhile * gain)) break;
      previous = ritz;
    }
    // The loop ran at least once (propose is called only when r < m, so u = r < widest).
    return [&problem, &score, U = U_buffer.narrow(1, 0, u), images, H, gram, first_vectors, r](double shift) {
      const auto u = U.size(1);
      at::Tensor Y;
      if (shift > 0) {
        auto diagonal = at::zeros({u}, gram.options());
        diagonal.narrow(0, 0, r).fill_(shift);
        Y = top_eigenvectors(gram + at::diag(diagonal), r);
      } else {
        Y = first_vectors.defined() ? first_vectors.narrow(1, u - r, r).flip({1}) : top_eigenvectors(gram, r);
      }
      std::vector<at::Tensor> rows;  // Y's row blocks, one per block of U (H's row blocks)
      int64_t start = 0;
      for (const auto& Hj : H) {
        rows.push_back(Y.narrow(0, start, Hj.size(0)));
        start += Hj.size(0);
      }
      return score(at::mm(U, Y), problem.combine(images, rows));
    };
  };
  auto limits = options;
  if (r == m) limits.max_iter(0);  // V spans everything
  GLRAMResult result;
  const auto end = iterate(score(V0, problem.image(V0)), total, limits, propose, result);
  if (r == m) result.converged = true;
  result.S = end.state.cores;
  result.weight = end.state.V.t();
  return result;
}

bool exact_solver(const GLRAMOptions& options) { return options.solver() == "exact"; }

constexpr double kMaxTermsOverTotal = 1e4;

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
  if (!V.defined()) V = problem.classic_start(r);
  return exact_solver(options) ? alternate(problem, V, options) : rayleigh_ritz(problem, V, options);
}

void check_finite(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(utils::all_finite(t), op, ": ", name, " contains NaN or Inf");
}

void check_options(const char* op, const GLRAMOptions& options) {
  TORCH_CHECK(options.tol() >= 0 && std::isfinite(options.tol()), op,
              ": tol must be a finite number >= 0, got ", options.tol());
  TORCH_CHECK(options.max_iter() >= 0, op, ": max_iter must be >= 0, got ", options.max_iter());
  TORCH_CHECK(options.solver() == "rayleigh_ritz" || options.solver() == "exact", op,
              ": solver must be \"rayleigh_ritz\" or \"exact\", got \"", options.solver(), "\"");
}

void check_rank(const char* op, int64_t rank, int64_t d) {
  TORCH_CHECK(rank >= 1 && rank <= d, op, ": rank must be in [1, ", d, "] (the matrix size), got ", rank);
}

// The Rayleigh–Ritz projected step in the k coordinates of span[W^T | X^T] (k = r + B < d),
// which holds V and every A_i U: with R the Cholesky factor of the Gram matrix T of
// C = [W^T | X^T] and Q = C R^{-1}, A_i = Q K_i Q^T with K_i = R1 S_i R1^T − lr R2 diag(g_i) R2^T
// (R1, R2: the columns of R for W^T and X^T) — the same factored form with k-sized factors, so
// each block costs O(k²·r) instead of O(d·k·r), and V = Q V' is formed once, at the end.
// Q is orthonormal only as far as R is accurate (cond(C)² · eps). Instead of checking all of Q
// (two k³ GEMMs, ~20% of a training projection) the two things that depend on it are: the warm
// start (its first r columns, W^T R11^{-1}, orthonormal) and the result (rows of V
// orthonormal, and the cores V^T A_i V recomputed through the d-sized factors, `in_space`,
// equal to the k-coordinate ones), all to kMaxBasisDrift, at O(d·r·(r + B)). Empty when T has
// no Cholesky factor or a check fails (the caller then solves in R^d).
std::optional<GLRAMResult> rayleigh_ritz_in_span(const LowRankMatrices& in_space, const at::Tensor& W,
                                                 const at::Tensor& T11, const at::Tensor& T12, const at::Tensor& T22,
                                                 const GLRAMOptions& options) {
  const auto r = W.size(0), k = r + T22.size(0);
  auto T = at::cat({at::cat({T11, T12}, 1), at::cat({T12.t(), T22}, 1)}, 0);
  auto chol = at::linalg_cholesky_ex(T, /*upper=*/true);
  if (std::get<1>(chol).item<int64_t>() != 0) return std::nullopt;
  const auto& R = std::get<0>(chol);
  // The warm start W^T R11^{-1} (R11 = R's leading r×r block, the Cholesky factor of W W^T)
  // must be orthonormal, checked as orthonormal_rows checks its basis.
  auto start_rows = at::linalg_solve_triangular(R.narrow(0, 0, r).narrow(1, 0, r).t(), W, /*upper=*/false);  // R11^{-T} W
  if (!near_identity(at::mm(start_rows, start_rows.t()))) return std::nullopt;
  // The warm start: span W^T = Q span R1 = Q span[e_1 … e_r] (R upper triangular).
  auto result = rayleigh_ritz(in_space.in_coordinates(R), at::eye(k, r, T.options()), options);
  // V = Q V' = C Z with Z = R^{-1} V'.
  auto V_rows = in_space.rows(at::linalg_solve_triangular(R, result.weight.t(), /*upper=*/true));
  auto image = in_space.image(V_rows.t());
  auto cores = in_space.cross(V_rows.t(), image, image);
  const double scale = std::max(1.0, result.S.abs().max().item<double>());
  const double mismatch = (cores - result.S).abs().max().item<double>();
  if (!near_identity(at::mm(V_rows, V_rows.t())) || !(mismatch <= kMaxBasisDrift * scale)) return std::nullopt;
  result.weight = V_rows;
  return result;
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
  const auto B = X.size(0), k = r + B;
  const bool exact = exact_solver(options) || n == 1;
  // Rayleigh–Ritz applies the A_i through their factors: worth it when the factors are smaller
  // than A (k < d), and also when they are not but the B×B Gram matrix it needs is no larger
  // than the n canonical matrices (B² ≤ n·d², so also fewer flops: B²·d against n·B·d²), e.g.
  // the demo network's second layer (d = 128, n = 10, B = 128). A convolution's batch of
  // pixels (B in the tens of thousands) stays dense.
  if (!exact && (k < d || B * B <= n * d * d)) {
    auto T11 = at::mm(W64, W64.t()), T12 = at::mm(W64, X64.t()), T22 = at::mm(X64, X64.t());
    const auto sum = factored_total(T11, T12, T22, S64, G64, lr);
    // Σ_i ||A_i||^2 from Gram entries is a sum over sample pairs; it cancels when nearly collinear
    // samples carry large opposite weights. Trusted while its terms are at most
    // kMaxTermsOverTotal times the sum (relative error ≲ 1e4 · k · eps ≈ 1e-10).
    if (std::isfinite(sum.second) && sum.second <= kMaxTermsOverTotal * sum.first) {
      LowRankMatrices problem(W64, S64, X64, G64, lr, sum.first);
      if (k < d) {
        if (auto result = rayleigh_ritz_in_span(problem, W64, T11, T12, T22, options)) {
          return cast_result(std::move(*result), weight);
        }
      }
      if (auto V0 = orthonormal_rows(W64); V0.defined()) {
        return cast_result(rayleigh_ritz(problem, V0, options), weight);
      }
    }
  }
  if (k >= d) {  // the k×k cores bring nothing: materialise A
    auto A = canonical_form(W64, S64) - canonical_gradient(X64, G64) * lr;
    return cast_result(glram_float64(A, r, orthonormal_rows(W64), options), weight);
  }
  // Otherwise the k×k cores: the exact solver, one output, and the Rayleigh–Ritz solver without
  // a warm start (weight of rank < r: the classic start needs the cores) or with nearly
  // dependent samples.
  // A_i = Q (R C_i R^T) Q^T with [W^T | X^T] = Q R and C_i = blockdiag(S_i, −lr·diag(G[:, i])).
  auto C = at::cat({W64.t(), X64.t()}, 1);  // d × k
  const auto basis = core_basis(C);
  const auto& R = basis.R;
  auto R1 = R.narrow(1, 0, r), R2 = R.narrow(1, r, k - r);
  // The warm start W^T = Q R1: its core coordinates are R1.
  auto V0 = orthonormal_rows(R1.t());
  GLRAMResult result;
  if (exact && n > 1 && V0.defined() && basis.well_conditioned()) {
    result = alternate(FactoredCores(R, basis.T, S64, G64, lr), V0, options);
  } else {
    // The k × k cores themselves: for the single output, the classic start, and nearly
    // dependent samples, where the factored Σ_i ||K_i||^2 (a sum over sample pairs) could cancel.
    // Solved with options.solver.
    auto cores = symmetric_part(at::matmul(at::matmul(R1, S64), R1.t()) - canonical_gradient(R2.t(), G64) * lr);
    result = glram_float64(cores, r, V0, options);
  }
  result.weight = basis.expand(C, result.weight.t()).t();  // (Q V)^T
  return cast_result(result, weight);
}

}  // namespace linalg
}  // namespace quadnet
