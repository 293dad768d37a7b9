#include "quadratic_layer.h"

#include <algorithm>

#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/nn/init.h>
#include <torch/types.h>

#include <c10/util/accumulate.h>

#include <cmath>

#include "../ops/quadratic_form.h"
#include "../utils/symmetric.h"
#include "detail.h"

namespace quadnet {
namespace nn {

namespace init {
namespace {
// nn.Linear's (and, for a (rank, C, kh, kw) weight, nn.Conv2d's) init: fan-in = weight[0].numel().
void linear_weight_and_bias_(torch::Tensor& weight, torch::Tensor& bias) {
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  detail::linear_bias_(bias, weight[0].numel());
}
}  // namespace

void quadratic_layer_(torch::Tensor& weight, torch::Tensor& S, torch::Tensor& bias) {
  torch::NoGradGuard no_grad;
  linear_weight_and_bias_(weight, bias);
  const double bound = 1.0 / static_cast<double>(S.size(-1));
  S.uniform_(-bound, bound);
  S.copy_(utils::symmetric_part(S));
}

void diagonal_quadratic_layer_(torch::Tensor& weight, torch::Tensor& alpha, torch::Tensor& bias) {
  torch::NoGradGuard no_grad;
  linear_weight_and_bias_(weight, bias);
  const double bound = 1.0 / static_cast<double>(alpha.size(-1));
  alpha.uniform_(-bound, bound);
}
}  // namespace init

namespace {

void print_sizes(std::ostream& stream, const char* module, int64_t in, int64_t out, int64_t rank, bool bias) {
  stream << "quadnet::nn::" << module << "(in_features=" << in << ", out_features=" << out << ", rank=" << rank
         << ", bias=" << (bias ? "true" : "false") << ")";
}
}  // namespace

using detail::add_bias;
using detail::register_bias;

// ---------------------------------------------------------------------------------------------
// QuadraticLayer

void check_layer_sizes(const char* module, int64_t in, int64_t out, int64_t rank, bool rank_at_most_in) {
  TORCH_CHECK_VALUE(in > 0 && out > 0 && rank > 0, module,
                    ": in_features, out_features and rank must be positive, got in_features=", in,
                    ", out_features=", out, ", rank=", rank);
  TORCH_CHECK_VALUE(!rank_at_most_in || rank <= in, module, ": rank must be at most in_features (", in,
                    "), got rank=", rank,
                    ": A_i = W^T S_i W has rank at most in_features anyway, and projection "
                    "optimizers need orthonormal weight rows");
}

bool backward_accumulates_into(const torch::Tensor& param) {
  const auto* exec_info = torch::autograd::get_current_graph_task_exec_info();
  if (exec_info == nullptr || exec_info->empty()) return true;  // .backward() without inputs: every leaf
  const auto accumulator = torch::autograd::impl::try_get_grad_accumulator(param);
  if (!accumulator) return false;
  const auto entry = exec_info->find(accumulator.get());
  return entry != exec_info->end() && entry->second.should_execute();
}

QuadraticLayerImpl::QuadraticLayerImpl(const QuadraticLayerOptions& options_) : options(options_) { reset(); }

void QuadraticLayerImpl::reset() {
  check_layer_sizes("QuadraticLayer", options.in_features(), options.out_features(), options.rank(), true);
  weight = register_parameter("weight", torch::empty({options.rank(), options.in_features()}));
  S = register_parameter("S", torch::empty({options.out_features(), options.rank(), options.rank()}));
  bias = register_bias(*this, options.bias(), options.out_features());
  capture_ = std::make_shared<CaptureSink>();  // a clone() must not share the original's captures
  reset_parameters();
}

void QuadraticLayerImpl::reset_parameters() { init::quadratic_layer_(weight, S, bias); }

void QuadraticLayerImpl::pretty_print(std::ostream& stream) const {
  print_sizes(stream, "QuadraticLayer", options.in_features(), options.out_features(), options.rank(), options.bias());
}

torch::Tensor QuadraticLayerImpl::forward(const torch::Tensor& x) {
  auto y = quadratic_form(x, weight, S);
  if (capture_->users > 0 && is_training() && y.requires_grad()) {
    std::weak_ptr<CaptureSink> sink = capture_;
    const auto out = options.out_features();
    y.register_hook(
        [sink, out, weight = weight, flat = x.detach().reshape({-1, x.size(-1)})](const torch::Tensor& grad) {
          auto target = sink.lock();
          if (!target || target->users == 0) return;
          if (at::GradMode::is_enabled()) target->create_graph = true;  // the pass records its own graph
          if (backward_accumulates_into(weight)) target->pairs.emplace_back(flat, grad.reshape({-1, out}));
        });
  }
  return add_bias(y, bias);
}

void QuadraticLayerImpl::set_capture(bool enabled) {
  capture_->users = enabled ? capture_->users + 1 : std::max<int64_t>(0, capture_->users - 1);
  if (capture_->users == 0) capture_->pairs.clear();
}

std::pair<torch::Tensor, torch::Tensor> QuadraticLayerImpl::captured() const {
  if (capture_->pairs.empty()) return {};
  std::vector<torch::Tensor> xs, gs;
  for (const auto& pair : capture_->pairs) {
    xs.push_back(pair.first);
    gs.push_back(pair.second);
  }
  return {torch::cat(xs), torch::cat(gs)};
}

torch::Tensor QuadraticLayerImpl::canonical() const { return canonical_form(weight, S); }

int64_t QuadraticLayerImpl::num_parameters() const { return num_free_parameters(*this); }

// ---------------------------------------------------------------------------------------------
// DiagonalQuadraticLayer

DiagonalQuadraticLayerImpl::DiagonalQuadraticLayerImpl(const DiagonalQuadraticLayerOptions& options_)
    : options(options_) {
  reset();
}

void DiagonalQuadraticLayerImpl::reset() {
  check_layer_sizes("DiagonalQuadraticLayer", options.in_features(), options.out_features(), options.rank(), false);
  weight = register_parameter("weight", torch::empty({options.rank(), options.in_features()}));
  alpha = register_parameter("alpha", torch::empty({options.out_features(), options.rank()}));
  bias = register_bias(*this, options.bias(), options.out_features());
  reset_parameters();
}

void DiagonalQuadraticLayerImpl::reset_parameters() { init::diagonal_quadratic_layer_(weight, alpha, bias); }

void DiagonalQuadraticLayerImpl::pretty_print(std::ostream& stream) const {
  print_sizes(stream, "DiagonalQuadraticLayer", options.in_features(), options.out_features(), options.rank(),
              options.bias());
}

torch::Tensor DiagonalQuadraticLayerImpl::forward(const torch::Tensor& x) {
  return add_bias(diagonal_quadratic_form(x, weight, alpha), bias);
}

torch::Tensor DiagonalQuadraticLayerImpl::canonical() const { return diagonal_canonical_form(weight, alpha); }

int64_t DiagonalQuadraticLayerImpl::num_parameters() const { return num_free_parameters(*this); }

// ---------------------------------------------------------------------------------------------
// Free parameters

int64_t num_free_parameters(const std::string& name, torch::IntArrayRef sizes) {
  const bool named_S = name == "S" || (name.size() > 2 && name.compare(name.size() - 2, 2, ".S") == 0);
  if (named_S && sizes.size() == 3 && sizes[1] == sizes[2]) return sizes[0] * sizes[1] * (sizes[1] + 1) / 2;
  return c10::multiply_integers(sizes);
}

int64_t num_free_parameters(const torch::nn::Module& module) {
  int64_t count = 0;
  for (const auto& parameter : module.named_parameters(/*recurse=*/true))
    count += num_free_parameters(parameter.key(), parameter.value().sizes());
  return count;
}

// ---------------------------------------------------------------------------------------------
// Symmetric -> diagonal model

std::pair<torch::Tensor, torch::Tensor> diagonal_parameters(const torch::Tensor& weight, const torch::Tensor& S) {
  TORCH_CHECK(weight.dim() == 2, "diagonal_parameters: expected weight of shape (rank, in_features), got shape ",
              weight.sizes());
  const int64_t r = weight.size(0);
  TORCH_CHECK(S.dim() == 3 && S.size(1) == r && S.size(2) == r,
              "diagonal_parameters: expected S of shape (out_features, rank=", r, ", rank=", r, "), got shape ",
              S.sizes());
  auto S_sym = utils::symmetric_part(S);
  std::vector<torch::Tensor> rows, alphas;
  for (int64_t i = 0; i < r; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      rows.push_back(weight[i] + weight[j]);  // (e_i + e_j)^T W
      if (i != j) {
        alphas.push_back(S_sym.select(1, i).select(1, j));  // B_ij adds 1 at (i,j) and (j,i)
      } else {
        // B_ii = 4 e_i e_i^T, and every B_ij (j ≠ i) adds 1 at (i, i).
        auto off_diagonal = S_sym.select(1, i).sum(1) - S_sym.select(1, i).select(1, i);
        alphas.push_back((S_sym.select(1, i).select(1, i) - off_diagonal) * 0.25);
      }
    }
  }
  return {torch::stack(rows), torch::stack(alphas, 1)};
}

DiagonalQuadraticLayer to_diagonal(const QuadraticLayer& layer) {
  const auto& o = layer->options;
  const int64_t neurons = o.rank() * (o.rank() + 1) / 2;
  DiagonalQuadraticLayer diagonal(
      DiagonalQuadraticLayerOptions(o.in_features(), o.out_features(), neurons).bias(o.bias()));
  diagonal->to(layer->weight.device(), layer->weight.scalar_type());
  auto params = diagonal_parameters(layer->weight.detach(), layer->S.detach());
  torch::NoGradGuard no_grad;
  diagonal->weight.copy_(params.first);
  diagonal->alpha.copy_(params.second);
  if (o.bias()) diagonal->bias.copy_(layer->bias);
  return diagonal;
}

}  // namespace nn
}  // namespace quadnet
