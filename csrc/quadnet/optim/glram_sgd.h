#pragma once
// GLRAMSGD: projected SGD for quadratic layers in their canonical space (docs/glram.rst), plain
// SGD (momentum, weight decay) for every other parameter, as a torch::optim::Optimizer.

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>

#include <string>
#include <utility>
#include <vector>

#include "../linalg/glram.h"
#include "../linalg/tangent_step.h"
#include "../nn/quadratic_conv.h"
#include "../nn/quadratic_layer.h"

namespace quadnet {
namespace optim {

// ---- the update rules, shared by the C++ optimizer and Python's quadnet.optim.GLRAMSGD ----

// The new (weight, S) of a quadratic layer after one projected step:
//   A_i ← (1 − lr·weight_decay) W^T S_i W − lr · X^T diag(G[:, i]) X,  (W, S) ← GLRAM(A)
// (factored, warm-started from W; exact eigen-projection for one output). Pure: the
// arguments are not modified. Throws if the result is not finite.
linalg::GLRAMResult quadratic_layer_step(const torch::Tensor& weight, const torch::Tensor& S, const torch::Tensor& X,
                                         const torch::Tensor& G, double lr, double weight_decay,
                                         const linalg::GLRAMOptions& options);

// How the gradients the user left in weight.grad and S.grad relate to the captured batch
// (docs/glram.rst, "Edited gradients"). The batch implies ∂ℓ/∂S_i = H^T diag(G[:, i]) H and
// ∂ℓ/∂W = 2 Σ_i sym(S_i) H^T diag(G[:, i]) X with H = X W^T. Returns c such that the actual
// gradients are c times those (1 when unedited; the clipping factor after clip_grad_norm_;
// 1/scale after GradScaler's unscale_), to relative accuracy gradient_rtol(dtype); the projected
// step then uses c·G. Throws when they are not such a multiple, naming the likely cause: with
// create_graph (a backward through the layer ran with create_graph=True: a gradient penalty or
// double backward put terms in .grad that no batch expresses), otherwise an edit other than a
// uniform scaling (clip_grad_value_, a penalty on the layer's parameters, gradients zeroed or
// accumulated without the optimizer seeing the batches). weight_grad and S_grad must be defined.
double captured_gradient_scale(const torch::Tensor& weight, const torch::Tensor& S, const torch::Tensor& X,
                               const torch::Tensor& G, const torch::Tensor& weight_grad, const torch::Tensor& S_grad,
                               bool create_graph = false);

// The relative accuracy to which captured_gradient_scale compares gradients of this dtype: 1e-8
// for float64, 1e-3 for float32, 4·eps for bfloat16 and float16 (their gradients are rounded
// to a few eps by every op of the backward).
double gradient_rtol(c10::ScalarType dtype);

double captured_gradient_scale(const torch::Tensor& weight, const torch::Tensor& S, const torch::Tensor& X,
                               const torch::Tensor& G, const torch::Tensor& weight_grad, const torch::Tensor& S_grad);

// One plain parameter's torch.optim.SGD update, applied in place by apply_sgd_update:
// g = −grad with maximize, else grad; d = g + weight_decay·param; with momentum, b = d at first,
// then b ← momentum·b + (1 − dampening)·d, and d = b (or d + momentum·b with nesterov);
// param ← param − lr·d.
struct SGDUpdate {
  torch::Tensor param, grad, momentum_buffer;  // momentum_buffer undefined: none yet
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false;
};

// Throws (naming the parameter's shape; nothing is written) unless every value the updates
// would write is finite. A bound from three max-abs reductions per parameter and one host read
// per device for all of them proves it; only where the bound is inconclusive (values near the dtype's
// largest) is the update computed out of place and checked.
void check_sgd_updates_finite(const std::vector<SGDUpdate>& updates);

// Applies the update in place (param and momentum buffer, as torch.optim.SGD's single-tensor
// rule); returns the momentum buffer (a new tensor on the first step with momentum, undefined
// without momentum). Call under NoGradGuard for parameters that require grad.
torch::Tensor apply_sgd_update(const SGDUpdate& update);

// ---- the options ----

// How GLRAMSGD projects a quadratic layer (docs/glram.rst). Python and saved optimizer state
// name them by their enumerator: "tangent", "full".
enum class GLRAMSGDProjection {
  // The tangent-space step from the layer's gradients (linalg::tangent_update; QuadraticLayer and
  // QuadraticConv2d). Where it does not apply (a layer off the rank-r model, e.g. zero-initialised:
  // linalg::tangent_step_unavailable) the layer takes the full step, capturing batches only then.
  tangent,
  // The projected step of the captured batch (linalg::projected_step; QuadraticLayer only).
  full,
};

// The projection's name: "tangent" or "full".
const char* projection_name(GLRAMSGDProjection projection);
// The projection named `name`; otherwise throws c10::ValueError (Python: ValueError)
// "<op>: projection must be "tangent" or "full", got "<name>"".
GLRAMSGDProjection parse_projection(const std::string& name, const char* op);

struct GLRAMSGDOptions : public torch::optim::OptimizerCloneableOptions<GLRAMSGDOptions> {
  GLRAMSGDOptions(double lr = 0.01) : lr_(lr) {}
  TORCH_ARG(double, lr);
  // Momentum of every parameter: in the tangent space for projected layers ("tangent"), of the
  // other parameters only with "full" (a canonical momentum there would need n·d² state).
  TORCH_ARG(double, momentum) = 0;
  TORCH_ARG(double, dampening) = 0;     // as torch.optim.SGD
  TORCH_ARG(bool, nesterov) = false;    // as torch.optim.SGD (momentum > 0, dampening 0)
  TORCH_ARG(bool, maximize) = false;    // as torch.optim.SGD: ascend the objective (every parameter)
  TORCH_ARG(double, weight_decay) = 0;  // all parameters (canonical for quadratic layers)
  // The GLRAM options, with linalg::GLRAMOptions' defaults (their one definition).
  TORCH_ARG(double, tol) = linalg::GLRAMOptions().tol();             // stopping tolerance
  TORCH_ARG(int64_t, max_iter) = linalg::GLRAMOptions().max_iter();  // iterations per step
  TORCH_ARG(linalg::GLRAMSolver, solver) = linalg::GLRAMOptions().solver();
  TORCH_ARG(GLRAMSGDProjection, projection) = GLRAMSGDProjection::tangent;

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

// Throws c10::ValueError (Python: ValueError) unless lr, momentum, dampening, weight_decay, tol ≥ 0, max_iter ≥ 0 and
// nesterov only with momentum > 0 and dampening 0 (each group's options are checked when an optimizer is built, in
// both languages; the solver and projection names are checked where they are parsed).
void check_options(const GLRAMSGDOptions& options);

// ---- one step, shared by the C++ optimizer and Python's quadnet.optim.GLRAMSGD ----

// A projected layer and the batch it captured since the last step (X, G undefined: none).
// weight is the parameter itself: (rank, d), or (rank, C, kh, kw) for a convolution, whose
// canonical space is the patch space (weight.flatten(1)); only a QuadraticLayer captures batches.
// create_graph: a backward through it ran with create_graph=True since the last step
// (nn::QuadraticLayerImpl::captured_with_create_graph), named when its gradients do not match.
struct ProjectedBatch {
  torch::Tensor weight, S, X, G;
  bool convolution = false;
  bool create_graph = false;
};

// Whether the layer's next step needs the batch captured during forward/backward: with projection
// "full" always, with "tangent" only off the rank-r model (linalg::tangent_step_unavailable); a
// convolution never (it captures nothing: its full step is not implemented).
bool needs_batch(GLRAMSGDProjection projection, const ProjectedBatch& layer);

// A param group as a step sees it.
struct StepGroup {
  std::vector<torch::Tensor> params;
  std::vector<torch::Tensor> momentum_buffers;  // aligned with params; undefined: none yet
  GLRAMSGDOptions options;
};

struct StepUpdates {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> values;            // projected: (parameter, new value)
  std::vector<std::pair<torch::Tensor, torch::Tensor>> momentum_buffers;  // projected: (parameter, new buffer)
  std::vector<SGDUpdate> sgd_updates;            // every other parameter with a gradient, checked finite
  std::vector<linalg::GLRAMResult> projections;  // one per layer stepped, in group order
  // Per layer (in the order given): whether its next step needs a captured batch — projection
  // "full", or a layer the tangent step does not apply to (tangent_step_unavailable).
  std::vector<bool> needs_batch;
};

// Writes a step's updates: the projected layers' new values (copy_), the SGD updates in place;
// returns every new momentum buffer (projected and plain) as (parameter, buffer). Never throws
// for updates glram_sgd_updates returned.
std::vector<std::pair<torch::Tensor, torch::Tensor>> apply_step_updates(const StepUpdates& updates);

// Every update of one GLRAMSGD step, none written. Per group, for each layer whose weight is in
// the group and whose parameters have gradients: with projection "tangent" and a layer on the
// rank-r model, linalg::tangent_update from the gradients (momentum buffers of weight and S: the
// tangent buffer's dW and dS); otherwise the full projected step of its captured batch (G scaled
// by captured_gradient_scale; weight_decay on A; with "full", a layer that captured nothing is
// skipped when its gradients are zero and refused otherwise); with maximize, along the negated
// gradient. An SGDUpdate (momentum, weight decay, maximize) for every other parameter with a
// gradient, checked by check_sgd_updates_finite. Throws — so nothing is written — on a layer
// split across groups, gradients that do not match the captures, a layer that needs a batch it
// did not capture (or a convolution off the model), or a non-finite update.
StepUpdates glram_sgd_updates(const std::vector<StepGroup>& groups, const std::vector<ProjectedBatch>& layers);

// ---- the C++ optimizer ----

struct GLRAMSGDParamState : public torch::optim::OptimizerCloneableParamState<GLRAMSGDParamState> {
  TORCH_ARG(torch::Tensor, momentum_buffer);

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

// Optimizes every parameter of `model` (or the given param groups). Each QuadraticLayer and
// QuadraticConv2d in it is projected (glram_sgd_updates): a layer whose parameters have no .grad
// is left untouched. While a QuadraticLayer needs a batch for its next step (projection "full",
// or off the rank-r model), the optimizer registers as a user of its capture (released when it
// no longer does, and by the destructor), and step() consumes the (X, G) recorded by
// forward/backward. All other parameters get SGD. A step that throws leaves every parameter,
// state tensor and capture as it was. The constructor throws if a QuadraticConv2d's parameters
// are in a group whose projection is "full" (its full step is not implemented).
class GLRAMSGD : public torch::optim::Optimizer {
 public:
  GLRAMSGD(torch::nn::Module& model, GLRAMSGDOptions defaults);
  // Param groups with options of their own (e.g. a smaller lr for the canonical steps), as in
  // Python: the groups hold parameters of `model`; a QuadraticLayer's weight and S must be in
  // one group, whose options its projected step uses; layers in no group are left alone.
  GLRAMSGD(torch::nn::Module& model, std::vector<torch::optim::OptimizerParamGroup> param_groups,
           GLRAMSGDOptions defaults);
  ~GLRAMSGD() override;

  torch::Tensor step(LossClosure closure = nullptr) override;
  // Optimizer::zero_grad, and forgets the captured batches, whose gradients are gone (so a
  // step skipped after a backward, as GradScaler does on overflow, does not leak its batch
  // into the next one). Optimizer::zero_grad is not virtual: called through a base reference
  // the captures stay, and the next step throws on the mismatch.
  void zero_grad(bool set_to_none = true);
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  // The GLRAM results of the last step, one per projected layer (objective, iterations).
  const std::vector<linalg::GLRAMResult>& last_projections() const { return last_projections_; }

 private:
  struct Layer {
    std::shared_ptr<nn::QuadraticLayerImpl> dense;  // one of the two
    std::shared_ptr<nn::QuadraticConv2dImpl> conv;
    bool capturing = false;  // registered as a user of dense's capture
  };
  void set_capturing(Layer& layer, bool capturing);
  std::vector<Layer> layers_;
  std::vector<linalg::GLRAMResult> last_projections_;
};

}  // namespace optim
}  // namespace quadnet
