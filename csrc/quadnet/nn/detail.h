#pragma once
// Pieces shared by quadnet's torch::nn modules (not part of the public API).

#include <torch/nn/init.h>
#include <torch/nn/module.h>

#include <cmath>
#include <cstdint>

namespace quadnet {
namespace nn {
namespace detail {

// Registers "bias" (out_features) when enabled, an undefined "bias" otherwise (as torch::nn::Linear).
inline torch::Tensor register_bias(torch::nn::Module& module, bool enabled, int64_t out_features) {
  if (enabled) return module.register_parameter("bias", torch::empty({out_features}));
  return module.register_parameter("bias", torch::Tensor(), /*requires_grad=*/false);
}

inline torch::Tensor add_bias(torch::Tensor y, const torch::Tensor& bias) { return bias.defined() ? y + bias : y; }

// nn.Linear's bias initialisation, U(−1/√fan_in, 1/√fan_in); nothing for an undefined bias.
inline void linear_bias_(torch::Tensor& bias, int64_t fan_in) {
  if (!bias.defined()) return;
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  torch::nn::init::uniform_(bias, -bound, bound);
}

}  // namespace detail
}  // namespace nn
}  // namespace quadnet
