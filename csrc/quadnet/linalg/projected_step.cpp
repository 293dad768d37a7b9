// The full projected step (docs/glram.rst, "Projected step"): the GLRAM projection of
// A_i = W^T S_i W − lr X^T diag(G[:, i]) X, applied through its factors.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "../ops/quadratic_form.h"
#include "../utils/checks.h"
#include "detail.h"
#include "glram.h"
#include "solvers.h"

namespace quadnet {
namespace linalg {

using namespace detail;

namespace {

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
                            T.narrow(0, r_, B).narrow(1, r_, B), S_, G_, lr_)
                 .first;
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
// (weighted copies for few outputs, n ≤ v; outer products for many; docs/glram.rst).
class LowRankMatrices {
 public:
  struct Image {
    at::Tensor WU, XU;  // W U (r × u), X U (B × u)
    at::Tensor E;       // [g_1∘XU … g_n∘XU] (B × n·u) when few_outputs(u), else undefined
  };
  // total: Σ_i ||A_i||_F^2 (factored_total of the Gram blocks of W and X).
  LowRankMatrices(at::Tensor W, at::Tensor S, at::Tensor X, at::Tensor G, double lr, double total)
      : W_(std::move(W)),
        S_(S.contiguous()),
        X_(std::move(X)),
        G_(std::move(G)),
        lr_(lr),
        n_(S_.size(0)),
        r_(S_.size(1)),
        total_(total) {
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

constexpr double kMaxTermsOverTotal = 1e4;

// The Rayleigh–Ritz projected step in the k coordinates of span[W^T | X^T] (k = r + B < d),
// which holds V and every A_i U: with R the Cholesky factor of the Gram matrix T of
// C = [W^T | X^T] and Q = C R^{-1}, A_i = Q K_i Q^T with K_i = R1 S_i R1^T − lr R2 diag(g_i) R2^T
// (R1, R2: the columns of R for W^T and X^T) — the same factored form with k-sized factors, so
// each block costs O(k²·r) instead of O(d·k·r), and V = Q V' is formed once, at the end.
// Q is orthonormal only as far as R is accurate (cond(C)² · eps). Instead of checking all of Q
// (two k³ GEMMs) the two things that depend on it are checked: the warm
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
  auto start_rows =
      at::linalg_solve_triangular(R.narrow(0, 0, r).narrow(1, 0, r).t(), W, /*upper=*/false);  // R11^{-T} W
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

}  // namespace

GLRAMResult projected_step(const at::Tensor& weight, const at::Tensor& S, const at::Tensor& X, const at::Tensor& G,
                           double lr, const GLRAMOptions& options) {
  constexpr const char* op = "projected_step";
  check_layer(op, weight, S);
  const auto r = weight.size(0), d = weight.size(1), n = S.size(0);
  TORCH_CHECK(X.dim() == 2 && X.size(1) == d, op, ": expected X of shape (batch, d=", d, "), got shape ", X.sizes());
  TORCH_CHECK(G.dim() == 2 && G.size(0) == X.size(0) && G.size(1) == n, op, ": expected G of shape (batch=", X.size(0),
              ", n=", n, "), got shape ", G.sizes());
  utils::check_same_floating(op, {{"weight", weight}, {"X", X}, {"G", G}});
  TORCH_CHECK(std::isfinite(lr), op, ": lr must be finite, got ", lr);
  TORCH_CHECK(!options.init().defined(), op, ": the warm start is `weight`; options.init must be unset");
  check_options(op, options);
  check_finite(op, "X", X);
  check_finite(op, "G", G);

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
