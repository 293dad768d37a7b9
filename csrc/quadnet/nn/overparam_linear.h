#pragma once
// Overparameterized linear layers (docs/end_to_end.rst): a weight W_e (out × in) replaced by a
// product W_N ⋯ W_1 of `depth` factors. Parameter names match quadnet.nn.OverparamLinear in Python.

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/parameterlist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <ostream>
#include <string>
#include <vector>

namespace quadnet {
namespace nn {

struct OverparamLinearOptions {
  OverparamLinearOptions(int64_t in_features, int64_t out_features, int64_t depth)
      : in_features_(in_features), out_features_(out_features), depth_(depth) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(int64_t, depth);
  // Hidden width of every factor; 0: min(in_features, out_features) (no bottleneck, and the
  // size-1 hidden layers of Arora, Cohen & Hazan's experiments for a scalar output).
  TORCH_ARG(int64_t, width) = 0;
  TORCH_ARG(bool, bias) = true;
  // "balanced": the balanced factorisation of a near-zero random matrix (entries
  //   N(0, init_scale²)); "identity": every factor the (rectangular) identity.
  TORCH_ARG(std::string, init) = "balanced";
  TORCH_ARG(double, init_scale) = 1e-2;
  // When defined, overrides `init`: the balanced factorisation of this (out × in) matrix.
  TORCH_ARG(torch::Tensor, weight);
};

// y = x (W_N ⋯ W_1)^T + b. Parameters: factors.0 (width × in), factors.1 … (width × width),
// factors.{N-1} (out × width), bias (out). depth 1 is an ordinary linear layer.
class OverparamLinearImpl : public torch::nn::Cloneable<OverparamLinearImpl> {
 public:
  OverparamLinearImpl(int64_t in_features, int64_t out_features, int64_t depth)
      : OverparamLinearImpl(OverparamLinearOptions(in_features, out_features, depth)) {}
  explicit OverparamLinearImpl(const OverparamLinearOptions& options);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  // x (..., in_features) -> (..., out_features); chains the factors or multiplies by the
  // end-to-end matrix, whichever costs fewer flops for this batch.
  torch::Tensor forward(const torch::Tensor& x);
  // The end-to-end matrix W_N ⋯ W_1 (out × in), differentiable.
  torch::Tensor end_to_end() const;
  // An equivalent torch::nn::Linear (weight = end_to_end(), bias copied).
  torch::nn::Linear collapse() const;
  int64_t width() const;

  OverparamLinearOptions options;
  torch::nn::ParameterList factors{nullptr};
  torch::Tensor bias;
};
TORCH_MODULE(OverparamLinear);

// W_N ⋯ W_1 for factors [W_1, …, W_N].
torch::Tensor chain_product(const std::vector<torch::Tensor>& factors);

// A balanced factorisation of `matrix` (out × in) into `depth` factors of hidden width `width`
// (≥ rank needed; checked): with matrix = U Σ V^T, W_1 = Σ^{1/N} V^T, middle factors Σ^{1/N},
// W_N = U Σ^{1/N}, zero-padded to the width, so W_{j+1}^T W_{j+1} = W_j W_j^T and the product
// is `matrix` to rounding. Returns [W_1, …, W_N].
std::vector<torch::Tensor> balanced_factors(const torch::Tensor& matrix, int64_t depth, int64_t width);

namespace init {
// OverparamLinear's initialisation, shared by the C++ and Python modules (same RNG stream).
// factors [W_1 (width × in), …, W_N (out × width)] and bias (out, or undefined) are filled in
// place. With `weight` (out × in) defined: its balanced factorisation, bias zero. Otherwise
// `init`: "balanced" — the balanced factorisation of init_scale · N(0, 1) entries (drawn in
// the default dtype, factorised in float64); "identity" — every factor the rectangular
// identity; bias U(−1/√in, 1/√in) as nn.Linear. Both need width ≥ min(in, out) (depth > 1).
void overparam_linear_(std::vector<torch::Tensor> factors, torch::Tensor bias, const std::string& init,
                       double init_scale, const torch::Tensor& weight = {});
}  // namespace init

}  // namespace nn
}  // namespace quadnet
