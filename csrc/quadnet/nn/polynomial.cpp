#include "polynomial.h"

#include <c10/util/Exception.h>
#include <torch/nn/init.h>
#include <torch/utils.h>

#include <string>

namespace quadnet {
namespace nn {

// ---------------------------------------------------------------------------------------------
// PolynomialBlock

PolynomialBlockImpl::PolynomialBlockImpl(const PolynomialBlockOptions& options_) : options(options_) { reset(); }

void PolynomialBlockImpl::reset() {
  // Same construction order as Python (quadratic, its norm, then skip): same RNG stream, same init.
  quadratic = register_module(
      "quadratic", QuadraticLayer(QuadraticLayerOptions(options.in_features(), options.out_features(), options.rank())
                                      .bias(options.bias() && !options.quadratic_norm())));
  if (options.quadratic_norm()) {
    quadratic_norm = register_module(
        "quadratic_norm",
        torch::nn::BatchNorm1d(torch::nn::BatchNorm1dOptions(options.out_features()).affine(options.bias())));
  } else {
    quadratic_norm = nullptr;
  }
  if (options.skip()) {
    skip = register_module(
        "skip", torch::nn::Linear(torch::nn::LinearOptions(options.in_features(), options.out_features()).bias(false)));
  } else {
    skip = nullptr;
  }
  if (options.norm()) {
    norm = register_module("norm",
                           torch::nn::BatchNorm1d(torch::nn::BatchNorm1dOptions(options.out_features()).affine(false)));
  } else {
    norm = nullptr;
  }
}

void PolynomialBlockImpl::reset_parameters() {
  quadratic->reset_parameters();
  if (quadratic_norm) quadratic_norm->reset_parameters();
  if (skip) skip->reset_parameters();
  if (norm) norm->reset_running_stats();
}

void PolynomialBlockImpl::pretty_print(std::ostream& stream) const {
  stream << "quadnet::nn::PolynomialBlock(in_features=" << options.in_features()
         << ", out_features=" << options.out_features() << ", rank=" << options.rank()
         << ", skip=" << (options.skip() ? "true" : "false") << ", norm=" << (options.norm() ? "true" : "false")
         << ", quadratic_norm=" << (options.quadratic_norm() ? "true" : "false") << ")";
}

torch::Tensor PolynomialBlockImpl::forward(const torch::Tensor& x) {
  const auto over_features = [this](torch::nn::BatchNorm1d& bn, const torch::Tensor& t) {
    return bn->forward(t.reshape({-1, options.out_features()})).reshape(t.sizes());  // any leading dims
  };
  auto y = quadratic->forward(x);
  if (quadratic_norm) y = over_features(quadratic_norm, y);
  if (skip) y = y + skip->forward(x);
  if (norm) y = over_features(norm, y);
  return y;
}

int64_t PolynomialBlockImpl::num_parameters() const { return num_free_parameters(*this); }

// ---------------------------------------------------------------------------------------------
// DeepPolynomialNet

DeepPolynomialNetImpl::DeepPolynomialNetImpl(const DeepPolynomialNetOptions& options_) : options(options_) { reset(); }

void DeepPolynomialNetImpl::reset() {
  const auto& sizes = options.sizes();
  const auto& ranks = options.ranks();
  TORCH_CHECK(sizes.size() >= 2, "DeepPolynomialNet: sizes needs at least 2 entries (input, output), got ",
              sizes.size());
  TORCH_CHECK(ranks.size() == sizes.size() - 1, "DeepPolynomialNet: ranks needs sizes.size() - 1 = ", sizes.size() - 1,
              " entries, got ", ranks.size());
  if (options.zero_init_residual() && options.skip() && options.quadratic_norm() && !options.bias()) {
    for (size_t t = 0; t + 1 < sizes.size(); ++t) {
      TORCH_CHECK_VALUE(sizes[t] != sizes[t + 1],
                        "DeepPolynomialNet: zero_init_residual=true zeroes the scale of each residual block's "
                        "quadratic norm, which bias=false removes (sizes ",
                        torch::IntArrayRef(sizes), "); pass zero_init_residual=false, or bias=true");
    }
  }
  blocks.clear();
  for (size_t t = 0; t + 1 < sizes.size(); ++t) {
    auto block_options = PolynomialBlockOptions(sizes[t], sizes[t + 1], ranks[t])
                             .skip(options.skip())
                             .bias(options.bias())
                             .norm(options.norm() && t + 2 < sizes.size())
                             .quadratic_norm(options.quadratic_norm());
    blocks.push_back(register_module(std::to_string(t), PolynomialBlock(block_options)));
  }
  init_residual_blocks();
}

std::vector<size_t> DeepPolynomialNetImpl::residual_blocks() const {
  std::vector<size_t> residual;
  for (size_t t = 0; t < blocks.size(); ++t) {
    const auto& block_options = blocks[t]->options;
    if (block_options.skip() && block_options.in_features() == block_options.out_features()) residual.push_back(t);
  }
  return residual;
}

void DeepPolynomialNetImpl::init_residual_blocks() {
  if (!options.zero_init_residual()) return;
  torch::NoGradGuard no_grad;
  for (const auto t : residual_blocks()) {
    auto& block = blocks[t];
    torch::nn::init::eye_(block->skip->weight);
    if (block->quadratic_norm) {
      torch::nn::init::zeros_(block->quadratic_norm->weight);
    } else {
      torch::nn::init::zeros_(block->quadratic->S);
      if (block->quadratic->bias.defined()) torch::nn::init::zeros_(block->quadratic->bias);
    }
  }
}

void DeepPolynomialNetImpl::reset_parameters() {
  for (auto& block : blocks) block->reset_parameters();
  init_residual_blocks();
}

void DeepPolynomialNetImpl::pretty_print(std::ostream& stream) const {
  stream << "quadnet::nn::DeepPolynomialNet(sizes=" << torch::IntArrayRef(options.sizes())
         << ", ranks=" << torch::IntArrayRef(options.ranks()) << ", skip=" << (options.skip() ? "true" : "false")
         << ", norm=" << (options.norm() ? "true" : "false")
         << ", quadratic_norm=" << (options.quadratic_norm() ? "true" : "false")
         << ", zero_init_residual=" << (options.zero_init_residual() ? "true" : "false") << ", degree=" << degree()
         << ")";
}

torch::Tensor DeepPolynomialNetImpl::forward(torch::Tensor x) {
  for (auto& block : blocks) x = block->forward(x);
  return x;
}

int64_t DeepPolynomialNetImpl::degree() const { return int64_t{1} << blocks.size(); }

int64_t DeepPolynomialNetImpl::num_parameters() const { return num_free_parameters(*this); }

}  // namespace nn
}  // namespace quadnet
