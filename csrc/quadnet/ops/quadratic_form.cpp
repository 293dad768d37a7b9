#include "quadratic_form.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>

#include "../utils/checks.h"
#include "../utils/shapes.h"
#include "../utils/symmetric.h"
#include "detail.h"

// Every kernel here also runs on FakeTensors with symbolic sizes (torch.compile with dynamic
// shapes, torch.export): sizes are read as SymInts (sym_size, view_symint, ...), never as ints.

namespace quadnet {
namespace {

using c10::SymInt;
using ops::typed_op;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
using utils::flatten_samples;
using utils::output_shape;
using utils::symmetric_part;

// weight (r, d) and the per-output coefficients: S (n, r, r) or alpha (n, r).
void check_model_args(const at::Tensor& weight, const at::Tensor& coefficients, const char* op,
                      const char* coefficients_name, int64_t coefficients_dim) {
  TORCH_CHECK(weight.dim() == 2, op, ": expected weight of shape (rank, in_features), got shape ", weight.sym_sizes());
  TORCH_CHECK(coefficients.dim() == coefficients_dim, op, ": expected ", coefficients_name, " of shape ",
              coefficients_dim == 3 ? "(out_features, rank, rank)" : "(out_features, rank)", ", got shape ",
              coefficients.sym_sizes());
  TORCH_CHECK(coefficients.sym_size(1) == weight.sym_size(0), op, ": ", coefficients_name, " of shape ",
              coefficients.sym_sizes(), " does not match rank ", weight.sym_size(0), " of weight of shape ",
              weight.sym_sizes());
  if (coefficients_dim == 3) {
    TORCH_CHECK(coefficients.sym_size(2) == coefficients.sym_size(1), op,
                ": expected square matrices S of shape (out_features, rank, rank), got shape ",
                coefficients.sym_sizes());
  }
  utils::check_same_floating(op, {{"weight", weight}, {coefficients_name, coefficients}});
}

void check_quadratic_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& coefficients, const char* op,
                          const char* coefficients_name, int64_t coefficients_dim) {
  TORCH_CHECK(x.dim() >= 1, op, ": expected x of shape (..., in_features) with at least 1 dim, got ", x.dim(),
              "-dim tensor");
  check_model_args(weight, coefficients, op, coefficients_name, coefficients_dim);
  TORCH_CHECK(x.sym_size(-1) == weight.sym_size(1), op, ": x has ", x.sym_size(-1),
              " features in its last dim but weight of shape ", weight.sym_sizes(), " expects ", weight.sym_size(1),
              " (weight is (rank, in_features))");
  utils::check_same_floating(op, {{"x", x}, {"weight", weight}});
}

void check_forward_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  check_quadratic_args(x, weight, S, "_quadratic_form_forward", "S", 3);
  TORCH_CHECK(x.dim() == 2, "_quadratic_form_forward: expected x of shape (batch, in_features), got shape ",
              x.sym_sizes());
}

void check_backward_args(const at::Tensor& grad, const at::Tensor& h, const at::Tensor& z) {
  const char* op = "_quadratic_form_backward";
  TORCH_CHECK(h.dim() == 2, op, ": expected h of shape (batch, rank), got shape ", h.sym_sizes());
  TORCH_CHECK(z.dim() == 3 && z.sym_size(0) == h.sym_size(0) && z.sym_size(2) == h.sym_size(1), op,
              ": expected z of shape (batch=", h.sym_size(0), ", out_features, rank=", h.sym_size(1), "), got shape ",
              z.sym_sizes());
  TORCH_CHECK(grad.dim() == 2 && grad.sym_size(0) == z.sym_size(0) && grad.sym_size(1) == z.sym_size(1), op,
              ": expected grad of shape (batch=", z.sym_size(0), ", out_features=", z.sym_size(1), "), got shape ",
              grad.sym_sizes());
  utils::check_same_floating(op, {{"grad", grad}, {"h", h}, {"z", z}});
}

// Forward pieces, shared by the forward kernels and the differentiable double backward.
// H = X W^T (B×r);  Z[b, i, :] = sym(S_i) h_b (B×n×r) from ONE GEMM H · [S_1 … S_n].
struct QuadraticPieces {
  at::Tensor H, Z;
};

QuadraticPieces quadratic_pieces(const at::Tensor& x2d, const at::Tensor& weight, const at::Tensor& S) {
  const auto n = S.sym_size(0), r = S.sym_size(1);
  auto H = at::mm(x2d, weight.t());
  // [S_1 … S_n] as an r × (n·r) matrix: column block i is S_i (symmetric, so S_i h = h^T S_i).
  auto S_row = symmetric_part(S).permute({1, 0, 2}).reshape_symint({r, n * r});
  auto Z = at::mm(H, S_row).view_symint({x2d.sym_size(0), n, r});
  return {H, Z};
}

// Batched mat-vecs (bmm) are quicker for few outputs, a fused multiply-sum over a B×n×r
// temporary (the size of Z) for many (measured with benchmarks/bench_quadratic_form.py).
constexpr int64_t kManyOutputs = 32;

