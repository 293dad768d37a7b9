#pragma once
// Convolutional quadratic layers and the polynomial conv block as torch::nn modules
// (docs/quadratic_conv.rst). Parameter names and defaults match quadnet.nn.QuadraticConv2d,
// DiagonalQuadraticConv2d and PolynomialConvBlock in Python, so state dicts move between them.

#include <torch/arg.h>
#include <torch/expanding_array.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/pooling.h>
#include <torch/nn/pimpl.h>

#include <ostream>

namespace quadnet {
namespace nn {

struct QuadraticConv2dOptions {
  QuadraticConv2dOptions(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<2> kernel_size, int64_t rank)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size), rank_(rank) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  TORCH_ARG(torch::ExpandingArray<2>, kernel_size);
  TORCH_ARG(int64_t, rank);
  TORCH_ARG(torch::ExpandingArray<2>, stride) = 1;
  TORCH_ARG(torch::ExpandingArray<2>, padding) = 0;
  TORCH_ARG(torch::ExpandingArray<2>, dilation) = 1;
  TORCH_ARG(bool, bias) = true;
};

// Throws c10::ValueError naming `module` unless channels and rank are positive, kernel_size,
// stride and dilation positive, padding non-negative and, when rank_at_most_patch
// (QuadraticConv2d), rank ≤ in_channels·kh·kw (check_layer_sizes' reason, in the patch space).
void check_conv_options(const char* module, const QuadraticConv2dOptions& options, bool rank_at_most_patch);

// y_i(p) = h(p)^T S_i h(p) + b_i with h = conv2d(x, weight): a convolution to `rank` channels,
// then one quadratic form of the rank-vector per output channel at every pixel. Each output is
// a quadratic form of the input patch: A_i = W^T sym(S_i) W with W = weight.flatten(1).
// Parameters: weight (rank, in_channels, kh, kw), S (out_channels, rank, rank), bias (out_channels).
class QuadraticConv2dImpl : public torch::nn::Cloneable<QuadraticConv2dImpl> {
 public:
  QuadraticConv2dImpl(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<2> kernel_size, int64_t rank)
      : QuadraticConv2dImpl(QuadraticConv2dOptions(in_channels, out_channels, kernel_size, rank)) {}
  explicit QuadraticConv2dImpl(const QuadraticConv2dOptions& options);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  // x (N, in_channels, H, W) or (in_channels, H, W) -> (N, out_channels, H', W') (or unbatched)
  torch::Tensor forward(const torch::Tensor& x);
  // Canonical matrices of the patch space: (out_channels, C·kh·kw, C·kh·kw).
  torch::Tensor canonical() const;
  // Free parameters: rank·C·kh·kw + out·rank(rank+1)/2 (+ out for the bias).
  int64_t num_parameters() const;

  QuadraticConv2dOptions options;
  torch::Tensor weight, S, bias;
};
TORCH_MODULE(QuadraticConv2d);

// The diagonal ("squared activation") convolution y_i(p) = Σ_j alpha_ij h_j(p)^2 + b_i.
// Parameters: weight (rank, in_channels, kh, kw), alpha (out_channels, rank), bias (out_channels).
class DiagonalQuadraticConv2dImpl : public torch::nn::Cloneable<DiagonalQuadraticConv2dImpl> {
 public:
  DiagonalQuadraticConv2dImpl(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<2> kernel_size,
                              int64_t rank)
      : DiagonalQuadraticConv2dImpl(QuadraticConv2dOptions(in_channels, out_channels, kernel_size, rank)) {}
  explicit DiagonalQuadraticConv2dImpl(const QuadraticConv2dOptions& options);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor canonical() const;
  int64_t num_parameters() const;

  QuadraticConv2dOptions options;
  torch::Tensor weight, alpha, bias;
};
TORCH_MODULE(DiagonalQuadraticConv2d);

// A DiagonalQuadraticConv2d with rank(rank+1)/2 channels computing exactly what `layer` computes
// (the inclusion of quadratic_layer.h's to_diagonal, applied to the flattened filters).
DiagonalQuadraticConv2d to_diagonal(const QuadraticConv2d& layer);

struct PolynomialConvBlockOptions {
  PolynomialConvBlockOptions(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<2> kernel_size,
                             int64_t rank)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size), rank_(rank) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  TORCH_ARG(torch::ExpandingArray<2>, kernel_size);
  TORCH_ARG(int64_t, rank);
  TORCH_ARG(torch::ExpandingArray<2>, stride) = 1;
  TORCH_ARG(torch::ExpandingArray<2>, padding) = 0;
  TORCH_ARG(torch::ExpandingArray<2>, dilation) = 1;
  TORCH_ARG(bool, skip) = true;
  TORCH_ARG(bool, bias) = true;
  // BatchNorm2d without affine parameters on the output (an affine map in eval mode).
  TORCH_ARG(bool, norm) = false;
  // Average pooling (window = stride = pool) after the norm; 1: none. Linear, so the block
  // stays a polynomial (max pooling would not).
  TORCH_ARG(int64_t, pool) = 1;
  // BatchNorm2d(rank) (affine) on the filter outputs h = conv2d(x, W), before the quadratic
  // forms: the forms then take products of unit-scale factors. Still a quadratic polynomial of
  // the input in eval mode, but no longer x^T A_i x: GLRAMSGD refuses such a block.
  TORCH_ARG(bool, rank_norm) = false;
};

// y = pool(norm(QuadConv(x) + Conv1x1(x))): a QuadraticConv2d ("quadratic") with a bias-free
// 1×1 convolution skip ("skip", same stride), so L stacked blocks hold every monomial of degree
// ≤ 2^L of the pixels in their receptive field. The skip needs the quadratic convolution's
// output size to be the input's (divided by the stride): padding = dilation·(kernel_size − 1)/2.
// With rank_norm, the forms act on rank_norm(conv2d(x, quadratic->weight)) (quadratic's S and
// bias). Submodules: quadratic, rank_norm, skip, norm, pool.
class PolynomialConvBlockImpl : public torch::nn::Cloneable<PolynomialConvBlockImpl> {
 public:
  PolynomialConvBlockImpl(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<2> kernel_size, int64_t rank)
      : PolynomialConvBlockImpl(PolynomialConvBlockOptions(in_channels, out_channels, kernel_size, rank)) {}
  explicit PolynomialConvBlockImpl(const PolynomialConvBlockOptions& options);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x);
  int64_t degree() const { return 2; }
  int64_t num_parameters() const;

  PolynomialConvBlockOptions options;
  QuadraticConv2d quadratic{nullptr};
  torch::nn::BatchNorm2d rank_norm{nullptr};  // null when options.rank_norm() is false
  torch::nn::Conv2d skip{nullptr};            // null when options.skip() is false
  torch::nn::BatchNorm2d norm{nullptr};       // null when options.norm() is false
  torch::nn::AvgPool2d pool{nullptr};         // null when options.pool() is 1
};
TORCH_MODULE(PolynomialConvBlock);

}  // namespace nn
}  // namespace quadnet
