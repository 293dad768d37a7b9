#include "quadratic_conv.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <vector>

#include "../utils/checks.h"
#include "../utils/shapes.h"
#include "../utils/symmetric.h"
#include "detail.h"

// As in quadratic_form.cpp: the checks and Meta kernels read sizes as SymInts, so the ops run on
// FakeTensors with symbolic sizes (torch.compile with dynamic shapes, torch.export).

namespace quadnet {
namespace {

using ops::typed_op;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
using utils::flatten_samples;
using utils::output_shape;
using utils::symmetric_part;

void check_S(const at::Tensor& S, const char* op) {
  TORCH_CHECK(S.dim() == 3 && S.sym_size(1) == S.sym_size(2), op,
              ": expected S of shape (out_features, rank, rank), got shape ", S.sym_sizes());
}

void check_features_args(const at::Tensor& h, const at::Tensor& S) {
  const char* op = "quadratic_features";
  TORCH_CHECK(h.dim() >= 1, op, ": expected h of shape (..., rank) with at least 1 dim, got ", h.dim(), "-dim tensor");
  check_S(S, op);
  TORCH_CHECK(h.sym_size(-1) == S.sym_size(1), op, ": h has ", h.sym_size(-1),
              " features in its last dim but S of shape ", S.sym_sizes(), " expects rank ", S.sym_size(1));
  utils::check_same_floating(op, {{"h", h}, {"S", S}});
}

void check_features_backward_args(const at::Tensor& grad, const at::Tensor& h, const at::Tensor& S) {
  const char* op = "_quadratic_features_backward";
  check_S(S, op);
  TORCH_CHECK(h.dim() == 2 && h.sym_size(1) == S.sym_size(1), op, ": expected h of shape (batch, rank=", S.sym_size(1),
              "), got shape ", h.sym_sizes());
  TORCH_CHECK(grad.dim() == 2 && grad.sym_size(0) == h.sym_size(0) && grad.sym_size(1) == S.sym_size(0), op,
              ": expected grad of shape (batch=", h.sym_size(0), ", out_features=", S.sym_size(0), "), got shape ",
              grad.sym_sizes());
  utils::check_same_floating(op, {{"grad", grad}, {"h", h}, {"S", S}});
}

// The upper triangle a ≤ b of an r×r matrix, T = r(r+1)/2 pairs.
//   select  (r, 2T) = [E_a | E_b], one-hot columns: h select = [h_a | h_b] for every pair in one
//           GEMM (quicker on CPU than gathering along the feature dim, differentiable as is);
//   upper, lower  flat indices a·r + b and b·r + a of each pair;
//   weight  the pair's multiplicity in h^T S h: 1 on the diagonal, 2 off it.
struct Triangle {
  at::Tensor select, upper, lower, weight;
  int64_t pairs;
};

Triangle triangle(int64_t r, const at::TensorOptions& options) {
  auto index = at::triu_indices(r, r, 0, options.dtype(at::kLong));
  auto a = index[0], b = index[1];
  auto select = at::cat({at::one_hot(a, r), at::one_hot(b, r)}).t().to(options);
  return {select, a * r + b, b * r + a, a.ne(b).to(options) + 1.0, a.size(0)};
}

// (n, T): the coefficient of h_a h_b in y_i = h^T sym(S_i) h.
at::Tensor pair_coefficients(const at::Tensor& S, const Triangle& tri) {
  return symmetric_part(S).flatten(1).index_select(1, tri.upper) * tri.weight;
}

// y = P C^T with P[b, (a, c)] = h_a h_c: ATen ops only, so differentiable (double backward).
at::Tensor features_math(const at::Tensor& h2d, const at::Tensor& S) {
  auto tri = triangle(S.size(1), h2d.options());
  auto pairs = at::mm(h2d, tri.select);
  auto products = pairs.narrow(1, 0, tri.pairs) * pairs.narrow(1, tri.pairs, tri.pairs);
  return at::mm(products, pair_coefficients(S, tri).t());
}

// ∂ℓ/∂h: each product h_a h_c passes its gradient to h_a through h_c and to h_c through h_a.
// ∂ℓ/∂S_i[a, c] = Σ_b G[b, i] h_a h_c on both halves (the gradient of quadratic_form's S).
std::tuple<at::Tensor, at::Tensor> features_backward_math(const at::Tensor& G, const at::Tensor& h2d,
                                                          const at::Tensor& S) {
  const int64_t n = S.size(0), r = S.size(1);
  auto tri = triangle(r, h2d.options());
  auto pairs = at::mm(h2d, tri.select);
  auto first = pairs.narrow(1, 0, tri.pairs), second = pairs.narrow(1, tri.pairs, tri.pairs);
  auto grad_products = at::mm(G, pair_coefficients(S, tri));
  auto grad_h = at::mm(at::cat({grad_products * second, grad_products * first}, 1), tri.select.t());
  auto moments = at::mm(G.t(), first * second);
  auto grad_S = at::zeros({n, r * r}, S.options())
                    .index_copy(1, tri.upper, moments)
                    .index_copy(1, tri.lower, moments)
                    .view({n, r, r});
  return {grad_h, grad_S};
}

// ---- CPU kernels: the same formulas, tiled over the vectors ----
// The ATen formulas above write every B×r(r+1)/2 intermediate (products, their gradients) to
// memory; for a convolution's B = N·H'·W' pixels that traffic dominates. Here each thread takes
// tiles of vectors whose products fit in cache, and the only full-size tensors are the inputs
// and outputs. Per tile: the products u (tile × T) in a loop, then one GEMM with the
// coefficients; the backward also accumulates Σ G^T u per thread and spreads the products'
// gradients onto h in the same loop.

// Vectors per tile: about 32K products (128 KB in float32) per tile.
int64_t tile_rows(int64_t pairs) { return std::max<int64_t>(16, 32768 / std::max<int64_t>(pairs, 1)); }

template <typename scalar_t>
void fill_products(const scalar_t* h, int64_t rows, int64_t r, scalar_t* u) {
  for (int64_t p = 0; p < rows; ++p, h += r) {
    for (int64_t a = 0; a < r; ++a) {
      const scalar_t ha = h[a];
      for (int64_t b = a; b < r; ++b) *u++ = ha * h[b];
    }
  }
}

bool tiled_dtype(const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble; }

at::Tensor features_tiled(const at::Tensor& h2d_in, const at::Tensor& S) {
  const int64_t B = h2d_in.size(0), r = S.size(1), n = S.size(0);
  auto h2d = h2d_in.contiguous();
  auto tri = triangle(r, h2d.options());
  auto coefficients_t = pair_coefficients(S, tri).t().contiguous();  // (T, n)
  auto y = at::empty({B, n}, h2d.options());
  const int64_t T = tri.pairs, tile = tile_rows(T), tiles = (B + tile - 1) / tile;
  AT_DISPATCH_FLOATING_TYPES(h2d.scalar_type(), "quadratic_features", [&] {
    const scalar_t* h = h2d.const_data_ptr<scalar_t>();
    scalar_t* out = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      auto products = at::empty({tile, T}, h2d.options());
      for (int64_t k = begin; k < end; ++k) {
        const int64_t first = k * tile, rows = std::min(tile, B - first);
        auto u = products.narrow(0, 0, rows);
        fill_products(h + first * r, rows, r, u.mutable_data_ptr<scalar_t>());
        auto out_rows = at::from_blob(out + first * n, {rows, n}, h2d.options());
        at::mm_out(out_rows, u, coefficients_t);
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> features_backward_tiled(const at::Tensor& grad, const at::Tensor& h2d_in,
                                                           const at::Tensor& S) {
  const int64_t B = h2d_in.size(0), r = S.size(1), n = S.size(0);
  auto h2d = h2d_in.contiguous();
  auto G = grad.contiguous();
  auto tri = triangle(r, h2d.options());
  auto coefficients = pair_coefficients(S, tri).contiguous();  // (n, T)
  const int64_t T = tri.pairs, tile = tile_rows(T), tiles = (B + tile - 1) / tile;
  auto grad_h = at::empty({B, r}, h2d.options());
  // One (n, T) accumulator of Σ G^T u per thread, summed at the end.
  auto moments = at::zeros({at::get_num_threads(), n, T}, h2d.options());
  AT_DISPATCH_FLOATING_TYPES(h2d.scalar_type(), "_quadratic_features_backward", [&] {
    const scalar_t* h = h2d.const_data_ptr<scalar_t>();
    const scalar_t* g = G.const_data_ptr<scalar_t>();
    scalar_t* dh = grad_h.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      auto products = at::empty({tile, T}, h2d.options());
      auto grad_products = at::empty({tile, T}, h2d.options());
      auto own_moments = moments[at::get_thread_num()];
      for (int64_t k = begin; k < end; ++k) {
        const int64_t first = k * tile, rows = std::min(tile, B - first);
        auto u = products.narrow(0, 0, rows);
        auto gu = grad_products.narrow(0, 0, rows);
        fill_products(h + first * r, rows, r, u.mutable_data_ptr<scalar_t>());
        auto g_rows = at::from_blob(const_cast<scalar_t*>(g) + first * n, {rows, n}, h2d.options());
        own_moments.addmm_(g_rows.t(), u);
        at::mm_out(gu, g_rows, coefficients);
        // ∂ℓ/∂h_a += gu_ab h_b, ∂ℓ/∂h_b += gu_ab h_a for every pair a ≤ b.
        const scalar_t* gp = gu.const_data_ptr<scalar_t>();
        for (int64_t p = first; p < first + rows; ++p) {
          const scalar_t* hp = h + p * r;
          scalar_t* dp = dh + p * r;
          std::fill(dp, dp + r, scalar_t(0));
          for (int64_t a = 0; a < r; ++a) {
            const scalar_t ha = hp[a];
            scalar_t sum = 0;
            for (int64_t b = a; b < r; ++b, ++gp) {
              sum += *gp * hp[b];
              dp[b] += *gp * ha;
            }
            dp[a] += sum;
          }
        }
      }
    });
  });
  auto total = moments.sum(0);
  auto grad_S = at::zeros({n, r * r}, S.options())
                    .index_copy_(1, tri.upper, total)
                    .index_copy_(1, tri.lower, total)
                    .view({n, r, r});
  return {grad_h, grad_S};
}

using Binary = at::Tensor(const at::Tensor&, const at::Tensor&);
using BackwardSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&);
using ConvSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                 at::IntArrayRef, at::IntArrayRef);

const c10::TypedOperatorHandle<Binary>& features_op() {
  static const auto op = typed_op<Binary>("quadnet::quadratic_features");
  return op;
}

const c10::TypedOperatorHandle<BackwardSignature>& features_backward_op() {
  static const auto op = typed_op<BackwardSignature>("quadnet::_quadratic_features_backward");
  return op;
}

// The autograd node of quadratic_features: saves only its inputs (h, S); the backward op
// recomputes the products, so nothing of size B·r(r+1)/2 lives between forward and backward.
class QuadraticFeaturesFunction : public torch::autograd::Function<QuadraticFeaturesFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h2d, const at::Tensor& S) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({h2d, S});
    return features_op().call(h2d, S);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    // With create_graph=True the backward op runs its ATen formula under autograd (its
    // Autograd kernel), differentiating through h and S.
    auto [grad_h, grad_S] = features_backward_op().call(grad_outputs[0], saved[0], saved[1]);
    if (!ctx->needs_input_grad(0)) grad_h = at::Tensor();
    if (!ctx->needs_input_grad(1)) grad_S = at::Tensor();
    return {grad_h, grad_S};
  }
};

