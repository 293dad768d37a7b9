// quadratic_features' CPU kernels: the composite formulas (composite_kernels.cpp), tiled over
// the vectors. The ATen formulas write every B×r(r+1)/2 intermediate (products, their gradients)
// to memory; for a convolution's B = N·H'·W' pixels that traffic dominates. Here each thread
// takes tiles of vectors whose products fit in cache, and the only full-size tensors are the
// inputs and outputs. Per tile: the products u (tile × T) in a loop, then one GEMM with the
// coefficients; the backward also accumulates Σ G^T u per thread and spreads the products'
// gradients onto h in the same loop. float32 and float64 are tiled; other dtypes run the
// composition.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../../utils/shapes.h"
#include "../detail.h"

namespace quadnet {
namespace ops {
namespace {

using utils::flatten_samples;
using utils::output_shape;

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
  return {grad_h, pair_moments_to_matrix(moments.sum(0), tri, r)};
}

at::Tensor quadratic_features_cpu(const at::Tensor& h, const at::Tensor& S) {
  if (!tiled_dtype(h)) return quadratic_features_composite(h, S);
  check_features_args(h, S);
  return features_tiled(flatten_samples(h), S).view_symint(output_shape(h, S.sym_size(0)));
}

std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_cpu(const at::Tensor& grad, const at::Tensor& h,
                                                                   const at::Tensor& S) {
  if (!tiled_dtype(h)) return quadratic_features_backward_composite(grad, h, S);
  check_features_backward_args(grad, h, S);
  return features_backward_tiled(grad, h, S);
}

}  // namespace
}  // namespace ops
}  // namespace quadnet

TORCH_LIBRARY_IMPL(quadnet, CPU, m) {
  m.impl("quadratic_features", TORCH_FN(quadnet::ops::quadratic_features_cpu));
  m.impl("_quadratic_features_backward", TORCH_FN(quadnet::ops::quadratic_features_backward_cpu));
}