at::Tensor contract_outputs(const at::Tensor& H, const at::Tensor& Z) {
  // Y[b, i] = <Z[b, i, :], h_b>
  if (Z.sym_size(1) >= kManyOutputs) return (Z * H.unsqueeze(1)).sum(2);
  return at::bmm(Z, H.unsqueeze(2)).squeeze(2);
}

// ∂ℓ/∂h_b = 2 Σ_i G[b, i] z[b, i] and ∂ℓ/∂S_i = Σ_b G[b, i] h_b h_b^T, as ATen ops (differentiable).
std::tuple<at::Tensor, at::Tensor> backward_math(const at::Tensor& G, const at::Tensor& H, const at::Tensor& Z) {
  auto dH = at::bmm(G.unsqueeze(1), Z).squeeze(1) * 2.0;
  auto dS = canonical_gradient(H, G);  // symmetric: d sym(S)/dS is the identity on it
  return {dH, dS};
}

using Ternary = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);
using Binary = at::Tensor(const at::Tensor&, const at::Tensor&);
using ForwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                        const at::Tensor&);
using BackwardSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&);

const c10::TypedOperatorHandle<ForwardSignature>& forward_op() {
  static const auto op = typed_op<ForwardSignature>("quadnet::_quadratic_form_forward");
  return op;
}

const c10::TypedOperatorHandle<BackwardSignature>& backward_op() {
  static const auto op = typed_op<BackwardSignature>("quadnet::_quadratic_form_backward");
  return op;
}

// The autograd node of quadratic_form: forward through _quadratic_form_forward (below autograd),
// backward through _quadratic_form_backward plus one GEMM for each of ∂x and ∂weight.
class QuadraticFormFunction : public torch::autograd::Function<QuadraticFormFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x2d, const at::Tensor& weight,
                            const at::Tensor& S) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, H, Z] = forward_op().call(x2d, weight, S);
    ctx->save_for_backward({x2d, weight, S, H, Z});
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto &x2d = saved[0], &weight = saved[1], &S = saved[2];
    auto H = saved[3], Z = saved[4];
    if (at::GradMode::is_enabled()) {
      // create_graph=True: the saved H and Z carry no history, so recompute them from the inputs
      // with differentiable ATen ops; the backward op then differentiates through them too.
      auto pieces = quadratic_pieces(x2d, weight, S);
      H = pieces.H;
      Z = pieces.Z;
    }
    auto [dH, dS] = backward_op().call(grad_outputs[0], H, Z);
    at::Tensor dx, dweight;
    if (ctx->needs_input_grad(0)) dx = at::mm(dH, weight);
    if (ctx->needs_input_grad(1)) dweight = at::mm(dH.t(), x2d);
    if (!ctx->needs_input_grad(2)) dS = at::Tensor();
    return {dx, dweight, dS};
  }
};

}  // namespace

// ---- public functions: through the dispatcher ----

at::Tensor quadratic_form(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  static const auto op = typed_op<Ternary>("quadnet::quadratic_form");
  return op.call(x, weight, S);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward(const at::Tensor& x, const at::Tensor& weight,
                                                                      const at::Tensor& S) {
  return forward_op().call(x, weight, S);
}

std::tuple<at::Tensor, at::Tensor> quadratic_form_backward(const at::Tensor& grad, const at::Tensor& h,
                                                           const at::Tensor& z) {
  return backward_op().call(grad, h, z);
}

at::Tensor diagonal_quadratic_form(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha) {
  static const auto op = typed_op<Ternary>("quadnet::diagonal_quadratic_form");
  return op.call(x, weight, alpha);
}

at::Tensor canonical_gradient(const at::Tensor& X, const at::Tensor& G) {
  static const auto op = typed_op<Binary>("quadnet::canonical_gradient");
  return op.call(X, G);
}

at::Tensor canonical_form(const at::Tensor& weight, const at::Tensor& S) {
  static const auto op = typed_op<Binary>("quadnet::canonical_form");
  return op.call(weight, S);
}

at::Tensor diagonal_canonical_form(const at::Tensor& weight, const at::Tensor& alpha) {
  static const auto op = typed_op<Binary>("quadnet::diagonal_canonical_form");
  return op.call(weight, alpha);
}

// ---- kernels ----
namespace ops {

bool needs_composite_autograd(std::initializer_list<at::Tensor> inputs) {
  // functorch includes its front/back-mode keys in the thread's dispatch keys while any
  // transform is on its stack (the condition under which it refuses a C++ autograd Function).
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode)) return true;
  for (const auto& t : inputs) {
    if (t.defined() && t._fw_grad(/*level=*/0).defined()) return true;
  }
  return false;
}

bool records_composition(std::initializer_list<at::Tensor> inputs) {
  if (at::GradMode::is_enabled()) {
    for (const auto& t : inputs) {
      if (t.defined() && t.requires_grad()) return true;
    }
  }
  return needs_composite_autograd(inputs);
}

