// The ATen compositions of quadnet's ops, registered as
//   CompositeExplicitAutograd  the ops with kernels of their own elsewhere (CPU, Meta, Autograd):
//                              this is their kernel on every other device ATen runs on;
//   CompositeImplicitAutograd  the short compositions (the convolutions: conv2d +
//                              quadratic_features; the diagonal model; the canonical forms):
//                              autograd, devices and tracing come from the ATen ops they call;
//   FuncTorchBatched           every op, so vmap runs its composition on the batched tensors
//                              (whose ops have batching rules) instead of a per-sample loop.
// Every formula is differentiable ATen ops, so the Autograd kernels also record these for
// double backward and under torch.func.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../utils/shapes.h"
#include "../utils/symmetric.h"
#include "detail.h"
#include "quadratic_conv.h"
#include "quadratic_form.h"

// Every kernel here also runs on FakeTensors with symbolic sizes (torch.compile with dynamic
// shapes, torch.export): sizes are read as SymInts (sym_size, view_symint, ...), never as ints.

namespace quadnet {
namespace ops {
namespace {

using utils::flatten_samples;
using utils::output_shape;
using utils::symmetric_part;

// H = X W^T (B×r);  Z[b, i, :] = sym(S_i) h_b (B×n×r) from ONE GEMM H · [S_1 … S_n].
struct QuadraticPieces {
  at::Tensor H, Z;
};

QuadraticPieces quadratic_pieces(const at::Tensor& x2d, const at::Tensor& weight, const at::Tensor& S) {
  const auto n = S.sym_size(0), r = S.sym_size(1);
  auto H = at::mm(x2d, weight.t());
  // [S_1 … S_n] as an r × (n·r) matrix: column block i is S_i (symmetric, so S_i h = h^T S_i).
  auto S_row = symmetric_part(S).permute({1, 0, 2}).reshape_symint({r, n * r});
  auto Z = at::mm(H, S_row).view_symint({x2d.sym_size(0), n, r});
  return {H, Z};
}

// Batched mat-vecs (bmm) are quicker for few outputs, a fused multiply-sum over a B×n×r
// temporary (the size of Z) for many (benchmarks/bench_quadratic_form.py).
constexpr int64_t kManyOutputs = 32;

at::Tensor contract_outputs(const at::Tensor& H, const at::Tensor& Z) {
  // Y[b, i] = <Z[b, i, :], h_b>
  if (Z.sym_size(1) >= kManyOutputs) return (Z * H.unsqueeze(1)).sum(2);
  return at::bmm(Z, H.unsqueeze(2)).squeeze(2);
}

at::Tensor diagonal_quadratic_form_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha) {
  check_quadratic_args(x, weight, alpha, "diagonal_quadratic_form", "alpha", 2);
  return at::matmul(at::matmul(x, weight.t()).square(), alpha.t());
}

at::Tensor canonical_gradient_composite(const at::Tensor& X, const at::Tensor& G) {
  check_canonical_gradient_args(X, G);
  const auto B = X.sym_size(0), d = X.sym_size(1), n = G.sym_size(1);
  // Pick the smaller temporary: B×d×d outer products or B×n×d weighted copies of X.
  if (d <= n) {
    auto outer = (X.unsqueeze(2) * X.unsqueeze(1)).reshape_symint({B, d * d});
    return at::mm(G.t(), outer).view_symint({n, d, d});
  }
  auto weighted = G.t().unsqueeze(2) * X.unsqueeze(0);                   // n×B×d
  return at::bmm(weighted.transpose(1, 2), X.expand_symint({n, B, d}));  // n×d×d
}

at::Tensor canonical_form_composite(const at::Tensor& weight, const at::Tensor& S) {
  check_model_args(weight, S, "canonical_form", "S", 3);
  return at::matmul(at::matmul(weight.t(), symmetric_part(S)), weight);
}

at::Tensor diagonal_canonical_form_composite(const at::Tensor& weight, const at::Tensor& alpha) {
  check_model_args(weight, alpha, "diagonal_canonical_form", "alpha", 2);
  return at::matmul(weight.t().unsqueeze(0) * alpha.unsqueeze(1), weight);
}

// y = P C^T with P[b, (a, c)] = h_a h_c.
at::Tensor features_math(const at::Tensor& h2d, const at::Tensor& S) {
  auto tri = triangle(S.size(1), h2d.options());
  auto pairs = at::mm(h2d, tri.select);
  auto products = pairs.narrow(1, 0, tri.pairs) * pairs.narrow(1, tri.pairs, tri.pairs);
  return at::mm(products, pair_coefficients(S, tri).t());
}

at::Tensor quadratic_conv2d_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S,
                                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_conv_args(x, weight, S, "quadratic_conv2d", "S", stride, padding, dilation);
  auto h = at::conv2d(x, weight, {}, stride, padding, dilation);
  // Channels last for the per-pixel forms (one copy of the rank-r map), back to (.., n, H', W').
  return quadratic_features(h.movedim(-3, -1), S).movedim(-1, -3);
}

at::Tensor diagonal_quadratic_conv2d_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                                               at::IntArrayRef stride, at::IntArrayRef padding,
                                               at::IntArrayRef dilation) {
  check_conv_args(x, weight, alpha, "diagonal_quadratic_conv2d", "alpha", stride, padding, dilation);
  auto h = at::conv2d(x, weight, {}, stride, padding, dilation);
  return at::matmul(h.movedim(-3, -1).square(), alpha.t()).movedim(-1, -3);
}

}  // namespace

