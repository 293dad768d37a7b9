#pragma once
// Shape helpers of the ops that take samples of any leading shape (..., features). Sizes are
// read as SymInts, so the kernels also run on FakeTensors with symbolic sizes.

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <vector>

namespace quadnet {
namespace utils {

// x (..., d) as a (B, d) matrix, B the product of the leading sizes (also when one is 0).
inline at::Tensor flatten_samples(const at::Tensor& x) {
  c10::SymInt batch = 1;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) batch = batch * x.sym_size(i);
  return x.reshape_symint({batch, x.sym_size(-1)});
}

// (..., n): x's leading sizes, then n.
inline std::vector<c10::SymInt> output_shape(const at::Tensor& x, const c10::SymInt& n) {
  auto shape = x.sym_sizes().vec();
  shape.back() = n;
  return shape;
}

}  // namespace utils
}  // namespace quadnet
