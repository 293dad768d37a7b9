#include "quadratic_form.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "../utils/checks.h"
#include "../utils/symmetric.h"

namespace quadnet {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
using utils::symmetric_part;

// weight (r, d) and the per-output coefficients: S (n, r, r) or alpha (n, r).
void check_model_args(const at::Tensor& weight, const at::Tensor& coefficients, const char* op,
                      const char* coefficients_name, int64_t coefficients_dim) {
  TORCH_CHECK(weight.dim() == 2, op, ": expected weight of shape (rank, in_features), got shape ",
              weight.sizes());
  TORCH_CHECK(coefficients.dim() == coefficients_dim, op, ": expected ", coefficients_name,
              " of shape ", coefficients_dim == 3 ? "(out_features, rank, rank)" : "(out_features, rank)",
              ", got shape ", coefficients.sizes());
  TORCH_CHECK(coefficients.size(1) == weight.size(0), op, ": ", coefficients_name, " of shape ",
              coefficients.sizes(), " does not match rank ", weight.size(0), " of weight of shape ",
              weight.sizes());
  if (coefficients_dim == 3) {
    TORCH_CHECK(coefficients.size(2) == coefficients.size(1), op,
                ": expected square matrices S of shape (out_features, rank, rank), got shape ",
                coefficients.sizes());
  }
  utils::check_same_floating(op, {{"weight", weight}, {coefficients_name, coefficients}});
}

void check_quadratic_args(const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& coefficients, const char* op,
                          const char* coefficients_name, int64_t coefficients_dim) {
  TORCH_CHECK(x.dim() >= 1, op, ": expected x of shape (..., in_features) with at least 1 dim, got ",
              x.dim(), "-dim tensor");
  check_model_args(weight, coefficients, op, coefficients_name, coefficients_dim);
  TORCH_CHECK(x.size(-1) == weight.size(1), op, ": x has ", x.size(-1),
              " features in its last dim but weight of shape ", weight.sizes(), " expects ",
              weight.size(1), " (weight is (rank, in_features))");
  utils::check_same_floating(op, {{"x", x}, {"weight", weight}});
}

// Forward pieces, shared by the autograd forward and the differentiable (double-)backward.
// H = X W^T (B×r);  Z[b, i, :] = sym(S_i) h_b (B×n×r) from ONE GEMM H · [S_1 … S_n].
struct QuadraticPieces {
  at::Tensor H, Z;
};

QuadraticPieces quadratic_pieces(const at::Tensor& x2d, const at::Tensor& weight, const at::Tensor& S) {
  const auto n = S.size(0), r = S.size(1);
  auto H = at::mm(x2d, weight.t());
  // [S_1 … S_n] as an r × (n·r) matrix: column block i is S_i (symmetric, so S_i h = h^T S_i).
  auto S_row = symmetric_part(S).permute({1, 0, 2}).reshape({r, n * r});
  auto Z = at::mm(H, S_row).view({x2d.size(0), n, r});
  return {H, Z};
}

// Batched mat-vecs (bmm) are quicker for few outputs, a fused multiply-sum over a B×n×r
// temporary (the size of Z) for many (measured with benchmarks/bench_quadratic_form.py).
constexpr int64_t kManyOutputs = 32;

at::Tensor contract_outputs(const QuadraticPieces& p) {
  // Y[b, i] = <Z[b, i, :], h_b>
  if (p.Z.size(1) >= kManyOutputs) return (p.Z * p.H.unsqueeze(1)).sum(2);
  return at::bmm(p.Z, p.H.unsqueeze(2)).squeeze(2);
}

class QuadraticFormFunction : public torch::autograd::Function<QuadraticFormFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x2d, const at::Tensor& weight,
                            const at::Tensor& S) {
    auto pieces = quadratic_pieces(x2d, weight, S);
    ctx->save_for_backward({x2d, weight, S, pieces.H, pieces.Z});
    return contract_outputs(pieces);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto &x2d = saved[0], &weight = saved[1], &S = saved[2];
    QuadraticPieces pieces{saved[3], saved[4]};
    if (at::GradMode::is_enabled()) {
      // create_graph=True: recompute from the inputs so the backward itself is differentiable.
      pieces = quadratic_pieces(x2d, weight, S);
    }
    const auto& G = grad_outputs[0];  // B×n
    auto dH = (G.unsqueeze(2) * pieces.Z).sum(1) * 2.0;  // 2 Σ_i G[b,i] S_i h_b
    at::Tensor dx, dweight, dS;
    if (ctx->needs_input_grad(0)) dx = at::mm(dH, weight);
    if (ctx->needs_input_grad(1)) dweight = at::mm(dH.t(), x2d);
    if (ctx->needs_input_grad(2)) dS = canonical_gradient(pieces.H, G);  // symmetric: d sym(S)/dS is identity on it
    return {dx, dweight, dS};
  }
};

std::vector<int64_t> output_shape(const at::Tensor& x, int64_t n) {
  auto shape = x.sizes().vec();
  shape.back() = n;
  return shape;
}

}  // namespace

at::Tensor quadratic_form(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  check_quadratic_args(x, weight, S, "quadratic_form", "S", 3);
  auto x2d = x.reshape({-1, x.size(-1)});
  auto y = QuadraticFormFunction::apply(x2d, weight, S);
  return y.view(output_shape(x, S.size(0)));
}

at::Tensor diagonal_quadratic_form(const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& alpha) {
  check_quadratic_args(x, weight, alpha, "diagonal_quadratic_form", "alpha", 2);
  // Plain ATen composition: autograd (and double backward) come for free.
  return at::matmul(at::matmul(x, weight.t()).square(), alpha.t());
}

at::Tensor canonical_gradient(const at::Tensor& X, const at::Tensor& G) {
  TORCH_CHECK(X.dim() == 2, "canonical_gradient: expected X of shape (batch, features), got shape ", X.sizes());
  TORCH_CHECK(G.dim() == 2 && G.size(0) == X.size(0), "canonical_gradient: expected G of shape (batch=",
              X.size(0), ", out_features), got shape ", G.sizes());
  utils::check_same_floating("canonical_gradient", {{"X", X}, {"G", G}});
  const auto B = X.size(0), d = X.size(1), n = G.size(1);
  // Pick the smaller temporary: B×d×d outer products or B×n×d weighted copies of X.
  if (d <= n) {
    auto outer = (X.unsqueeze(2) * X.unsqueeze(1)).reshape({B, d * d});
    return at::mm(G.t(), outer).view({n, d, d});
  }
  auto weighted = G.t().unsqueeze(2) * X.unsqueeze(0);               // n×B×d
  return at::bmm(weighted.transpose(1, 2), X.expand({n, B, d}));  // n×d×d
}

at::Tensor canonical_form(const at::Tensor& weight, const at::Tensor& S) {
  check_model_args(weight, S, "canonical_form", "S", 3);
  return at::matmul(at::matmul(weight.t(), symmetric_part(S)), weight);
}

at::Tensor diagonal_canonical_form(const at::Tensor& weight, const at::Tensor& alpha) {
  check_model_args(weight, alpha, "diagonal_canonical_form", "alpha", 2);
  return at::matmul(weight.t().unsqueeze(0) * alpha.unsqueeze(1), weight);
}

}  // namespace quadnet
