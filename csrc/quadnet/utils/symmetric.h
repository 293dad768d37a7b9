#pragma once
// The symmetric part of a (stack of) square matrices: the only part of S (or A) the quadratic
// model sees, and the form every projection result is returned in.

#include <ATen/core/Tensor.h>

namespace quadnet {
namespace utils {

inline at::Tensor symmetric_part(const at::Tensor& M) { return (M + M.transpose(-1, -2)) * 0.5; }

}  // namespace utils
}  // namespace quadnet