Triangle triangle(int64_t r, const at::TensorOptions& options) {
  auto index = at::triu_indices(r, r, 0, options.dtype(at::kLong));
  auto a = index[0], b = index[1];
  // One GEMM h·select gathers [h_a | h_b] for every pair: quicker on CPU than indexing along the
  // feature dim, and differentiable as is.
  auto select = at::cat({at::one_hot(a, r), at::one_hot(b, r)}).t().to(options);
  return {select, a * r + b, b * r + a, a.ne(b).to(options) + 1.0, a.size(0)};
}

at::Tensor pair_coefficients(const at::Tensor& S, const Triangle& tri) {
  return symmetric_part(S).flatten(1).index_select(1, tri.upper) * tri.weight;
}

at::Tensor pair_moments_to_matrix(const at::Tensor& moments, const Triangle& tri, int64_t r) {
  const int64_t n = moments.size(0);
  return at::zeros({n, r * r}, moments.options())
      .index_copy(1, tri.upper, moments)
      .index_copy(1, tri.lower, moments)
      .view({n, r, r});
}

at::Tensor quadratic_form_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  check_quadratic_args(x, weight, S, "quadratic_form", "S", 3);
  auto pieces = quadratic_pieces(flatten_samples(x), weight, S);
  return contract_outputs(pieces.H, pieces.Z).view_symint(output_shape(x, S.sym_size(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward_composite(const at::Tensor& x,
                                                                                const at::Tensor& weight,
                                                                                const at::Tensor& S) {
  check_form_forward_args(x, weight, S);
  auto pieces = quadratic_pieces(x, weight, S);
  return {contract_outputs(pieces.H, pieces.Z), pieces.H, pieces.Z};
}

// ∂ℓ/∂h_b = 2 Σ_i G[b, i] z[b, i] and ∂ℓ/∂S_i = Σ_b G[b, i] h_b h_b^T.
std::tuple<at::Tensor, at::Tensor> quadratic_form_backward_composite(const at::Tensor& grad, const at::Tensor& h,
                                                                     const at::Tensor& z) {
  check_form_backward_args(grad, h, z);
  auto dH = at::bmm(grad.unsqueeze(1), z).squeeze(1) * 2.0;
  auto dS = canonical_gradient(h, grad);  // symmetric: d sym(S)/dS is the identity on it
  return {dH, dS};
}

at::Tensor quadratic_features_composite(const at::Tensor& h, const at::Tensor& S) {
  check_features_args(h, S);
  return features_math(flatten_samples(h), S).view_symint(output_shape(h, S.sym_size(0)));
}

// ∂ℓ/∂h: each product h_a h_c passes its gradient to h_a through h_c and to h_c through h_a.
// ∂ℓ/∂S_i[a, c] = Σ_b G[b, i] h_a h_c on both halves (the gradient of quadratic_form's S).
std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_composite(const at::Tensor& grad, const at::Tensor& h,
                                                                         const at::Tensor& S) {
  check_features_backward_args(grad, h, S);
  auto tri = triangle(S.size(1), h.options());
  auto pairs = at::mm(h, tri.select);
  auto first = pairs.narrow(1, 0, tri.pairs), second = pairs.narrow(1, tri.pairs, tri.pairs);
  auto grad_products = at::mm(grad, pair_coefficients(S, tri));
  auto grad_h = at::mm(at::cat({grad_products * second, grad_products * first}, 1), tri.select.t());
  auto grad_S = pair_moments_to_matrix(at::mm(grad.t(), first * second), tri, S.size(1));
  return {grad_h, grad_S};
}

}  // namespace ops
}  // namespace quadnet

// The compositions of the ops with kernels of their own: their kernel on devices without one,
// and what vmap runs.
#define QUADNET_REGISTER_EXPLICIT_COMPOSITES                                                     \
  m.impl("quadratic_form", TORCH_FN(quadnet::ops::quadratic_form_composite));                    \
  m.impl("_quadratic_form_forward", TORCH_FN(quadnet::ops::quadratic_form_forward_composite));   \
  m.impl("_quadratic_form_backward", TORCH_FN(quadnet::ops::quadratic_form_backward_composite)); \
  m.impl("quadratic_features", TORCH_FN(quadnet::ops::quadratic_features_composite));            \
  m.impl("_quadratic_features_backward", TORCH_FN(quadnet::ops::quadratic_features_backward_composite));

#define QUADNET_REGISTER_IMPLICIT_COMPOSITES                                                        \
  m.impl("diagonal_quadratic_form", TORCH_FN(quadnet::ops::diagonal_quadratic_form_composite));     \
  m.impl("quadratic_conv2d", TORCH_FN(quadnet::ops::quadratic_conv2d_composite));                   \
  m.impl("diagonal_quadratic_conv2d", TORCH_FN(quadnet::ops::diagonal_quadratic_conv2d_composite)); \
  m.impl("canonical_gradient", TORCH_FN(quadnet::ops::canonical_gradient_composite));               \
  m.impl("canonical_form", TORCH_FN(quadnet::ops::canonical_form_composite));                       \
  m.impl("diagonal_canonical_form", TORCH_FN(quadnet::ops::diagonal_canonical_form_composite));

TORCH_LIBRARY_IMPL(quadnet, CompositeExplicitAutograd, m){QUADNET_REGISTER_EXPLICIT_COMPOSITES}

TORCH_LIBRARY_IMPL(quadnet, CompositeImplicitAutograd, m){QUADNET_REGISTER_IMPLICIT_COMPOSITES}

// vmap: the argument checks see per-sample shapes.
TORCH_LIBRARY_IMPL(quadnet, FuncTorchBatched, m) {
  QUADNET_REGISTER_EXPLICIT_COMPOSITES
  QUADNET_REGISTER_IMPLICIT_COMPOSITES
}
#undef QUADNET_REGISTER_EXPLICIT_COMPOSITES
#undef QUADNET_REGISTER_IMPLICIT_COMPOSITES
