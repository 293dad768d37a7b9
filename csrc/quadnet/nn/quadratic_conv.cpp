#include "quadratic_conv.h"

#include <torch/types.h>

#include "../ops/quadratic_conv.h"
#include "../ops/quadratic_form.h"
#include "detail.h"
#include "quadratic_layer.h"

namespace quadnet {
namespace nn {

using detail::register_bias;

namespace {}  // namespace

void check_conv_options(const char* module, const QuadraticConv2dOptions& o, bool rank_at_most_patch) {
  TORCH_CHECK_VALUE(o.in_channels() > 0 && o.out_channels() > 0 && o.rank() > 0, module,
                    ": in_channels, out_channels and rank must be positive, got in_channels=", o.in_channels(),
                    ", out_channels=", o.out_channels(), ", rank=", o.rank());
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK_VALUE(
        (*o.kernel_size())[i] > 0 && (*o.stride())[i] > 0 && (*o.dilation())[i] > 0 && (*o.padding())[i] >= 0, module,
        ": kernel_size, stride and dilation must be positive and padding non-negative, got kernel_size=",
        o.kernel_size(), ", stride=", o.stride(), ", padding=", o.padding(), ", dilation=", o.dilation());
  }
  const int64_t patch = o.in_channels() * (*o.kernel_size())[0] * (*o.kernel_size())[1];
  TORCH_CHECK_VALUE(!rank_at_most_patch || o.rank() <= patch, module,
                    ": rank must be at most the patch size in_channels·kh·kw (", patch, "), got rank=", o.rank(),
                    ": A_i = W^T S_i W has rank at most the patch size anyway, and projection optimizers need "
                    "orthonormal filter rows");
}

namespace {

void print_options(std::ostream& stream, const char* module, const QuadraticConv2dOptions& o) {
  stream << "quadnet::nn::" << module << "(" << o.in_channels() << ", " << o.out_channels()
         << ", kernel_size=" << o.kernel_size() << ", rank=" << o.rank() << ", stride=" << o.stride()
         << ", padding=" << o.padding() << ", dilation=" << o.dilation() << ", bias=" << (o.bias() ? "true" : "false")
         << ")";
}

// Bias (n) added over the channel dim of (N, n, H, W) or (n, H, W).
torch::Tensor add_channel_bias(torch::Tensor y, const torch::Tensor& bias) {
  return bias.defined() ? y + bias.view({-1, 1, 1}) : y;
}

std::vector<int64_t> filter_shape(const QuadraticConv2dOptions& o, int64_t rank) {
  return {rank, o.in_channels(), (*o.kernel_size())[0], (*o.kernel_size())[1]};
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// QuadraticConv2d

QuadraticConv2dImpl::QuadraticConv2dImpl(const QuadraticConv2dOptions& options_) : options(options_) { reset(); }

void QuadraticConv2dImpl::reset() {
  check_conv_options("QuadraticConv2d", options, true);
  weight = register_parameter("weight", torch::empty(filter_shape(options, options.rank())));
  S = register_parameter("S", torch::empty({options.out_channels(), options.rank(), options.rank()}));
  bias = register_bias(*this, options.bias(), options.out_channels());
  reset_parameters();
}

void QuadraticConv2dImpl::reset_parameters() { init::quadratic_layer_(weight, S, bias); }

void QuadraticConv2dImpl::pretty_print(std::ostream& stream) const {
  print_options(stream, "QuadraticConv2d", options);
}

torch::Tensor QuadraticConv2dImpl::forward(const torch::Tensor& x) {
  return add_channel_bias(quadratic_conv2d(x, weight, S, *options.stride(), *options.padding(), *options.dilation()),
                          bias);
}

torch::Tensor QuadraticConv2dImpl::canonical() const { return canonical_form(weight.flatten(1), S); }

int64_t QuadraticConv2dImpl::num_parameters() const { return num_free_parameters(*this); }

// ---------------------------------------------------------------------------------------------
// DiagonalQuadraticConv2d

DiagonalQuadraticConv2dImpl::DiagonalQuadraticConv2dImpl(const QuadraticConv2dOptions& options_) : options(options_) {
  reset();
}

void DiagonalQuadraticConv2dImpl::reset() {
  check_conv_options("DiagonalQuadraticConv2d", options, false);
  weight = register_parameter("weight", torch::empty(filter_shape(options, options.rank())));
  alpha = register_parameter("alpha", torch::empty({options.out_channels(), options.rank()}));
  bias = register_bias(*this, options.bias(), options.out_channels());
  reset_parameters();
}

void DiagonalQuadraticConv2dImpl::reset_parameters() { init::diagonal_quadratic_layer_(weight, alpha, bias); }

void DiagonalQuadraticConv2dImpl::pretty_print(std::ostream& stream) const {
  print_options(stream, "DiagonalQuadraticConv2d", options);
}

torch::Tensor DiagonalQuadraticConv2dImpl::forward(const torch::Tensor& x) {
  return add_channel_bias(
      diagonal_quadratic_conv2d(x, weight, alpha, *options.stride(), *options.padding(), *options.dilation()), bias);
}

torch::Tensor DiagonalQuadraticConv2dImpl::canonical() const {
  return diagonal_canonical_form(weight.flatten(1), alpha);
}

int64_t DiagonalQuadraticConv2dImpl::num_parameters() const { return num_free_parameters(*this); }

DiagonalQuadraticConv2d to_diagonal(const QuadraticConv2d& layer) {
  auto o = layer->options;
  const int64_t neurons = o.rank() * (o.rank() + 1) / 2;
  DiagonalQuadraticConv2d diagonal(QuadraticConv2dOptions(o).rank(neurons));
  diagonal->to(layer->weight.device(), layer->weight.scalar_type());
  auto params = diagonal_parameters(layer->weight.detach().flatten(1), layer->S.detach());
  torch::NoGradGuard no_grad;
  diagonal->weight.copy_(params.first.view(filter_shape(o, neurons)));
  diagonal->alpha.copy_(params.second);
  if (o.bias()) diagonal->bias.copy_(layer->bias);
  return diagonal;
}

// ---------------------------------------------------------------------------------------------
// PolynomialConvBlock

PolynomialConvBlockImpl::PolynomialConvBlockImpl(const PolynomialConvBlockOptions& options_) : options(options_) {
  reset();
}

void PolynomialConvBlockImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.pool() >= 1, "PolynomialConvBlock: pool must be >= 1 (1: no pooling), got ", o.pool());
  if (o.skip()) {
    for (int i = 0; i < 2; ++i) {
      TORCH_CHECK(2 * (*o.padding())[i] == (*o.dilation())[i] * ((*o.kernel_size())[i] - 1),
                  "PolynomialConvBlock: the 1x1 skip needs the quadratic convolution to keep the input's size, "
                  "i.e. padding = dilation * (kernel_size - 1) / 2 (odd kernel sizes), got kernel_size=",
                  o.kernel_size(), ", padding=", o.padding(), ", dilation=", o.dilation());
    }
  }
  // Same construction order as Python (quadratic, skip): same RNG stream, same init.
  quadratic = register_module(
      "quadratic", QuadraticConv2d(QuadraticConv2dOptions(o.in_channels(), o.out_channels(), o.kernel_size(), o.rank())
                                       .stride(o.stride())
                                       .padding(o.padding())
                                       .dilation(o.dilation())
                                       .bias(o.bias())));
  rank_norm = o.rank_norm() ? register_module("rank_norm", torch::nn::BatchNorm2d(o.rank())) : nullptr;
  skip = o.skip()
             ? register_module(
                   "skip",
                   torch::nn::Conv2d(
                       torch::nn::Conv2dOptions(o.in_channels(), o.out_channels(), 1).stride(o.stride()).bias(false)))
             : nullptr;
  norm = o.norm() ? register_module(
                        "norm", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(o.out_channels()).affine(false)))
                  : nullptr;
  pool = o.pool() > 1 ? register_module("pool", torch::nn::AvgPool2d(torch::nn::AvgPool2dOptions(o.pool()))) : nullptr;
}

