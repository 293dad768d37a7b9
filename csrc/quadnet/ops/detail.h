#pragma once
// The op layer's internals, shared by its files (not installed; call the functions of
// quadratic_form.h and quadratic_conv.h, which go through the dispatcher). The layout, by role:
//   quadratic_form.cpp, quadratic_conv.cpp   each op's schema, argument checks and dispatcher
//                                            wrapper (the public C++ functions)
//   composite_kernels.cpp                    the ATen compositions: CompositeExplicitAutograd,
//                                            CompositeImplicitAutograd, FuncTorchBatched (vmap)
//   cpu/quadratic_features_kernel.cpp        quadratic_features' tiled CPU kernels
//   meta_kernels.cpp                         output shapes (FakeTensor, symbolic sizes)
//   autograd_kernels.cpp                     the hand-written autograd nodes
//   autocast_kernels.cpp                     AutocastCPU / AutocastCUDA
// Each kernel file registers its own kernels (TORCH_LIBRARY_IMPL) for its dispatch keys.

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/enum_tag.h>

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <initializer_list>
#include <tuple>
#include <vector>

namespace quadnet {
namespace ops {

// An op's typed handle, looked up by name (each caller keeps it in a function-local static).
template <class Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The tags of every quadnet op: pt2_compliant_tag (its kernels, Meta included, follow the PT2
// rules opcheck tests, so torch.compile and torch.export trust it).
inline std::vector<at::Tag> op_tags() { return {at::Tag::pt2_compliant_tag}; }

// The signatures the ops share.
using Binary = at::Tensor(const at::Tensor&, const at::Tensor&);
using Ternary = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);
using PairOfTernary = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&);
using TripleOfTernary = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&);
using Conv = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                        at::IntArrayRef);

// The helper ops' handles, shared by the wrappers and the autograd nodes that call them.
const c10::TypedOperatorHandle<TripleOfTernary>& form_forward_op();     // _quadratic_form_forward
const c10::TypedOperatorHandle<PairOfTernary>& form_backward_op();      // _quadratic_form_backward
const c10::TypedOperatorHandle<Binary>& features_op();                  // quadratic_features
const c10::TypedOperatorHandle<PairOfTernary>& features_backward_op();  // _quadratic_features_backward

// ---- argument checks (quadratic_form.cpp, quadratic_conv.cpp): every kernel of an op runs its
// op's check first, so each dispatch key gives the same error, naming op, argument and shapes.
// Sizes are read as SymInts: the checks also run on FakeTensors with symbolic sizes.

// weight (r, d) and the per-output coefficients: S (n, r, r) when coefficients_dim == 3, alpha (n, r) when 2.
void check_model_args(const at::Tensor& weight, const at::Tensor& coefficients, const char* op,
                      const char* coefficients_name, int64_t coefficients_dim);
// x (..., d) with the model above.
void check_quadratic_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& coefficients, const char* op,
                          const char* coefficients_name, int64_t coefficients_dim);
void check_form_forward_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S);
void check_form_backward_args(const at::Tensor& grad, const at::Tensor& h, const at::Tensor& z);
void check_canonical_gradient_args(const at::Tensor& X, const at::Tensor& G);
void check_features_args(const at::Tensor& h, const at::Tensor& S);
void check_features_backward_args(const at::Tensor& grad, const at::Tensor& h, const at::Tensor& S);
// x (N, C, H, W) or (C, H, W), weight (m, C, kh, kw), S (n, m, m) or alpha (n, m), conv2d's geometry.
void check_conv_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& coefficients, const char* op,
                     const char* coefficients_name, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation);

// ---- the ATen compositions (composite_kernels.cpp): each checks its arguments; what the other
// kernels fall back to (double backward, torch.func, dtypes the CPU kernels do not tile).

at::Tensor quadratic_form_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S);
std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward_composite(const at::Tensor& x,
                                                                                const at::Tensor& weight,
                                                                                const at::Tensor& S);
std::tuple<at::Tensor, at::Tensor> quadratic_form_backward_composite(const at::Tensor& grad, const at::Tensor& h,
                                                                     const at::Tensor& z);
at::Tensor quadratic_features_composite(const at::Tensor& h, const at::Tensor& S);
std::tuple<at::Tensor, at::Tensor> quadratic_features_backward_composite(const at::Tensor& grad, const at::Tensor& h,
                                                                         const at::Tensor& S);

// The upper triangle a ≤ b of an r×r matrix, T = r(r+1)/2 pairs, for the per-vector products:
//   select  (r, 2T) = [E_a | E_b], one-hot columns: h select = [h_a | h_b] for every pair;
//   upper, lower  flat indices a·r + b and b·r + a of each pair;
//   weight  the pair's multiplicity in h^T S h: 1 on the diagonal, 2 off it.
struct Triangle {
  at::Tensor select, upper, lower, weight;
  int64_t pairs;
};
Triangle triangle(int64_t r, const at::TensorOptions& options);
// (n, T): the coefficient of h_a h_b in y_i = h^T sym(S_i) h.
at::Tensor pair_coefficients(const at::Tensor& S, const Triangle& tri);
// ∂ℓ/∂S (n, r, r) from the moments Σ_b G[b, i] h_a h_b of each pair (n, T), on both halves.
at::Tensor pair_moments_to_matrix(const at::Tensor& moments, const Triangle& tri, int64_t r);

}  // namespace ops
}  // namespace quadnet
