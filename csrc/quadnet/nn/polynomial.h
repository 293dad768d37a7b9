#pragma once
// Deep polynomial networks (docs/polynomial.rst): quadratic layers stacked with linear skips.
// Parameter names match quadnet.nn.PolynomialBlock / DeepPolynomialNet in Python.

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <ostream>
#include <vector>

#include "quadratic_layer.h"

namespace quadnet {
namespace nn {

struct PolynomialBlockOptions {
  PolynomialBlockOptions(int64_t in_features, int64_t out_features, int64_t rank)
      : in_features_(in_features), out_features_(out_features), rank_(rank) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(int64_t, rank);
  TORCH_ARG(bool, skip) = true;
  TORCH_ARG(bool, bias) = true;
  // Batch-normalise the output (BatchNorm1d without affine parameters). An affine map in eval
  // mode, as quadratic_norm: the degree is unchanged.
  TORCH_ARG(bool, norm) = false;
  // Batch-normalise the quadratic term alone, y = BN(Quad(x)) + L x, with
  // BatchNorm1d(out_features, affine=bias): its shift is the bias (the quadratic layer has none)
  // and its scale weighs the quadratic term. Keeps the quadratic term's size from growing with
  // W and S, which is what made deep stacks diverge under SGD (docs/polynomial.rst).
  TORCH_ARG(bool, quadratic_norm) = true;
};

// y = Quad(x) + L x: a QuadraticLayer ("quadratic") with a bias-free linear skip ("skip"),
// so L stacked blocks hold every monomial of degree ≤ 2^L. Submodules: quadratic,
// quadratic_norm, skip, norm (each optional one null when off).
class PolynomialBlockImpl : public torch::nn::Cloneable<PolynomialBlockImpl> {
 public:
  PolynomialBlockImpl(int64_t in_features, int64_t out_features, int64_t rank)
      : PolynomialBlockImpl(PolynomialBlockOptions(in_features, out_features, rank)) {}
  explicit PolynomialBlockImpl(const PolynomialBlockOptions& options);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  // x (..., in_features) -> (..., out_features)
  torch::Tensor forward(const torch::Tensor& x);
  int64_t degree() const { return 2; }
  // Free parameters (each symmetric S_i counted once).
  int64_t num_parameters() const;

  PolynomialBlockOptions options;
  QuadraticLayer quadratic{nullptr};
  torch::nn::BatchNorm1d quadratic_norm{nullptr};  // null when options.quadratic_norm() is false
  torch::nn::Linear skip{nullptr};                 // null when options.skip() is false
  torch::nn::BatchNorm1d norm{nullptr};            // null when options.norm() is false
};
TORCH_MODULE(PolynomialBlock);

struct DeepPolynomialNetOptions {
  // sizes: widths, input first (≥ 2 entries); ranks: one per block (sizes.size() − 1).
  DeepPolynomialNetOptions(std::vector<int64_t> sizes, std::vector<int64_t> ranks)
      : sizes_(std::move(sizes)), ranks_(std::move(ranks)) {}
  TORCH_ARG(std::vector<int64_t>, sizes);
  TORCH_ARG(std::vector<int64_t>, ranks);
  TORCH_ARG(bool, skip) = true;
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(bool, norm) = false;           // on every block but the last
  TORCH_ARG(bool, quadratic_norm) = true;  // on every block
  // Start every residual block (a skip and in == out features) as the identity map: skip = I
  // and the quadratic term zero (quadratic_norm's weight; without it, S and the bias),
  // so the net starts as its first and last blocks (ResNet's zero-initialised last batch norm,
  // Goyal et al. 2017). On Fashion-MNIST it brings SGD's 4-block nets level with 2-block ones
  // (README, "Depth"). Refused with quadratic_norm and bias=false: that norm has no scale to zero.
  TORCH_ARG(bool, zero_init_residual) = true;
};

// L = sizes.size() − 1 PolynomialBlocks, registered as "0" … "L-1" (the names of Python's
// nn.Sequential-based DeepPolynomialNet): a polynomial of degree 2^L in the input.
class DeepPolynomialNetImpl : public torch::nn::Cloneable<DeepPolynomialNetImpl> {
 public:
  DeepPolynomialNetImpl(std::vector<int64_t> sizes, std::vector<int64_t> ranks)
      : DeepPolynomialNetImpl(DeepPolynomialNetOptions(std::move(sizes), std::move(ranks))) {}
  explicit DeepPolynomialNetImpl(const DeepPolynomialNetOptions& options);

  void reset() override;
  // Re-initialises every block, then (zero_init_residual) starts the residual blocks as the
  // identity again.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  // Indices of the blocks zero_init_residual starts as the identity (a skip, in == out).
  std::vector<size_t> residual_blocks() const;

  // x (..., sizes.front()) -> (..., sizes.back())
  torch::Tensor forward(torch::Tensor x);
  int64_t degree() const;
  int64_t num_parameters() const;
  size_t size() const { return blocks.size(); }
  PolynomialBlock& operator[](size_t index) { return blocks.at(index); }

  DeepPolynomialNetOptions options;
  std::vector<PolynomialBlock> blocks;

 private:
  void init_residual_blocks();
};
TORCH_MODULE(DeepPolynomialNet);

}  // namespace nn
}  // namespace quadnet
