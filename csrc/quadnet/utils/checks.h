#pragma once
// Argument checks shared by ops, projections and optimizers: errors name the argument.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <initializer_list>
#include <utility>

namespace quadnet {
namespace utils {

using NamedTensor = std::pair<const char*, const at::Tensor&>;

// All tensors floating point, of one dtype, on one device.
inline void check_same_floating(const char* op, std::initializer_list<NamedTensor> tensors) {
  const auto& first = *tensors.begin();
  for (const auto& t : tensors) {
    TORCH_CHECK(t.second.defined(), op, ": ", t.first, " is undefined");
    TORCH_CHECK(at::isFloatingType(t.second.scalar_type()), op, ": expected ", t.first,
                " to be a floating point tensor, got ", t.second.scalar_type());
    TORCH_CHECK(t.second.scalar_type() == first.second.scalar_type(), op, ": expected ", t.first,
                " to have the dtype of ", first.first, " (", first.second.scalar_type(), "), got ",
                t.second.scalar_type());
    TORCH_CHECK(t.second.device() == first.second.device(), op, ": expected ", t.first, " on the device of ",
                first.first, " (", first.second.device(), "), got ", t.second.device());
  }
}

// No element is NaN or ±Inf. Two reductions (max and min propagate NaN) and no tensor-sized
// temporary: at::isfinite(t).all() allocates one, which for an n·d² stack of canonical matrices
// costs more than the check itself. Reads two scalars on the host (a device sync on CUDA).
inline bool all_finite(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  return std::isfinite(t.max().item<double>()) && std::isfinite(t.min().item<double>());
}

}  // namespace utils
}  // namespace quadnet
