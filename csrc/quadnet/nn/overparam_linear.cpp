#include "overparam_linear.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

#include "../utils/checks.h"
#include "detail.h"

namespace quadnet {
namespace nn {

namespace {
int64_t resolved_width(const OverparamLinearOptions& o) {
  return o.width() > 0 ? o.width() : std::min(o.in_features(), o.out_features());
}
}  // namespace

torch::Tensor chain_product(const std::vector<torch::Tensor>& factors) {
  TORCH_CHECK(!factors.empty(), "chain_product: expected at least one factor");
  auto product = factors.front();
  for (size_t j = 1; j < factors.size(); ++j) product = at::mm(factors[j], product);
  return product;
}

std::vector<torch::Tensor> balanced_factors(const torch::Tensor& matrix, int64_t depth, int64_t width) {
  constexpr const char* op = "balanced_factors";
  TORCH_CHECK(matrix.dim() == 2, op, ": expected a matrix (out_features, in_features), got shape ", matrix.sizes());
  TORCH_CHECK(depth >= 1, op, ": depth must be >= 1, got ", depth);
  TORCH_CHECK(width >= 1, op, ": width must be >= 1, got ", width);
  TORCH_CHECK(matrix.is_floating_point(), op, ": expected a floating-point matrix, got ", matrix.scalar_type());
  TORCH_CHECK(utils::all_finite(matrix), op, ": matrix contains NaN or Inf");
  if (depth == 1) return {matrix.clone()};
  const auto out = matrix.size(0), in = matrix.size(1);
  auto svd = at::linalg_svd(matrix.to(at::kDouble), /*full_matrices=*/false);
  auto U = std::get<0>(svd), sigma = std::get<1>(svd), Vh = std::get<2>(svd);
  const double largest = sigma.numel() > 0 ? sigma.max().item<double>() : 0.0;
  const auto rank = (sigma > largest * 1e-12 * std::max(out, in)).sum().item<int64_t>();
  TORCH_CHECK(rank <= width, op, ": width=", width, " is smaller than the rank of the matrix (", rank,
              "); the product of the factors could not equal it");
  const auto kept = std::min(width, sigma.size(0));
  U = U.narrow(1, 0, kept);
  Vh = Vh.narrow(0, 0, kept);
  auto root = sigma.narrow(0, 0, kept).pow(1.0 / static_cast<double>(depth));
  auto pad = [&](const at::Tensor& t, int64_t rows, int64_t cols) {
    auto padded = at::zeros({rows, cols}, t.options());
    padded.narrow(0, 0, t.size(0)).narrow(1, 0, t.size(1)).copy_(t);
    return padded;
  };
  std::vector<torch::Tensor> factors;
  factors.push_back(pad(root.unsqueeze(1) * Vh, width, in));
  for (int64_t j = 1; j + 1 < depth; ++j) factors.push_back(pad(at::diag(root), width, width));
  factors.push_back(pad(U * root.unsqueeze(0), out, width));
  for (auto& f : factors) f = f.to(matrix.scalar_type());
  return factors;
}

namespace init {
void overparam_linear_(std::vector<torch::Tensor> factors, torch::Tensor bias, const std::string& init,
                       double init_scale, const torch::Tensor& weight) {
  constexpr const char* op = "OverparamLinear";
  TORCH_CHECK(!factors.empty(), op, ": expected at least one factor");
  torch::NoGradGuard no_grad;
  const auto depth = static_cast<int64_t>(factors.size());
  const auto in = factors.front().size(1), out = factors.back().size(0), width = factors.front().size(0);
  std::vector<torch::Tensor> values;
  if (weight.defined()) {
    values = balanced_factors(weight, depth, width);
  } else {
    TORCH_CHECK(init == "balanced" || init == "identity", op,
                ": init must be \"balanced\" or \"identity\" (or a given weight), got \"", init, "\"");
    TORCH_CHECK(depth == 1 || width >= std::min(in, out), op, ": init=\"", init,
                "\" needs width >= ", "min(in_features, out_features) = ", std::min(in, out), ", got width=", width);
    if (init == "balanced") {
      TORCH_CHECK(std::isfinite(init_scale) && init_scale >= 0, op, ": init_scale must be a finite number >= 0, got ",
                  init_scale);
      values = balanced_factors((at::randn({out, in}) * init_scale).to(at::kDouble), depth, width);
    } else {
      for (const auto& f : factors) values.push_back(at::eye(f.size(0), f.size(1)));
    }
  }
  for (size_t j = 0; j < factors.size(); ++j) factors[j].copy_(values[j]);
  if (!bias.defined()) return;
  if (weight.defined()) {
    bias.zero_();
  } else {
    detail::linear_bias_(bias, in);
  }
}
}  // namespace init

// ---------------------------------------------------------------------------------------------
// OverparamLinear

OverparamLinearImpl::OverparamLinearImpl(const OverparamLinearOptions& options_) : options(options_) { reset(); }

void OverparamLinearImpl::reset() {
  const auto in = options.in_features(), out = options.out_features();
  TORCH_CHECK(in > 0 && out > 0, "OverparamLinear: in_features and out_features must be positive, got in_features=", in,
              ", out_features=", out);
  TORCH_CHECK(options.depth() >= 1, "OverparamLinear: depth must be >= 1, got ", options.depth());
  TORCH_CHECK(options.width() >= 0, "OverparamLinear: width must be positive (or 0 for the default), got ",
              options.width());
  if (options.weight().defined()) {
    TORCH_CHECK(options.weight().dim() == 2 && options.weight().size(0) == out && options.weight().size(1) == in,
                "OverparamLinear: expected weight of shape (out_features=", out, ", in_features=", in, "), got shape ",
                options.weight().sizes());
  }
  factors = register_module("factors", torch::nn::ParameterList());
  const auto w = width();
  for (int64_t j = 0; j < options.depth(); ++j) {
    const auto rows = j + 1 == options.depth() ? out : w, cols = j == 0 ? in : w;
    // ParameterList::append registers with the tensor's own requires_grad flag.
    factors->append(torch::empty({rows, cols}).requires_grad_(true));
  }
  bias = detail::register_bias(*this, options.bias(), out);
  reset_parameters();
}

void OverparamLinearImpl::reset_parameters() {
  init::overparam_linear_(factors->parameters(), bias, options.init(), options.init_scale(), options.weight());
}

void OverparamLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "quadnet::nn::OverparamLinear(in_features=" << options.in_features()
         << ", out_features=" << options.out_features() << ", depth=" << options.depth() << ", width=" << width()
         << ", bias=" << (bias.defined() ? "true" : "false") << ")";
}

int64_t OverparamLinearImpl::width() const { return resolved_width(options); }

torch::Tensor OverparamLinearImpl::end_to_end() const { return chain_product(factors->parameters()); }

torch::Tensor OverparamLinearImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == options.in_features(), "OverparamLinear: expected input of shape (*, ",
              "in_features=", options.in_features(), "), got shape ", x.sizes());
  const auto rows = x.numel() / options.in_features();
  // Flops of chaining the factors over the batch vs forming W_e (right to left) and one GEMM.
  int64_t chained = 0, collapsed = 0;
  const auto list = factors->parameters();
  for (const auto& f : list) chained += rows * f.size(0) * f.size(1);
  for (size_t j = 1; j < list.size(); ++j) collapsed += list[j].size(0) * list[j].size(1) * options.in_features();
  collapsed += rows * options.out_features() * options.in_features();
  torch::Tensor y;
  if (chained <= collapsed) {
    y = x;
    for (const auto& f : list) y = at::matmul(y, f.t());
  } else {
    y = at::matmul(x, end_to_end().t());
  }
  return detail::add_bias(y, bias);
}

torch::nn::Linear OverparamLinearImpl::collapse() const {
  torch::nn::Linear linear(
      torch::nn::LinearOptions(options.in_features(), options.out_features()).bias(bias.defined()));
  torch::NoGradGuard no_grad;
  auto weight = end_to_end();
  linear->to(weight.device(), weight.scalar_type());
  linear->weight.copy_(weight);
  if (bias.defined()) linear->bias.copy_(bias);
  return linear;
}

}  // namespace nn
}  // namespace quadnet