at::Tensor quadratic_form_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  check_quadratic_args(x, weight, S, "quadratic_form", "S", 3);
  auto pieces = quadratic_pieces(flatten_samples(x), weight, S);
  return contract_outputs(pieces.H, pieces.Z).view_symint(output_shape(x, S.sym_size(0)));
}

at::Tensor quadratic_form_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  check_quadratic_args(x, weight, S, "quadratic_form", "S", 3);
  return x.new_empty_symint(output_shape(x, S.sym_size(0)));
}

at::Tensor quadratic_form_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& S) {
  if (needs_composite_autograd({x, weight, S})) return quadratic_form_composite(x, weight, S);
  check_quadratic_args(x, weight, S, "quadratic_form", "S", 3);
  auto y = QuadraticFormFunction::apply(flatten_samples(x), weight, S);
  return y.view_symint(output_shape(x, S.sym_size(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward_composite(const at::Tensor& x,
                                                                                const at::Tensor& weight,
                                                                                const at::Tensor& S) {
  check_forward_args(x, weight, S);
  auto pieces = quadratic_pieces(x, weight, S);
  return {contract_outputs(pieces.H, pieces.Z), pieces.H, pieces.Z};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward_autograd(const at::Tensor& x,
                                                                               const at::Tensor& weight,
                                                                               const at::Tensor& S) {
  if (records_composition({x, weight, S})) {
    // Called directly with inputs that need gradients (or under torch.func): the composite kernel's ATen ops, recorded
    // by autograd (quadratic_form itself calls this op below autograd and has its own backward).
    return quadratic_form_forward_composite(x, weight, S);
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return forward_op().call(x, weight, S);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quadratic_form_forward_meta(const at::Tensor& x,
                                                                           const at::Tensor& weight,
                                                                           const at::Tensor& S) {
  check_forward_args(x, weight, S);
  const auto B = x.sym_size(0), n = S.sym_size(0), r = S.sym_size(1);
  return {x.new_empty_symint({B, n}), x.new_empty_symint({B, r}), x.new_empty_symint({B, n, r})};
}

std::tuple<at::Tensor, at::Tensor> quadratic_form_backward_composite(const at::Tensor& grad, const at::Tensor& h,
                                                                     const at::Tensor& z) {
  check_backward_args(grad, h, z);
  return backward_math(grad, h, z);
}

std::tuple<at::Tensor, at::Tensor> quadratic_form_backward_meta(const at::Tensor& grad, const at::Tensor& h,
                                                                const at::Tensor& z) {
  check_backward_args(grad, h, z);
  const auto n = z.sym_size(1), r = z.sym_size(2);
  return {h.new_empty_symint(h.sym_sizes()), h.new_empty_symint({n, r, r})};
}

std::tuple<at::Tensor, at::Tensor> quadratic_form_backward_autograd(const at::Tensor& grad, const at::Tensor& h,
                                                                    const at::Tensor& z) {
  if (records_composition({grad, h, z})) {
    // Double backward: the composite kernel's ATen ops, so autograd records them.
    return quadratic_form_backward_composite(grad, h, z);
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return backward_op().call(grad, h, z);
}

at::Tensor diagonal_quadratic_form_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& alpha) {
  check_quadratic_args(x, weight, alpha, "diagonal_quadratic_form", "alpha", 2);
  // Plain ATen composition: autograd (and double backward) come for free.
  return at::matmul(at::matmul(x, weight.t()).square(), alpha.t());
}

at::Tensor canonical_gradient_composite(const at::Tensor& X, const at::Tensor& G) {
  TORCH_CHECK(X.dim() == 2, "canonical_gradient: expected X of shape (batch, features), got shape ", X.sym_sizes());
  TORCH_CHECK(G.dim() == 2 && G.sym_size(0) == X.sym_size(0),
              "canonical_gradient: expected G of shape (batch=", X.sym_size(0), ", out_features), got shape ",
              G.sym_sizes());
  utils::check_same_floating("canonical_gradient", {{"X", X}, {"G", G}});
  const auto B = X.sym_size(0), d = X.sym_size(1), n = G.sym_size(1);
  // Pick the smaller temporary: B×d×d outer products or B×n×d weighted copies of X.
  if (d <= n) {
    auto outer = (X.unsqueeze(2) * X.unsqueeze(1)).reshape_symint({B, d * d});
    return at::mm(G.t(), outer).view_symint({n, d, d});
  }
  auto weighted = G.t().unsqueeze(2) * X.unsqueeze(0);                   // n×B×d
  return at::bmm(weighted.transpose(1, 2), X.expand_symint({n, B, d}));  // n×d×d
}

at::Tensor canonical_form_composite(const at::Tensor& weight, const at::Tensor& S) {
  check_model_args(weight, S, "canonical_form", "S", 3);
  return at::matmul(at::matmul(weight.t(), symmetric_part(S)), weight);
}

at::Tensor diagonal_canonical_form_composite(const at::Tensor& weight, const at::Tensor& alpha) {
  check_model_args(weight, alpha, "diagonal_canonical_form", "alpha", 2);
  return at::matmul(weight.t().unsqueeze(0) * alpha.unsqueeze(1), weight);
}

}  // namespace ops
}  // namespace quadnet
