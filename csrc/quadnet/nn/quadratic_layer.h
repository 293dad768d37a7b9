#pragma once
// Quadratic layers as torch::nn modules. Parameter names match the Python modules
// (quadnet.nn.QuadraticLayer / DiagonalQuadraticLayer), so state dicts move between them.

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <ostream>

namespace quadnet {
namespace nn {

struct QuadraticLayerOptions {
  QuadraticLayerOptions(int64_t in_features, int64_t out_features, int64_t rank)
      : in_features_(in_features), out_features_(out_features), rank_(rank) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(int64_t, rank);
  TORCH_ARG(bool, bias) = true;
};

// y_i = (W x)^T S_i (W x) + b_i with symmetric S_i (DESIGN §1).
// Parameters: weight (rank, in_features), S (out_features, rank, rank), bias (out_features).
class QuadraticLayerImpl : public torch::nn::Cloneable<QuadraticLayerImpl> {
 public:
  QuadraticLayerImpl(int64_t in_features, int64_t out_features, int64_t rank)
      : QuadraticLayerImpl(QuadraticLayerOptions(in_features, out_features, rank)) {}
  explicit QuadraticLayerImpl(const QuadraticLayerOptions& options);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  // x (..., in_features) -> (..., out_features)
  torch::Tensor forward(const torch::Tensor& x);
  // Canonical matrices A_i = W^T sym(S_i) W: (out_features, in_features, in_features).
  torch::Tensor canonical() const;
  // Free parameters: rank·in + out·rank(rank+1)/2 (+ out for the bias); S_i counted once.
  int64_t num_parameters() const;

  QuadraticLayerOptions options;
  torch::Tensor weight, S, bias;
};
TORCH_MODULE(QuadraticLayer);

struct DiagonalQuadraticLayerOptions {
  DiagonalQuadraticLayerOptions(int64_t in_features, int64_t out_features, int64_t rank)
      : in_features_(in_features), out_features_(out_features), rank_(rank) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(int64_t, rank);
  TORCH_ARG(bool, bias) = true;
};

// The older squared-activation model y = alpha (W x)^{∘2} + b.
// Parameters: weight (rank, in_features), alpha (out_features, rank), bias (out_features).
class DiagonalQuadraticLayerImpl : public torch::nn::Cloneable<DiagonalQuadraticLayerImpl> {
 public:
  DiagonalQuadraticLayerImpl(int64_t in_features, int64_t out_features, int64_t rank)
      : DiagonalQuadraticLayerImpl(DiagonalQuadraticLayerOptions(in_features, out_features, rank)) {}
  explicit DiagonalQuadraticLayerImpl(const DiagonalQuadraticLayerOptions& options);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor canonical() const;
  int64_t num_parameters() const;

  DiagonalQuadraticLayerOptions options;
  torch::Tensor weight, alpha, bias;
};
TORCH_MODULE(DiagonalQuadraticLayer);

namespace init {
// Default initialisation shared by the C++ and Python modules (same RNG stream):
// weight like nn.Linear (kaiming-uniform, a=√5), S_i symmetric with entries of
// U(-1/rank, 1/rank) before symmetrisation, bias U(-1/√in, 1/√in). In place.
void quadratic_layer_(torch::Tensor& weight, torch::Tensor& S, torch::Tensor& bias);
// weight as above, alpha U(-1/rank, 1/rank), bias as above. In place.
void diagonal_quadratic_layer_(torch::Tensor& weight, torch::Tensor& alpha, torch::Tensor& bias);
}  // namespace init

}  // namespace nn
}  // namespace quadnet
