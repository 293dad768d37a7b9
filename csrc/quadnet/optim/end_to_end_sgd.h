#pragma once
// EndToEndSGD: the closed-form dynamics of a depth-N linear network applied to an ordinary
// weight (docs/end_to_end.rst, Arora, Cohen & Hazan 2018), as a torch::optim::Optimizer.

#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>

#include <vector>

namespace quadnet {
namespace optim {

// ---- the update rule, shared by the C++ optimizer and Python's quadnet.optim.EndToEndSGD ----

// The end-to-end preconditioned gradient of a depth-N factorisation of `weight`:
//   P(∇) = Σ_{j=1..N} (W W^T)^{(j−1)/N} ∇ (W^T W)^{(N−j)/N}      (exponent 0: the identity)
// for a matrix weight (m × k), computed from a thin SVD. For a vector (k) or a 1-row matrix
// the single-output closed form ||W||^{2−2/N} (∇ + (N−1)·Pr_W(∇)) is used. depth 1: ∇.
torch::Tensor end_to_end_direction(const torch::Tensor& weight, const torch::Tensor& grad, int64_t depth);

// weight − lr · end_to_end_direction(weight, grad, depth). Pure. Throws if the result is not
// finite.
torch::Tensor end_to_end_update(const torch::Tensor& weight, const torch::Tensor& grad, double lr, int64_t depth);

// ---- the C++ optimizer ----

struct EndToEndSGDOptions : public torch::optim::OptimizerCloneableOptions<EndToEndSGDOptions> {
  EndToEndSGDOptions(double lr, int64_t depth = 2) : lr_(lr), depth_(depth) {}
  TORCH_ARG(double, lr);
  // Depth N of the emulated factorisation; 1 is plain SGD (e.g. for a group of biases).
  TORCH_ARG(int64_t, depth);
  TORCH_ARG(bool, maximize) = false;  // as torch.optim.SGD: ascend the objective

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

// Matrices (2-D parameters) move by the end-to-end rule of their group's depth; 1-D
// parameters are biases and get plain SGD; other shapes are rejected at construction.
// Stateless apart from the param groups. A step that would produce NaN/Inf throws and leaves
// every parameter as it was.
class EndToEndSGD : public torch::optim::Optimizer {
 public:
  EndToEndSGD(std::vector<torch::optim::OptimizerParamGroup> param_groups, EndToEndSGDOptions defaults);
  EndToEndSGD(std::vector<torch::Tensor> params, EndToEndSGDOptions defaults)
      : EndToEndSGD({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

  torch::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
};

}  // namespace optim
}  // namespace quadnet
