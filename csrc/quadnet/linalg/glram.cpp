#include "glram.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <utility>

#include "../utils/checks.h"
#include "../utils/enum_names.h"
#include "detail.h"
#include "solvers.h"

namespace quadnet {
namespace linalg {
namespace detail {

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

bool exact_solver(const GLRAMOptions& options) { return options.solver() == GLRAMSolver::exact; }

namespace {

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

}  // namespace

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
  TORCH_CHECK(options.tol() >= 0 && std::isfinite(options.tol()), op, ": tol must be a finite number >= 0, got ",
              options.tol());
  TORCH_CHECK(options.max_iter() >= 0, op, ": max_iter must be >= 0, got ", options.max_iter());
}

void check_rank(const char* op, int64_t rank, int64_t d) {
  TORCH_CHECK(rank >= 1 && rank <= d, op, ": rank must be in [1, ", d, "] (the matrix size), got ", rank);
}

void check_layer(const char* op, const at::Tensor& weight, const at::Tensor& S) {
  TORCH_CHECK(weight.dim() == 2, op, ": expected weight of shape (rank, d), got shape ", weight.sizes());
  const auto r = weight.size(0), d = weight.size(1);
  TORCH_CHECK(S.dim() == 3 && S.size(1) == r && S.size(2) == r, op, ": expected S of shape (n, rank=", r, ", rank=", r,
              "), got shape ", S.sizes());
  check_rank(op, r, d);
  utils::check_same_floating(op, {{"weight", weight}, {"S", S}});
  check_finite(op, "weight", weight);
  check_finite(op, "S", S);
}

GLRAMResult cast_result(GLRAMResult result, const at::Tensor& like) {
  result.weight = result.weight.to(like.options());
  result.S = result.S.to(like.options());
  return result;
}

}  // namespace detail

using namespace detail;

namespace {
const utils::EnumNames<GLRAMSolver, 2> kSolverNames{
    "solver", {{{GLRAMSolver::rayleigh_ritz, "rayleigh_ritz"}, {GLRAMSolver::exact, "exact"}}}};
}  // namespace

const char* solver_name(GLRAMSolver solver) { return kSolverNames.name(solver); }

GLRAMSolver parse_solver(const std::string& name, const char* op) { return kSolverNames.parse(name, op); }

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
  TORCH_CHECK(asym <= sym_tol * scale, op, ": A must be symmetric; max |A - A^T| = ", asym, " exceeds ", sym_tol,
              " x max(1, max |A|)");
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

}  // namespace linalg
}  // namespace quadnet