void PolynomialConvBlockImpl::reset_parameters() {
  quadratic->reset_parameters();
  if (rank_norm) rank_norm->reset_parameters();
  if (skip) skip->reset_parameters();
  if (norm) norm->reset_running_stats();
}

void PolynomialConvBlockImpl::pretty_print(std::ostream& stream) const {
  const auto& o = options;
  stream << "quadnet::nn::PolynomialConvBlock(" << o.in_channels() << ", " << o.out_channels()
         << ", kernel_size=" << o.kernel_size() << ", rank=" << o.rank() << ", stride=" << o.stride()
         << ", padding=" << o.padding() << ", dilation=" << o.dilation() << ", skip=" << (o.skip() ? "true" : "false")
         << ", norm=" << (o.norm() ? "true" : "false") << ", pool=" << o.pool()
         << ", rank_norm=" << (o.rank_norm() ? "true" : "false") << ")";
}

torch::Tensor PolynomialConvBlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor y;
  if (rank_norm) {
    const auto& q = quadratic->options;
    auto h = rank_norm->forward(torch::conv2d(x, quadratic->weight, {}, *q.stride(), *q.padding(), *q.dilation()));
    y = add_channel_bias(quadratic_features(h.movedim(-3, -1), quadratic->S).movedim(-1, -3), quadratic->bias);
  } else {
    y = quadratic->forward(x);
  }
  if (skip) y = y + skip->forward(x);
  if (norm) y = norm->forward(y);
  if (pool) y = pool->forward(y);
  return y;
}

int64_t PolynomialConvBlockImpl::num_parameters() const { return num_free_parameters(*this); }

}  // namespace nn
}  // namespace quadnet
