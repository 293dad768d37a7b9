// The tangent-space projected step (docs/glram.rst, "Tangent step").
//
// Every d-sized quantity of the step (the frame V, the gradient's M = weight.grad^T / 2, the
// buffer's dW^T, the basis of span[V | K], the new weight and buffer) is a combination B·c of the
// columns of B = [W^T | weight.grad^T | buffer.dW^T] (d × m, m = 2r or 3r) with an m × r
// coefficient matrix c. Inner products are c1^T Γ c2 with Γ = B^T B, so the d-sized work is Γ
// (one r × d × r GEMM a block pair) and the outputs B·c; the rest is r-sized algebra in float64.
#include "tangent_step.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../utils/checks.h"
#include "detail.h"

namespace quadnet {
namespace linalg {

using namespace detail;

namespace {

constexpr const char* kOp = "tangent_step";

// Σ_i S_i² below this × its largest eigenvalue counts as singular (tangent_step_unavailable).
double singular_tol(at::ScalarType dtype) {
  double eps = DBL_EPSILON;
  if (dtype == at::kFloat)
    eps = FLT_EPSILON;
  else if (dtype == at::kHalf)
    eps = 9.765625e-4;
  else if (dtype == at::kBFloat16)
    eps = 7.8125e-3;
  // The step works in float64: directions of S down to ε ~ 1e-7 (ε² ~ 100·eps64) stay accurate.
  return std::min(std::max(1e4 * eps * eps, 100 * DBL_EPSILON), 1e-8);
}

// Rows up to this far from orthonormal (|W W^T − I| ≤ this) are handled through the Gram matrix
// W W^T (its Cholesky factor R ≈ I); beyond, the weight is rewritten with orthonormal rows first.
constexpr double kNearOrthonormal = 1e-3;
// Directions of the step's K-part with Gram eigenvalue below this × the largest are dropped from
// the retraction basis (numerically in span V already, or zero).
constexpr double kNegligibleDirection = 1e-12;

// (n, r, r) batched products a S_i b^T.
at::Tensor sandwich(const at::Tensor& a, const at::Tensor& S, const at::Tensor& b) {
  return at::matmul(at::matmul(a, S), b.t());
}

// Σ_i X_i Y_i for (n, r, r) stacks.
at::Tensor sum_products(const at::Tensor& X, const at::Tensor& Y) { return at::matmul(X, Y).sum(0); }

// Σ_i S_i² (r × r) for symmetric S_i: [S_1; …; S_n]^T [S_1; …; S_n].
at::Tensor sum_squares(const at::Tensor& S) {
  auto flat = S.reshape({-1, S.size(2)});
  return at::mm(flat.t(), flat);
}

// The eigen-decomposition of Σ_i S_i², and why the tangent step does not apply (empty if it does).
struct SumSquares {
  at::Tensor matrix;           // Σ_i S_i²
  at::Tensor values, vectors;  // its eigen-decomposition, ascending
  std::string singular;
  // (Σ_i S_i²)^{-1}, or its pseudo-inverse over the eigenvalues above the singularity threshold.
  at::Tensor inverse(double tol) const {
    const double largest = values[-1].item<double>();
    auto kept = values > tol * largest;
    auto inv = at::where(kept, values.reciprocal(), at::zeros_like(values));
    return at::mm(vectors * inv, vectors.t());
  }
};

SumSquares sum_squares_of(const at::Tensor& S, double tol) {
  SumSquares out;
  out.matrix = symmetric_part(sum_squares(S));
  std::tie(out.values, out.vectors) = at::linalg_eigh(out.matrix);
  const double largest = out.values[-1].item<double>(), smallest = out.values[0].item<double>();
  if (!(largest > 0)) {
    out.singular = "S is zero (Σ_i S_i² = 0)";
  } else if (!(smallest > tol * largest)) {
    std::ostringstream reason;
    reason << "Σ_i S_i² is singular (rank-deficient S: smallest/largest eigenvalue " << smallest / largest
           << " <= " << tol << ")";
    out.singular = reason.str();
  }
  return out;
}

// The vectors B·c of the step, B = [block_0^T | block_1^T | …] (blocks r × d), through Γ = B^T B.
class Span {
 public:
  explicit Span(std::vector<at::Tensor> blocks) : blocks_(std::move(blocks)) {
    const auto nb = static_cast<int64_t>(blocks_.size()), r = blocks_[0].size(0);
    gram_ = at::empty({nb * r, nb * r}, blocks_[0].options());
    for (int64_t i = 0; i < nb; ++i) {
      for (int64_t j = i; j < nb; ++j) {
        auto g = at::mm(blocks_[i], blocks_[j].t());
        gram_.narrow(0, i * r, r).narrow(1, j * r, r).copy_(g);
        if (j != i) gram_.narrow(0, j * r, r).narrow(1, i * r, r).copy_(g.t());
      }
    }
  }
  int64_t size() const { return gram_.size(0); }
  // The coefficients (m × r) of block j^T scaled on the right by a: B c = block_j^T a.
  at::Tensor of_block(int64_t j, const at::Tensor& a) const {
    const auto r = blocks_[0].size(0);
    auto c = at::zeros({size(), a.size(1)}, gram_.options());
    c.narrow(0, j * r, r).copy_(a);
    return c;
  }
  // (B c1)^T (B c2)
  at::Tensor inner(const at::Tensor& c1, const at::Tensor& c2) const { return at::mm(c1.t(), at::mm(gram_, c2)); }
  // (B c)^T as a (cols × d) matrix: Σ_j c_j^T block_j.
  at::Tensor rows(const at::Tensor& c) const {
    const auto r = blocks_[0].size(0);
    auto out = at::mm(c.narrow(0, 0, r).t(), blocks_[0]);
    for (size_t j = 1; j < blocks_.size(); ++j) {
      out.addmm_(c.narrow(0, static_cast<int64_t>(j) * r, r).t(), blocks_[j]);
    }
    return out;
  }