// x (N, C, H, W) or (C, H, W), weight (m, C, kh, kw), per-output coefficients S (n, m, m) or
// alpha (n, m), and conv2d's geometry.
void check_conv_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& coefficients, const char* op,
                     const char* coefficients_name, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation) {
  TORCH_CHECK(x.dim() == 3 || x.dim() == 4, op,
              ": expected x of shape (batch, in_channels, height, width) or (in_channels, height, width), got shape ",
              x.sym_sizes());
  TORCH_CHECK(weight.dim() == 4, op,
              ": expected weight of shape (rank, in_channels, kernel_height, kernel_width), got shape ",
              weight.sym_sizes());
  TORCH_CHECK(x.sym_size(-3) == weight.sym_size(1), op, ": x of shape ", x.sym_sizes(), " has ", x.sym_size(-3),
              " channels but weight of shape ", weight.sym_sizes(), " expects ", weight.sym_size(1),
              " (weight is (rank, in_channels, kernel_height, kernel_width))");
  const bool quadratic = coefficients.dim() == 3;
  TORCH_CHECK((coefficients.dim() == 3 || coefficients.dim() == 2) && coefficients.sym_size(1) == weight.sym_size(0) &&
                  (!quadratic || coefficients.sym_size(2) == weight.sym_size(0)),
              op, ": expected ", coefficients_name, " of shape ",
              quadratic ? "(out_channels, rank, rank)" : "(out_channels, rank)",
              " with rank = weight.size(0) = ", weight.sym_size(0), ", got shape ", coefficients.sym_sizes());
  auto check_pair = [op](at::IntArrayRef values, const char* name, int64_t least) {
    TORCH_CHECK(values.size() == 1 || values.size() == 2, op, ": expected ", name,
                " to be one int or two (height, width), got ", values);
    for (auto v : values) TORCH_CHECK(v >= least, op, ": expected ", name, " >= ", least, ", got ", values);
  };
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  utils::check_same_floating(op, {{"x", x}, {"weight", weight}, {coefficients_name, coefficients}});
}

}  // namespace

