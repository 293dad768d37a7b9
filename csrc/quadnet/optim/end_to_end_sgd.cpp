#include "end_to_end_sgd.h"

#include <ATen/ATen.h>
#include <torch/serialize/archive.h>

#include <cmath>
#include <limits>
#include <utility>

#include "../utils/checks.h"
#include "detail.h"

namespace quadnet {
namespace optim {

namespace {
// Single output: ||w||^{2−2/N} (∇ + (N−1) (∇·ŵ) ŵ) on flattened w (zero step at w = 0, N > 1).
at::Tensor single_output_direction(const at::Tensor& w, const at::Tensor& g, int64_t depth) {
  const double N = static_cast<double>(depth);
  auto norm = w.norm();
  auto unit = w / norm.clamp_min(std::numeric_limits<double>::min());
  auto along = (g * unit).sum() * unit;
  return norm.pow(2.0 - 2.0 / N) * (g + (N - 1) * along);
}

// Σ_j (W W^T)^{(j−1)/N} ∇ (W^T W)^{(N−j)/N} from W = U diag(σ) V^T (thin): the j = 1 and j = N
// terms hold an exact identity, (W W^T)^0 = I (not U U^T); the others live in the SVD basis,
// U (M ∘ U^T ∇ V) V^T with M_ab = Σ_{j=2..N−1} σ_a^{2(j−1)/N} σ_b^{2(N−j)/N}.
at::Tensor matrix_direction(const at::Tensor& W, const at::Tensor& g, int64_t depth) {
  const double N = static_cast<double>(depth);
  auto svd = at::linalg_svd(W, /*full_matrices=*/false);
  const auto& U = std::get<0>(svd);
  const auto& sigma = std::get<1>(svd);
  auto V = std::get<2>(svd).t();
  auto outer = sigma.pow(2.0 * (N - 1) / N);                     // σ^{2(N−1)/N}
  auto first = at::mm(g, V * outer.unsqueeze(0)).mm(V.t());      // j = 1: ∇ (W^T W)^{(N−1)/N}
  auto last = at::mm(U * outer.unsqueeze(0), at::mm(U.t(), g));  // j = N: (W W^T)^{(N−1)/N} ∇
  auto direction = first + last;
  if (depth > 2) {
    auto M = at::zeros({sigma.size(0), sigma.size(0)}, sigma.options());
    for (int64_t j = 2; j < depth; ++j) {
      M += at::outer(sigma.pow(2.0 * (j - 1) / N), sigma.pow(2.0 * (N - j) / N));
    }
    direction += at::mm(U, at::mm(M * at::mm(U.t(), at::mm(g, V)), V.t()));
  }
  return direction;
}

// The optimizer keeps no per-parameter state; torch::optim::serialize still wants a type.
struct NoParamState : public torch::optim::OptimizerCloneableParamState<NoParamState> {
  void serialize(torch::serialize::InputArchive&) override {}
  void serialize(torch::serialize::OutputArchive&) const override {}
};
}  // namespace

torch::Tensor end_to_end_direction(const torch::Tensor& weight, const torch::Tensor& grad, int64_t depth) {
  constexpr const char* op = "end_to_end_direction";
  TORCH_CHECK(depth >= 1, op, ": depth must be >= 1, got ", depth);
  TORCH_CHECK(weight.dim() == 1 || weight.dim() == 2, op,
              ": the end-to-end rule applies to matrices (out, in) and vectors (in), got weight of shape ",
              weight.sizes());
  TORCH_CHECK(grad.sizes() == weight.sizes(), op, ": grad of shape ", grad.sizes(), " does not match weight of shape ",
              weight.sizes());
  utils::check_same_floating(op, {{"weight", weight}, {"grad", grad}});
  if (depth == 1) return grad.clone();
  if (weight.dim() == 1 || weight.size(0) == 1) return single_output_direction(weight, grad, depth);
  return matrix_direction(weight, grad, depth);
}

torch::Tensor end_to_end_update(const torch::Tensor& weight, const torch::Tensor& grad, double lr, int64_t depth) {
  TORCH_CHECK(std::isfinite(lr) && lr >= 0, "end_to_end_update: lr must be a finite number >= 0, got ", lr);
  auto updated = weight - end_to_end_direction(weight, grad, depth) * lr;
  detail::check_finite_update("EndToEndSGD", "a parameter", updated);
  return updated;
}

void EndToEndSGDOptions::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(depth);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(maximize);
}

void EndToEndSGDOptions::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(int64_t, depth);
  // absent from archives written before the option existed: its default, as in Python
  c10::IValue value;
  maximize(archive.try_read("maximize", value) ? value.toBool() : EndToEndSGDOptions(lr()).maximize());
}

EndToEndSGD::EndToEndSGD(std::vector<torch::optim::OptimizerParamGroup> param_groups, EndToEndSGDOptions defaults)
    : Optimizer(std::vector<torch::optim::OptimizerParamGroup>{}, std::make_unique<EndToEndSGDOptions>(defaults)) {
  detail::add_param_groups(*this, param_groups);
  for (const auto& group : param_groups_) {
    const auto& options = static_cast<const EndToEndSGDOptions&>(group.options());
    TORCH_CHECK(options.lr() >= 0, "EndToEndSGD: lr must be >= 0, got ", options.lr());
    TORCH_CHECK(options.depth() >= 1, "EndToEndSGD: depth must be >= 1, got ", options.depth());
    for (const auto& p : group.params()) {
      TORCH_CHECK(p.dim() == 1 || p.dim() == 2 || options.depth() == 1, "EndToEndSGD: a parameter of shape ", p.sizes(),
                  " is neither a matrix nor a bias; put it in a param group with depth 1 (plain SGD)");
    }
  }
}

torch::Tensor EndToEndSGD::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  std::vector<std::pair<torch::Tensor, torch::Tensor>> commits;
  for (auto& group : param_groups_) {
    const auto& options = static_cast<const EndToEndSGDOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const auto depth = p.dim() == 2 ? options.depth() : 1;  // 1-D: a bias, plain SGD
      commits.emplace_back(p, end_to_end_update(p, options.maximize() ? -p.grad() : p.grad(), options.lr(), depth));
    }
  }
  for (auto& commit : commits) commit.first.copy_(commit.second);
  return loss;
}

void EndToEndSGD::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<NoParamState, EndToEndSGDOptions>(archive, *this);
  detail::save_group_options<EndToEndSGDOptions>(archive, *this);
}

void EndToEndSGD::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<NoParamState, EndToEndSGDOptions>(archive, *this);
  detail::load_group_options<EndToEndSGDOptions>(archive, *this);
}

}  // namespace optim
}  // namespace quadnet
