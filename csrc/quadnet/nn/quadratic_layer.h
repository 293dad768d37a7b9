#pragma once
// Quadratic layers as torch::nn modules. Parameter names match the Python modules
// (quadnet.nn.QuadraticLayer / DiagonalQuadraticLayer), so state dicts move between them.

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace quadnet {
namespace nn {

// Throws c10::ValueError naming `module` unless in_features, out_features and rank are positive
// and, when rank_at_most_in_features (QuadraticLayer, QuadraticConv2d with in_features the patch
// size C·kh·kw), rank ≤ in_features: A_i = W^T S_i W has rank ≤ in_features anyway, and the
// projection optimizers need orthonormal weight rows.
void check_layer_sizes(const char* module, int64_t in_features, int64_t out_features, int64_t rank,
                       bool rank_at_most_in_features);

// Called from an autograd hook: whether the backward pass running on this thread accumulates
// into param.grad (true for .backward(); false for torch.autograd.grad(outputs, inputs) and
// .backward(inputs=...) passes whose inputs exclude param).
bool backward_accumulates_into(const torch::Tensor& param);

// The free parameters of `module` and its submodules, what every quadnet module's
// num_parameters() returns: the elements of each defined parameter, except that a quadratic
// form's "S" (out, rank, rank), of which the layers use sym(S_i) only, counts its
// out·rank(rank+1)/2 free entries.
int64_t num_free_parameters(const torch::nn::Module& module);
// One parameter's share of that count, from its (dotted) name and sizes; Python's modules sum it.
int64_t num_free_parameters(const std::string& name, torch::IntArrayRef sizes);

struct QuadraticLayerOptions {
  QuadraticLayerOptions(int64_t in_features, int64_t out_features, int64_t rank)
      : in_features_(in_features), out_features_(out_features), rank_(rank) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(int64_t, rank);
  TORCH_ARG(bool, bias) = true;
};

// y_i = (W x)^T S_i (W x) + b_i with symmetric S_i (docs/quadratic_layer.rst).
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
  // Free parameters (num_free_parameters): rank·in + out·rank(rank+1)/2 (+ out for the bias).
  int64_t num_parameters() const;

  // Projection optimizers (quadnet::optim::GLRAMSGD) need each training forward's input X
  // and the gradient G = ∂ℓ/∂y that reaches its output. When capture is on, forward hooks
  // its output; X is held by that hook only, so it lives exactly as long as the autograd graph
  // (a forward that never gets a backward keeps nothing once its graph is freed). When backward
  // reaches the output, the pair (X, G) is recorded. captured() returns the recorded pairs,
  // concatenated to X (B, in_features), G (B, out_features) (undefined tensors when there are
  // none); drop_captured() forgets them (after a step, or an optimizer's zero_grad: their
  // gradients were zeroed). set_capture(true) registers a user of the captures (an optimizer),
  // set_capture(false) releases one; capture is on while any remains, and releasing the last
  // forgets the recorded pairs. Only backward passes that accumulate into weight.grad record
  // (backward_accumulates_into): a torch.autograd.grad pass over the inputs leaves .grad alone
  // and records nothing. captured_with_create_graph() says whether a backward pass through the
  // output ran with create_graph=True since the last drop_captured() (a gradient penalty, double
  // backward): its .grad may then hold terms that no (X, G) expresses.
  void set_capture(bool enabled);
  bool capture() const { return capture_->users > 0; }
  std::pair<torch::Tensor, torch::Tensor> captured() const;
  bool captured_with_create_graph() const { return capture_->create_graph; }
  void drop_captured() {
    capture_->pairs.clear();
    capture_->create_graph = false;
  }

  QuadraticLayerOptions options;
  torch::Tensor weight, S, bias;

 private:
  // Shared with the hooks through weak pointers: a hook that outlives the layer records nothing.
  struct CaptureSink {
    int64_t users = 0;
    std::vector<std::pair<torch::Tensor, torch::Tensor>> pairs;  // (X, G) per backward
    bool create_graph = false;
  };
  std::shared_ptr<CaptureSink> capture_ = std::make_shared<CaptureSink>();
};
TORCH_MODULE(QuadraticLayer);

// The same sizes and bias switch: the diagonal layer is built from QuadraticLayer's options (as
// DiagonalQuadraticConv2d from QuadraticConv2d's).
using DiagonalQuadraticLayerOptions = QuadraticLayerOptions;

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

// The constructive inclusion H_sym(d, r, n) ⊂ H_diag(d, r(r+1)/2, n) (docs/quadratic_layer.rst):
// with the rank-1 basis (e_i + e_j)(e_i + e_j)^T, j ≤ i, of symmetric r×r matrices, returns the
// (weight (r(r+1)/2, d), alpha (n, r(r+1)/2)) of a diagonal model with identical outputs.
std::pair<torch::Tensor, torch::Tensor> diagonal_parameters(const torch::Tensor& weight, const torch::Tensor& S);

// A DiagonalQuadraticLayer computing exactly what `layer` computes (bias copied).
DiagonalQuadraticLayer to_diagonal(const QuadraticLayer& layer);

namespace init {
// Default initialisation shared by the C++ and Python modules (same RNG stream):
// weight like nn.Linear (kaiming-uniform, a=√5), S_i symmetric with entries of
// U(-1/rank, 1/rank) before symmetrisation, bias U(-1/√in, 1/√in). In place. Also the
// convolutional layers' init: for a weight (rank, C, kh, kw) the fan-in is C·kh·kw (nn.Conv2d's).
void quadratic_layer_(torch::Tensor& weight, torch::Tensor& S, torch::Tensor& bias);
// weight as above, alpha U(-1/rank, 1/rank), bias as above. In place.
void diagonal_quadratic_layer_(torch::Tensor& weight, torch::Tensor& alpha, torch::Tensor& bias);
}  // namespace init

}  // namespace nn
}  // namespace quadnet