// ---- public functions: through the dispatcher ----

at::Tensor quadratic_features(const at::Tensor& h, const at::Tensor& S) { return features_op().call(h, S); }

std::tuple<at::Tensor, at::Tensor> quadratic_features_backward(const at::Tensor& grad, const at::Tensor& h,
                                                               const at::Tensor& S) {
  return features_backward_op().call(grad, h, S);
}

at::Tensor quadratic_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op = typed_op<ConvSignature>("quadnet::quadratic_conv2d");
  return op.call(x, weight, S, stride, padding, dilation);
}

at::Tensor diagonal_quadratic_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op = typed_op<ConvSignature>("quadnet::diagonal_quadratic_conv2d");
  return op.call(x, weight, alpha, stride, padding, dilation);
}

// ---- kernels ----
namespace ops {

at::Tensor quadratic_features_composite(const at::Tensor& h, const at::Tensor& S) {
  check_features_args(h, S);
  return features_math(flatten_samples(h), S).view_symint(output_shape(h, S.sym_size(0)));
}

at::Tensor quadratic_features_meta(const at::Tensor& h, const at::Tensor& S) {
  check_features_args(h, S);
  return h.new_empty_symint(output_shape(h, S.sym_size(0)));
}

at::Tensor quadratic_features_autograd(const at::Tensor& h, const at::Tensor& S) {
  if (needs_composite_autograd({h, S})) return quadratic_features_composite(h, S);
  check_features_args(h, S);
  auto y = QuadraticFeaturesFunction::apply(flatten_samples(h), S);
  return y.view_symint(output_shape(h, S.sym_size(0)));
}

std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_composite(const at::Tensor& grad, const at::Tensor& h,
                                                                         const at::Tensor& S) {
  check_features_backward_args(grad, h, S);
  return features_backward_math(grad, h, S);
}

at::Tensor quadratic_features_cpu(const at::Tensor& h, const at::Tensor& S) {
  check_features_args(h, S);
  auto h2d = flatten_samples(h);
  auto y = tiled_dtype(h) ? features_tiled(h2d, S) : features_math(h2d, S);
  return y.view_symint(output_shape(h, S.sym_size(0)));
}

std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_cpu(const at::Tensor& grad, const at::Tensor& h,
                                                                   const at::Tensor& S) {
  check_features_backward_args(grad, h, S);
  return tiled_dtype(h) ? features_backward_tiled(grad, h, S) : features_backward_math(grad, h, S);
}

std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_meta(const at::Tensor& grad, const at::Tensor& h,
                                                                    const at::Tensor& S) {
  check_features_backward_args(grad, h, S);
  return {h.new_empty_symint(h.sym_sizes()), S.new_empty_symint(S.sym_sizes())};
}

std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_autograd(const at::Tensor& grad, const at::Tensor& h,
                                                                        const at::Tensor& S) {
  if (records_composition({grad, h, S})) {
    // Double backward (or torch.func): the composite kernel's ATen ops, recorded by autograd.
    return quadratic_features_backward_composite(grad, h, S);
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return features_backward_op().call(grad, h, S);
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

}  // namespace ops
}  // namespace quadnet