 private:
  std::vector<at::Tensor> blocks_;
  at::Tensor gram_;
};

// Coefficients (m × q) of an orthonormal basis of span(B c): c's columns normalised first, so that
// columns of very different lengths (K = P⊥M (Σ S²)^{-1} along an eigenvector of a tiny eigenvalue
// is ~1/ε times longer than along the others) are all kept; then the eigenvectors of their Gram
// matrix above kNegligibleDirection × its largest eigenvalue (dependent columns dropped). Zero
// columns are dropped; a numerically zero one adds a harmless direction.
at::Tensor orthonormal_columns(const Span& span, const at::Tensor& c) {
  auto lengths = span.inner(c, c).diagonal().clamp_min(0).sqrt();
  auto nonzero = at::nonzero(lengths > 0).squeeze(1);
  auto empty = at::zeros({c.size(0), 0}, c.options());
  if (nonzero.size(0) == 0 || !utils::all_finite(lengths)) return empty;
  auto normalised = c.index_select(1, nonzero) / lengths.index_select(0, nonzero);
  auto [phi, F] = at::linalg_eigh(symmetric_part(span.inner(normalised, normalised)));
  const double phi_max = phi[-1].item<double>();
  if (!(phi_max > 0)) return empty;
  auto keep = at::nonzero(phi > kNegligibleDirection * phi_max).squeeze(1);
  return at::mm(normalised, F.index_select(1, keep) * phi.index_select(0, keep).rsqrt());
}

// A tangent vector in the frame (V = B cV orthonormal, S, Λ = Σ_i S_i²):
//   ξ_i = V dS_i V^T + K S_i V^T + V S_i K^T,  K = N Λ^{-1},  N = B cN ⊥ V.
// K itself is not formed: along an eigenvector of a tiny eigenvalue ε² of Λ it is ~1/ε long, and
// its rounding errors there would reach the other directions of S_i. N (the gradient's part off
// V) is well scaled, and K S_i = N (Λ^{-1} S_i), where the tiny eigenvalue meets the ε of S_i.
struct Tangent {
  at::Tensor dS, cN;
  Tangent scaled(double a) const { return {dS * a, cN * a}; }
  Tangent plus(const Tangent& o, double a = 1.0) const { return {dS + o.dS * a, cN + o.cN * a}; }
};

// c − cV (V^T B c): the part of B c orthogonal to V = B cV (orthonormal).
at::Tensor orthogonal_part(const Span& span, const at::Tensor& cV, const at::Tensor& c) {
  return c - at::mm(cV, span.inner(cV, c));
}

// The orthogonal projection of a tangent vector ξ at (cV, S; LS_i = Λ^{-1} S_i) onto the tangent
// space at (cW, T) (cW orthonormal): dS'_i = W ξ_i W^T and N' = (I − W^T W) Σ_j ξ_j W^T T_j.
Tangent project_tangent(const Span& span, const Tangent& xi, const at::Tensor& cV, const at::Tensor& LS,
                        const at::Tensor& cW, const at::Tensor& T) {
  auto a = span.inner(cW, cV);      // W V (r × r)
  auto kN = span.inner(cW, xi.cN);  // W N
  auto WKS = at::matmul(kN, LS);    // W K S_i (n × r × r)
  auto dS = symmetric_part(sandwich(a, xi.dS, a) + at::matmul(WKS, a.t()) + at::matmul(a, WKS.transpose(1, 2)));
  // Σ_j ξ_j W^T T_j = V Σ_j (dS_j a^T + S_j K^T W^T) T_j + N Σ_j LS_j a^T T_j
  auto X1 = sum_products(at::matmul(xi.dS, a.t()) + WKS.transpose(1, 2), T);
  auto X2 = sum_products(at::matmul(LS, a.t()), T);
  return {dS, orthogonal_part(span, cW, at::mm(cV, X1) + at::mm(xi.cN, X2))};
}

void check_layer(const at::Tensor& weight, const at::Tensor& S) {
  detail::check_layer(kOp, weight, S);
  TORCH_CHECK(S.size(0) >= 1, kOp, ": S has no outputs, shape ", S.sizes());
}

// The frame of a float64 (W, S): the weight the Gram route works with and S beside it, and the
// Cholesky factor of its rows' Gram matrix, W W^T = R^T R with R ≈ I. A weight whose rows are far
// from orthonormal (a fresh init) is first rewritten exactly, W = P^T Q^T with Q = orthonormal_rows(W)
// and P = Q^T W^T: W ← Q^T, S ← P S P^T (the same A_i). R undefined: the rows are dependent.
struct Frame {
  at::Tensor W, S;
  at::Tensor R, R_inv;
  at::Tensor P;  // the rewrite, undefined when there was none
};

Frame frame_of(const at::Tensor& W, const at::Tensor& S) {
  auto T = at::mm(W, W.t());
  const double drift = (T - at::eye(T.size(0), T.options())).abs().max().item<double>();
  if (drift <= kNearOrthonormal) {
    auto [R, R_inv] = cholesky_qr(T);
    if (R.defined()) return {W, S, R, R_inv, at::Tensor()};
  }
  auto Q = orthonormal_rows(W);
  if (!Q.defined()) return {};
  auto P = at::mm(Q.t(), W.t());
  auto I = at::eye(W.size(0), W.options());
  return {Q.t(), sandwich(P, S, P), I, I, P};
}

constexpr const char* kDependentRowsReason = "the weight's rows are linearly dependent (rank < r, e.g. a zero weight)";

}  // namespace

std::string tangent_step_unavailable(const at::Tensor& weight, const at::Tensor& S) {
  check_layer(weight, S);
  auto W64 = weight.to(at::kDouble);
  auto S64 = symmetric_part(S.to(at::kDouble));
  auto frame = frame_of(W64, S64);
  if (!frame.R.defined()) return kDependentRowsReason;
  auto S_frame = sandwich(frame.R, frame.S, frame.R);
  return sum_squares_of(S_frame, singular_tol(weight.scalar_type())).singular;
}

TangentUpdateResult tangent_update(const at::Tensor& weight, const at::Tensor& S, const at::Tensor& weight_grad,
                                   const at::Tensor& S_grad, const TangentVector& momentum_buffer,
                                   const TangentUpdateOptions& options) {
  check_layer(weight, S);
  TORCH_CHECK(weight_grad.defined() && weight_grad.sizes() == weight.sizes(), kOp,
              ": expected weight_grad of the weight's shape ", weight.sizes(), ", got ",
              weight_grad.defined() ? weight_grad.sizes() : at::IntArrayRef{});
  TORCH_CHECK(S_grad.defined() && S_grad.sizes() == S.sizes(), kOp, ": expected S_grad of S's shape ", S.sizes(),
              ", got ", S_grad.defined() ? S_grad.sizes() : at::IntArrayRef{});
  utils::check_same_floating(kOp, {{"weight", weight}, {"weight_grad", weight_grad}, {"S_grad", S_grad}});
  check_finite(kOp, "weight_grad", weight_grad);
  check_finite(kOp, "S_grad", S_grad);
  const bool has_buffer = momentum_buffer.defined();
  if (has_buffer) {
    TORCH_CHECK(momentum_buffer.dW.sizes() == weight.sizes() && momentum_buffer.dS.sizes() == S.sizes(), kOp,
                ": expected a momentum buffer of the parameters' shapes (", weight.sizes(), ", ", S.sizes(), "), got (",
                momentum_buffer.dW.sizes(), ", ", momentum_buffer.dS.sizes(), ")");
    check_finite(kOp, "momentum_buffer.dW", momentum_buffer.dW);
    check_finite(kOp, "momentum_buffer.dS", momentum_buffer.dS);
  }
  const double lr = options.lr(), wd = options.weight_decay(), mu = options.momentum(), damp = options.dampening();
  TORCH_CHECK(std::isfinite(lr) && lr >= 0, kOp, ": lr must be a finite number >= 0, got ", lr);
  TORCH_CHECK(wd >= 0 && mu >= 0 && damp >= 0, kOp, ": weight_decay, momentum and dampening must be >= 0, got ", wd,
              ", ", mu, ", ", damp);
  TORCH_CHECK(!options.nesterov() || (mu > 0 && damp == 0), kOp,
              ": nesterov momentum requires a momentum > 0 and zero dampening");
  TORCH_CHECK(!options.glram().init().defined(), kOp, ": the warm start is `weight`; glram.init must be unset");
  check_options(kOp, options.glram());
  const double tol = singular_tol(weight.scalar_type());
  const auto r = weight.size(0);

  // 1. The frame: W, S, the gradients and the buffer in the frame of the Gram route (the inputs,
  //    or their rewrite with orthonormal rows: the gradients and the buffer transform with it).
  auto frame = frame_of(weight.to(at::kDouble), symmetric_part(S.to(at::kDouble)));
  TangentUpdateResult result;
  if (!frame.R.defined()) {
    result.unavailable = kDependentRowsReason;
    return result;
  }
  auto Wg = weight_grad.to(at::kDouble);
  auto S_grad64 = symmetric_part(S_grad.to(at::kDouble));
  at::Tensor bW, bS;
  if (has_buffer) bW = momentum_buffer.dW.to(at::kDouble), bS = symmetric_part(momentum_buffer.dS.to(at::kDouble));
  if (frame.P.defined()) {  // W.grad → P W.grad, S.grad → P^{-T} S.grad P^{-1}, dW → P^{-T} dW, dS → P dS P^T
    const auto& P = frame.P;
    auto P_inv_t = at::linalg_inv(P).t();
    Wg = at::mm(P, Wg);
    S_grad64 = sandwich(P_inv_t, S_grad64, P_inv_t);
    if (has_buffer) bW = at::mm(P_inv_t, bW), bS = sandwich(P, bS, P);
  }
  const auto& W = frame.W;
  const auto& R = frame.R;  // W W^T = R^T R, R ≈ I
  const auto& R_inv = frame.R_inv;
  std::vector<at::Tensor> blocks{W, Wg};
  if (has_buffer) blocks.push_back(bW);
  const Span span(blocks);
  // V = W^T R^{-1}, S' = R S R^T, S'.grad = R^{-T} S.grad R^{-1}, M = W'.grad^T / 2 = Wg^T R^T / 2.
  auto cV = span.of_block(0, R_inv);
  auto Sf = symmetric_part(sandwich(R, frame.S, R));
  auto squares = sum_squares_of(Sf, tol);
  if (!squares.singular.empty()) {
    result.unavailable = squares.singular;
    return result;
  }
  auto inverse_squares = squares.inverse(tol);

  // 2. The step direction. P_T(G) = (sym S'.grad, N = (I − V V^T) M).
  auto LS = at::matmul(inverse_squares, Sf);  // Λ^{-1} S'_i
  Tangent gradient{symmetric_part(sandwich(R_inv.t(), S_grad64, R_inv.t())),
                   orthogonal_part(span, cV, span.of_block(1, R.t() * 0.5))};
  Tangent direction = wd == 0 ? gradient : Tangent{gradient.dS + Sf * wd, gradient.cN};
  Tangent buffer, step = direction;
  if (mu > 0) {
    if (has_buffer) {
      // The buffer (a tangent vector at the given W, S) in the frame: dS' = R dS R^T, K' = dW^T R^{-1}
      // projected off V (the identity to rounding), N' = K' Λ.
      auto cKb = orthogonal_part(span, cV, span.of_block(2, R_inv));
      Tangent old{symmetric_part(sandwich(R, bS, R)), at::mm(cKb, squares.matrix)};
      buffer = old.scaled(mu).plus(direction, 1.0 - damp);
    } else {
      buffer = direction;
    }
    step = options.nesterov() ? direction.plus(buffer, mu) : buffer;
  }

  // 3. Retraction: GLRAM of A − lr ξ in the basis U = [V | Q] of span[V | K] = span[V | N].
  auto cN = orthogonal_part(span, cV, step.cN);
  auto cQ = orthonormal_columns(span, at::mm(cN, squares.vectors));
  const auto q = cQ.size(1);
  auto cU = at::cat({cV, cQ}, 1);                 // m × (r + q)
  auto UKS = at::matmul(span.inner(cU, cN), LS);  // U^T K S_i = [a_i; b_i] ((r + q) × r each; a_i ≈ 0, N ⊥ V)
  auto aU = at::cat({at::eye(r, R.options()), at::zeros({q, r}, R.options())}, 0);  // U^T V
  auto T = Sf - step.dS * lr;
  // C_i = U^T (A_i − lr ξ_i) U = [[T_i − lr (a_i + a_i^T), −lr b_i^T], [−lr b_i, 0]], written block
  // by block: as products with U^T V = [I; 0] it costs 2 n (r + q)² r flops and four (n, r + q, r + q)
  // temporaries, most of a step at the demo's first layer. The same values, exactly symmetric
  // (T_i and a_i + a_i^T are).
  const auto n = S.size(0);
  auto C = at::zeros({n, r + q, r + q}, T.options());
  auto a = UKS.narrow(1, 0, r), b = UKS.narrow(1, r, q);
  C.narrow(1, 0, r).narrow(2, 0, r).copy_(T - (a + a.transpose(1, 2)) * lr);
  C.narrow(1, r, q).narrow(2, 0, r).copy_(b * -lr);
  C.narrow(1, 0, r).narrow(2, r, q).copy_(b.transpose(1, 2) * -lr);
  auto projection = glram_float64(C, r, aU, options.glram());
  auto cW_new = at::mm(cU, projection.weight.t());  // V' = U Y
  auto W_new = span.rows(cW_new);                   // (r × d)
  auto S_new = projection.S;
  check_finite(kOp, "the new weight", W_new);
  check_finite(kOp, "the new S", S_new);

  auto squares_new = sum_squares_of(S_new, tol);
  result.unavailable_after = squares_new.singular;
  // 4. The buffer at the new point: dW = (N' Λ'^{-1})^T, with the pseudo-inverse where the new S
  //    is singular.
  if (mu > 0) {
    auto moved = project_tangent(span, buffer, cV, LS, cW_new, S_new);
    result.momentum_buffer = {span.rows(at::mm(moved.cN, squares_new.inverse(tol))).to(weight.options()),
                              moved.dS.to(S.options())};
  }
  // The new rows are orthonormal as far as the Gram algebra is exact; where S has a nearly
  // unused direction (ε ≲ 1e-3) its basis vector is accurate only to ~eps/ε², so the rows are
  // checked (one r × d × r GEMM) and, if off by more than kMaxBasisDrift, rewritten exactly
  // (W ← R^{-T} W, S ← R S R^T, the buffer likewise: the same canonical matrices and vector).
  auto rows_gram = at::mm(W_new, W_new.t());
  if (!near_identity(rows_gram)) {
    auto Rn = at::linalg_cholesky(symmetric_part(rows_gram), /*upper=*/true);
    auto Rn_inv_t = at::linalg_solve_triangular(Rn, at::eye(r, Rn.options()), /*upper=*/true).t();
    W_new = at::mm(Rn_inv_t, W_new);
    projection.S = symmetric_part(sandwich(Rn, projection.S, Rn));
    if (result.momentum_buffer.defined()) {
      result.momentum_buffer = {at::mm(Rn_inv_t.to(weight.options()), result.momentum_buffer.dW),
                                sandwich(Rn.to(S.options()), result.momentum_buffer.dS, Rn.to(S.options()))};
    }
  }
  projection.weight = W_new;
  result.projection = cast_result(std::move(projection), weight);
  return result;
}

GLRAMResult tangent_step(const at::Tensor& weight, const at::Tensor& S, const at::Tensor& weight_grad,
                         const at::Tensor& S_grad, double lr, const GLRAMOptions& options) {
  auto result = tangent_update(weight, S, weight_grad, S_grad, {}, TangentUpdateOptions(lr).glram(options));
  TORCH_CHECK(result.unavailable.empty(), kOp, ": the tangent step does not apply: ", result.unavailable,
              "; such a layer needs the full projected step (projected_step)");
  return result.projection;
}

}  // namespace linalg
}  // namespace quadnet
