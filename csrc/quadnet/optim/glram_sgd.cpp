#include "glram_sgd.h"

#include <torch/serialize/archive.h>

#include <torch/types.h>

#include "../nn/quadratic_conv.h"
#include "../utils/enum_names.h"
#include "../utils/symmetric.h"
#include "detail.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace quadnet {
namespace optim {

namespace {

void check_finite(const char* what, const torch::Tensor& t) { detail::check_finite_update("GLRAMSGD", what, t); }

// torch::optim's per-parameter state key (LibTorch 2.x: the TensorImpl).
void* state_key(const torch::Tensor& p) { return p.unsafeGetTensorImpl(); }

}  // namespace

linalg::GLRAMResult quadratic_layer_step(const torch::Tensor& weight, const torch::Tensor& S, const torch::Tensor& X,
                                         const torch::Tensor& G, double lr, double weight_decay,
                                         const linalg::GLRAMOptions& options) {
  TORCH_CHECK(lr >= 0, "quadratic_layer_step: lr must be >= 0, got ", lr);
  TORCH_CHECK(weight_decay >= 0, "quadratic_layer_step: weight_decay must be >= 0, got ", weight_decay);
  // Weight decay on A_i is a scaling of S_i.
  auto decayed = weight_decay == 0 ? S : S * (1.0 - lr * weight_decay);
  auto result = linalg::projected_step(weight, decayed, X, G, lr, options);
  check_finite("weight", result.weight);
  check_finite("S", result.S);
  return result;
}

double gradient_rtol(c10::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble:
      return 1e-8;
    case at::kBFloat16:
    case at::kHalf:
      return 4 * (dtype == at::kHalf ? 0x1p-10 : 0x1p-7);  // 4·eps
    default:
      return 1e-3;
  }
}

double captured_gradient_scale(const torch::Tensor& weight, const torch::Tensor& S, const torch::Tensor& X,
                               const torch::Tensor& G, const torch::Tensor& weight_grad, const torch::Tensor& S_grad,
                               bool create_graph) {
  TORCH_CHECK(weight_grad.defined() && S_grad.defined(),
              "GLRAMSGD: a QuadraticLayer with a captured batch has a gradient for only one of weight and S "
              "(freeze both or neither)");
  const auto B = X.size(0), n = S.size(0), r = S.size(1);
  auto H = at::mm(X, weight.t());                                  // B × r
  auto E = (G.unsqueeze(2) * H.unsqueeze(1)).reshape({B, n * r});  // [diag(g_i) H]_i
  auto implied_S = at::mm(E.t(), H).view({n, r, r});               // H^T diag(g_i) H
  auto symS = utils::symmetric_part(S).permute({1, 0, 2}).reshape({r, n * r});
  auto implied_W = at::mm(at::mm(symS, E.t()), X) * 2;  // 2 Σ_i sym(S_i) H^T diag(g_i) X
  auto dot = [](const torch::Tensor& a, const torch::Tensor& b) {
    return at::dot(a.reshape(-1).to(at::kDouble), b.reshape(-1).to(at::kDouble)).item<double>();
  };
  const double ii = dot(implied_W, implied_W) + dot(implied_S, implied_S);
  const double aa = dot(weight_grad, weight_grad) + dot(S_grad, S_grad);
  const double ai = dot(weight_grad, implied_W) + dot(S_grad, implied_S);
  TORCH_CHECK(std::isfinite(ii) && std::isfinite(aa) && std::isfinite(ai),
              "GLRAMSGD: a QuadraticLayer's gradients or its captured output gradient contain NaN or Inf");
  const double rtol = gradient_rtol(weight.scalar_type());
  const char* create_graph_cause =
      " A backward pass through this layer ran with create_graph=True (a gradient penalty, double backward, "
      "torch.autograd.grad(..., create_graph=True)): the gradient it leads to holds terms of the layer's second "
      "derivatives, which the full projected step's X^T diag(G) X cannot express. Use projection=\"tangent\" (the "
      "default), which steps from .grad itself.";
  if (ii == 0) {
    TORCH_CHECK(aa == 0 || !create_graph,
                "GLRAMSGD: the captured batch implies a zero gradient for a QuadraticLayer, "
                "but its weight/S gradients are not zero.",
                create_graph_cause);
    TORCH_CHECK(aa == 0,
                "GLRAMSGD: the captured batch implies a zero gradient for a QuadraticLayer, but its "
                "weight/S gradients are not zero (an edit of .grad, or gradients not from the captured batches)");
    return 1.0;
  }
  const double c = ai / ii;
  // ||actual − c·implied||², from the difference itself (expanding it would cancel to sqrt(eps))
  auto off_W = weight_grad - implied_W * c, off_S = S_grad - implied_S * c;
  const double residual = dot(off_W, off_W) + dot(off_S, off_S);
  TORCH_CHECK(residual <= rtol * rtol * std::max(aa, c * c * ii) || !create_graph,
              "GLRAMSGD: the gradients of a QuadraticLayer's weight and S are not those its captured batch implies "
              "(relative mismatch ",
              std::sqrt(residual / std::max(aa, 1e-300)), " > ", rtol, ").", create_graph_cause);
  TORCH_CHECK(residual <= rtol * rtol * std::max(aa, c * c * ii),
              "GLRAMSGD: the gradients of a QuadraticLayer's weight and S are not a multiple of those its captured "
              "batch implies (relative mismatch ",
              std::sqrt(residual / std::max(aa, 1e-300)), " > ", rtol,
              "). GLRAMSGD steps the layer from the captured batch, so it follows a uniform scaling of .grad "
              "(gradient clipping by norm, GradScaler) but no other edit (clip_grad_value_, a penalty added "
              "to .grad, or gradients zeroed without the optimizer's zero_grad)");
  return c;
}

namespace {

// Direction d of an SGD update (before the momentum buffer), out of place.
torch::Tensor sgd_direction(const SGDUpdate& u) {
  auto d = u.maximize ? -u.grad : u.grad;
  return u.weight_decay == 0 ? d : d + u.param * u.weight_decay;
}

// The update's new parameter value, out of place (the inconclusive-bound path of the check).
torch::Tensor sgd_value(const SGDUpdate& u) {
  auto d = sgd_direction(u);
  if (u.momentum != 0) {
    auto buffer = u.momentum_buffer.defined() ? u.momentum_buffer * u.momentum + d * (1.0 - u.dampening) : d;
    d = u.nesterov ? d + buffer * u.momentum : buffer;
  }
  return u.param - d * u.lr;
}

double largest_finite(c10::ScalarType dtype) {
  double largest = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "largest_finite",
                                  [&] { largest = static_cast<double>(std::numeric_limits<scalar_t>::max()); });
  return largest;
}

}  // namespace

void check_sgd_updates_finite(const std::vector<SGDUpdate>& updates) {
  if (updates.empty()) return;
  // Per update, on its device: max|grad|, max|param|, max|buffer| (0 without), in float64.
  std::unordered_map<c10::Device, std::vector<size_t>> by_device;
  std::vector<torch::Tensor> maxima;
  for (size_t i = 0; i < updates.size(); ++i) {
    const auto& u = updates[i];
    TORCH_CHECK(u.grad.sizes() == u.param.sizes(), "GLRAMSGD: a gradient of shape ", u.grad.sizes(),
                " does not match its parameter of shape ", u.param.sizes());
    auto max_abs = [&](const torch::Tensor& t) {
      return t.defined() && t.numel() > 0 ? t.abs().max().to(at::kDouble)
                                          : at::zeros({}, u.param.options().dtype(at::kDouble));
    };
    maxima.push_back(at::stack({max_abs(u.grad), max_abs(u.param), max_abs(u.momentum_buffer)}));
    by_device[u.param.device()].push_back(i);
  }
  std::vector<torch::Tensor> host(updates.size());  // one host read per device
  for (const auto& entry : by_device) {
    std::vector<torch::Tensor> rows;
    for (auto i : entry.second) rows.push_back(maxima[i]);
    const auto read = at::stack(rows).cpu();
    for (size_t j = 0; j < entry.second.size(); ++j) host[entry.second[j]] = read[j];
  }
  for (size_t i = 0; i < updates.size(); ++i) {
    const auto& u = updates[i];
    const auto bounds = host[i].accessor<double, 1>();
    const double g = bounds[0], p = bounds[1], b = bounds[2];
    // |d| ≤ g + wd·p, |b'| ≤ m·b + (1 − dampening)·|d|, |step| ≤ |b'| (+ |d| with nesterov)
    const double d = g + u.weight_decay * p;
    double step = d;
    if (u.momentum != 0) {
      const double buffer = u.momentum_buffer.defined() ? u.momentum * b + (1.0 - u.dampening) * d : d;
      step = u.nesterov ? d + u.momentum * buffer : buffer;
    }
    const double bound = p + u.lr * step + u.momentum * b + d;  // every value written, with room
    if (std::isfinite(bound) && bound < 0.5 * largest_finite(u.param.scalar_type())) continue;
    check_finite("a parameter", sgd_value(u));  // inconclusive (NaN/Inf inputs, or huge values)
  }
}

torch::Tensor apply_sgd_update(const SGDUpdate& u) {
  torch::Tensor d = u.grad;
  if (u.maximize || u.weight_decay != 0) {
    d = u.maximize ? -u.grad : u.grad.clone();
    if (u.weight_decay != 0) d.add_(u.param, u.weight_decay);
  }
  torch::Tensor buffer;
  if (u.momentum != 0) {
    if (u.momentum_buffer.defined()) {
      buffer = u.momentum_buffer;
      buffer.mul_(u.momentum).add_(d, 1.0 - u.dampening);
    } else {
      buffer = d.clone();
    }
    d = u.nesterov ? d.add(buffer, u.momentum) : buffer;
  }
  u.param.add_(d, -u.lr);
  return buffer;
}

std::vector<std::pair<torch::Tensor, torch::Tensor>> apply_step_updates(const StepUpdates& updates) {
  torch::NoGradGuard no_grad;
  for (const auto& value : updates.values) value.first.copy_(value.second);
  auto buffers = updates.momentum_buffers;
  for (const auto& u : updates.sgd_updates) {
    auto buffer = apply_sgd_update(u);
    if (buffer.defined()) buffers.emplace_back(u.param, buffer);
  }
  return buffers;
}

void check_options(const GLRAMSGDOptions& options) {
  TORCH_CHECK_VALUE(options.lr() >= 0, "GLRAMSGD: lr must be >= 0, got ", options.lr());
  TORCH_CHECK_VALUE(options.momentum() >= 0, "GLRAMSGD: momentum must be >= 0, got ", options.momentum());
  TORCH_CHECK_VALUE(options.dampening() >= 0, "GLRAMSGD: dampening must be >= 0, got ", options.dampening());
  TORCH_CHECK_VALUE(!options.nesterov() || (options.momentum() > 0 && options.dampening() == 0),
                    "GLRAMSGD: nesterov momentum requires a momentum > 0 and zero dampening, got momentum ",
                    options.momentum(), " and dampening ", options.dampening());
  TORCH_CHECK_VALUE(options.weight_decay() >= 0, "GLRAMSGD: weight_decay must be >= 0, got ", options.weight_decay());
  TORCH_CHECK_VALUE(options.max_iter() >= 0, "GLRAMSGD: max_iter must be >= 0, got ", options.max_iter());
  TORCH_CHECK_VALUE(options.tol() >= 0, "GLRAMSGD: tol must be >= 0, got ", options.tol());
}

namespace {
const utils::EnumNames<GLRAMSGDProjection, 2> kProjectionNames{
    "projection", {{{GLRAMSGDProjection::tangent, "tangent"}, {GLRAMSGDProjection::full, "full"}}}};
}  // namespace

const char* projection_name(GLRAMSGDProjection projection) { return kProjectionNames.name(projection); }

GLRAMSGDProjection parse_projection(const std::string& name, const char* op) {
  return kProjectionNames.parse(name, op);
}

namespace {

// "QuadraticLayer (weight (r, d), S (n, r, r))" for error messages.
std::string describe(const ProjectedBatch& layer) {
  std::ostringstream out;
  out << (layer.convolution ? "QuadraticConv2d" : "QuadraticLayer") << " (weight " << layer.weight.sizes() << ", S "
      << layer.S.sizes() << ")";
  return out.str();
}

torch::Tensor flat_weight(const torch::Tensor& weight) { return weight.reshape({weight.size(0), -1}); }

}  // namespace

bool needs_batch(GLRAMSGDProjection projection, const ProjectedBatch& layer) {
  if (layer.convolution) return false;
  return projection == GLRAMSGDProjection::full ||
         !linalg::tangent_step_unavailable(flat_weight(layer.weight), layer.S).empty();
}

StepUpdates glram_sgd_updates(const std::vector<StepGroup>& groups, const std::vector<ProjectedBatch>& layers) {
  StepUpdates updates;
  updates.needs_batch.assign(layers.size(), false);
  std::unordered_set<const void*> projected;
  for (const auto& layer : layers) {
    projected.insert(layer.weight.unsafeGetTensorImpl());
    projected.insert(layer.S.unsafeGetTensorImpl());
  }
  for (const auto& group : groups) {
    const auto& options = group.options;
    TORCH_CHECK(group.momentum_buffers.size() == group.params.size(),
                "glram_sgd_updates: expected one momentum buffer slot per parameter");
    std::unordered_map<const void*, size_t> index_in_group;
    for (size_t i = 0; i < group.params.size(); ++i) index_in_group[group.params[i].unsafeGetTensorImpl()] = i;
    const auto glram_options =
        linalg::GLRAMOptions().tol(options.tol()).max_iter(options.max_iter()).solver(options.solver());
    const bool tangent = options.projection() == GLRAMSGDProjection::tangent;
    for (size_t l = 0; l < layers.size(); ++l) {
      const auto& layer = layers[l];
      auto weight_index = index_in_group.find(layer.weight.unsafeGetTensorImpl());
      auto S_index = index_in_group.find(layer.S.unsafeGetTensorImpl());
      const bool has_weight = weight_index != index_in_group.end();
      TORCH_CHECK(has_weight == (S_index != index_in_group.end()), "GLRAMSGD: a ", describe(layer),
                  "'s weight and S must be in the same param group");
      if (!has_weight) continue;  // in another group
      TORCH_CHECK(!(layer.convolution && !tangent),
                  "GLRAMSGD: the full projected step (projection=\"full\") is not "
                  "implemented for ",
                  describe(layer), "; use projection=\"tangent\"");
      const auto weight = flat_weight(layer.weight);
      const auto& weight_grad = layer.weight.grad();
      const auto& S_grad = layer.S.grad();
      const double sign = options.maximize() ? -1.0 : 1.0;  // maximize: step along −gradient
      if (!weight_grad.defined() && !S_grad.defined()) {    // no gradient: no step, as for SGD
        updates.needs_batch[l] = needs_batch(options.projection(), layer);
        continue;
      }
      TORCH_CHECK(weight_grad.defined() && S_grad.defined(), "GLRAMSGD: the ", describe(layer),
                  " has a gradient for only one of weight and S (freeze both or neither)");
      std::string unavailable;  // why the tangent step does not apply (projection "tangent")
      if (tangent) {
        const auto& bW = group.momentum_buffers[weight_index->second];
        const auto& bS = group.momentum_buffers[S_index->second];
        linalg::TangentVector buffer;
        if (bW.defined() && bS.defined()) buffer = {flat_weight(bW), bS};
        auto result = linalg::tangent_update(weight, layer.S, flat_weight(weight_grad) * sign, S_grad * sign, buffer,
                                             linalg::TangentUpdateOptions(options.lr())
                                                 .weight_decay(options.weight_decay())
                                                 .momentum(options.momentum())
                                                 .dampening(options.dampening())
                                                 .nesterov(options.nesterov())
                                                 .glram(glram_options));
        if (result.unavailable.empty()) {
          updates.needs_batch[l] = !result.unavailable_after.empty();
          updates.values.emplace_back(layer.weight, result.projection.weight.view(layer.weight.sizes()));
          updates.values.emplace_back(layer.S, result.projection.S);
          if (result.momentum_buffer.defined()) {
            updates.momentum_buffers.emplace_back(layer.weight, result.momentum_buffer.dW.view(layer.weight.sizes()));
            updates.momentum_buffers.emplace_back(layer.S, result.momentum_buffer.dS);
          }
          updates.projections.push_back(std::move(result.projection));
          continue;
        }
        unavailable = std::move(result.unavailable);
      }
      // The full projected step: projection "full", or a layer off the rank-r model.
      TORCH_CHECK(!layer.convolution, "GLRAMSGD: the tangent step does not apply to the ", describe(layer), ": ",
                  unavailable,
                  ". It needs the full projected step, which is not implemented for convolutions; "
                  "re-initialise the layer (reset_parameters) or give it to another optimizer");
      if (!layer.X.defined()) {
        const bool zero_gradient = !weight_grad.any().item<bool>() && !S_grad.any().item<bool>();
        TORCH_CHECK(!tangent || zero_gradient, "GLRAMSGD: the tangent step does not apply to the ", describe(layer),
                    ": ", unavailable,
                    ". Its step is the full projected step, which needs the batch captured during forward/backward, "
                    "and none was captured (were the parameters set after the previous step? then run forward and "
                    "backward again before step())");
        TORCH_CHECK(zero_gradient, "GLRAMSGD: the ", describe(layer),
                    " has gradients but no captured batch, which "
                    "its full projected step (projection=\"full\") needs. Either another optimizer over the same "
                    "layer stepped first (a step consumes the batch: step a layer with one optimizer, or use "
                    "projection=\"tangent\", which steps from .grad), or its forward ran before this optimizer "
                    "was built, in eval() mode or under torch.no_grad()");
        continue;  // zero gradients (zero_grad(set_to_none=False), layer unused): nothing to step
      }
      // Under autocast the batch may be in a lower precision than the layer (the op ran in the
      // parameters' float32 on the cast input): the gradients are those of the cast batch.
      const auto X = layer.X.to(layer.weight.scalar_type()), G = layer.G.to(layer.weight.scalar_type());
      const double scale =
          captured_gradient_scale(layer.weight, layer.S, X, G, weight_grad, S_grad, layer.create_graph);
      auto result = quadratic_layer_step(layer.weight, layer.S, X, scale * sign == 1.0 ? G : G * (scale * sign),
                                         options.lr(), options.weight_decay(), glram_options);
      updates.needs_batch[l] = needs_batch(options.projection(), {result.weight, result.S});
      updates.values.emplace_back(layer.weight, result.weight);
      updates.values.emplace_back(layer.S, result.S);
      updates.projections.push_back(std::move(result));
    }
    for (size_t i = 0; i < group.params.size(); ++i) {
      const auto& p = group.params[i];
      if (projected.count(p.unsafeGetTensorImpl()) || !p.grad().defined()) continue;
      SGDUpdate update;
      update.param = p, update.grad = p.grad(), update.momentum_buffer = group.momentum_buffers[i];
      update.lr = options.lr(), update.momentum = options.momentum(), update.dampening = options.dampening();
      update.weight_decay = options.weight_decay(), update.nesterov = options.nesterov();
      update.maximize = options.maximize();
      updates.sgd_updates.push_back(std::move(update));
    }
  }
  check_sgd_updates_finite(updates.sgd_updates);
  return updates;
}

void GLRAMSGDOptions::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(momentum);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(weight_decay);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(tol);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(max_iter);
  archive.write("solver", c10::IValue(std::string(linalg::solver_name(solver()))));  // by name, as Python's
  archive.write("projection", c10::IValue(std::string(projection_name(projection()))));
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(dampening);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(nesterov);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(maximize);
}

void GLRAMSGDOptions::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, momentum);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, weight_decay);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, tol);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(int64_t, max_iter);
  // Options added after the first release are absent from older archives: they take their
  // defaults, as Python's load_state_dict gives them, not the values these options held.
  const GLRAMSGDOptions defaults(lr());
  c10::IValue value;
  solver(archive.try_read("solver", value) ? linalg::parse_solver(value.toStringRef(), "GLRAMSGD") : defaults.solver());
  projection(archive.try_read("projection", value) ? parse_projection(value.toStringRef(), "GLRAMSGD")
                                                   : defaults.projection());
  dampening(archive.try_read("dampening", value) ? value.toDouble() : defaults.dampening());
  nesterov(archive.try_read("nesterov", value) ? value.toBool() : defaults.nesterov());
  maximize(archive.try_read("maximize", value) ? value.toBool() : defaults.maximize());
}

void GLRAMSGDParamState::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(momentum_buffer);
}

void GLRAMSGDParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, momentum_buffer);
}

GLRAMSGD::GLRAMSGD(torch::nn::Module& model, GLRAMSGDOptions defaults)
    : GLRAMSGD(model, {torch::optim::OptimizerParamGroup(model.parameters())}, std::move(defaults)) {}

GLRAMSGD::GLRAMSGD(torch::nn::Module& model, std::vector<torch::optim::OptimizerParamGroup> param_groups,
                   GLRAMSGDOptions defaults)
    : Optimizer(std::vector<torch::optim::OptimizerParamGroup>{}, std::make_unique<GLRAMSGDOptions>(defaults)) {
  detail::add_param_groups(*this, param_groups);
  // group index of every parameter given to the optimizer
  std::unordered_map<const void*, size_t> group_of;
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    check_options(static_cast<const GLRAMSGDOptions&>(param_groups_[g].options()));
    for (const auto& p : param_groups_[g].params()) group_of[p.unsafeGetTensorImpl()] = g;
  }
  auto options_of = [this](size_t g) -> const GLRAMSGDOptions& {
    return static_cast<const GLRAMSGDOptions&>(param_groups_[g].options());
  };
  // The QuadraticConv2d layers whose forms act on batch-normalised filter outputs (refused below).
  std::unordered_set<const nn::QuadraticConv2dImpl*> rank_normed;
  for (const auto& module : model.modules(/*include_self=*/true)) {
    auto block = std::dynamic_pointer_cast<nn::PolynomialConvBlockImpl>(module);
    if (block && block->rank_norm) rank_normed.insert(block->quadratic.get());
  }
  for (const auto& module : model.modules(/*include_self=*/true)) {
    torch::Tensor weight, S;
    Layer layer;
    if (auto dense = std::dynamic_pointer_cast<nn::QuadraticLayerImpl>(module)) {
      weight = dense->weight, S = dense->S, layer.dense = dense;
    } else if (auto conv = std::dynamic_pointer_cast<nn::QuadraticConv2dImpl>(module)) {
      weight = conv->weight, S = conv->S, layer.conv = conv;
    } else {
      continue;
    }
    auto w = group_of.find(weight.unsafeGetTensorImpl());
    auto s = group_of.find(S.unsafeGetTensorImpl());
    if (w == group_of.end() && s == group_of.end()) continue;  // not optimized here
    const char* kind = layer.conv ? "QuadraticConv2d" : "QuadraticLayer";
    TORCH_CHECK(w != group_of.end() && s != group_of.end() && w->second == s->second, "GLRAMSGD: a ", kind,
                "'s weight and S must be in the same param group");
    TORCH_CHECK(!layer.conv || options_of(w->second).projection() == GLRAMSGDProjection::tangent,
                "GLRAMSGD: a QuadraticConv2d is in a param group with projection=\"full\", whose full projected step "
                "is not implemented for convolutions; use projection=\"tangent\" (the default)");
    TORCH_CHECK_VALUE(!layer.conv || !rank_normed.count(layer.conv.get()),
                      "GLRAMSGD: a QuadraticConv2d (weight of shape ", weight.sizes(),
                      ") belongs to a PolynomialConvBlock with rank_norm=true, whose batch norm between "
                      "the filters W and the forms S leaves no canonical matrices A_i = W^T S_i W to project; train "
                      "that block with torch::optim::SGD or Adam, or build it with rank_norm=false");
    layers_.push_back(std::move(layer));
  }
  // Capture only once every check passed, and only for the layers whose next step needs a batch.
  for (auto& layer : layers_) {
    if (!layer.dense) continue;
    const auto projection = options_of(group_of.at(layer.dense->weight.unsafeGetTensorImpl())).projection();
    set_capturing(layer, needs_batch(projection, {layer.dense->weight, layer.dense->S}));
  }
}

void GLRAMSGD::set_capturing(Layer& layer, bool capturing) {
  if (!layer.dense || layer.capturing == capturing) return;
  layer.dense->set_capture(capturing);
  layer.capturing = capturing;
}

GLRAMSGD::~GLRAMSGD() {
  for (auto& layer : layers_) set_capturing(layer, false);
}

torch::Tensor GLRAMSGD::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  std::vector<StepGroup> groups;
  for (auto& group : param_groups_) {
    StepGroup step_group{group.params(), {}, static_cast<const GLRAMSGDOptions&>(group.options())};
    for (const auto& p : group.params()) {
      auto found = state_.find(state_key(p));
      step_group.momentum_buffers.push_back(
          found == state_.end() ? torch::Tensor() : static_cast<GLRAMSGDParamState&>(*found->second).momentum_buffer());
    }
    groups.push_back(std::move(step_group));
  }
  std::vector<ProjectedBatch> batches;
  for (auto& layer : layers_) {
    if (layer.conv) {
      batches.push_back({layer.conv->weight, layer.conv->S, {}, {}, /*convolution=*/true});
    } else {
      auto captured = layer.dense->captured();
      batches.push_back({layer.dense->weight, layer.dense->S, captured.first, captured.second, /*convolution=*/false,
                         layer.dense->captured_with_create_graph()});
    }
  }
  auto updates = glram_sgd_updates(groups, batches);  // throws before anything is written
  for (auto& entry : apply_step_updates(updates)) {
    auto state = std::make_unique<GLRAMSGDParamState>();
    state->momentum_buffer(entry.second);
    state_[state_key(entry.first)] = std::move(state);
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (layers_[l].dense) layers_[l].dense->drop_captured();
    set_capturing(layers_[l], updates.needs_batch[l]);
  }
  last_projections_ = std::move(updates.projections);
  return loss;
}

void GLRAMSGD::zero_grad(bool set_to_none) {
  Optimizer::zero_grad(set_to_none);
  for (auto& layer : layers_) {
    if (layer.dense) layer.dense->drop_captured();
  }
}

void GLRAMSGD::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<GLRAMSGDParamState, GLRAMSGDOptions>(archive, *this);
  detail::save_group_options<GLRAMSGDOptions>(archive, *this);
}

void GLRAMSGD::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<GLRAMSGDParamState, GLRAMSGDOptions>(archive, *this);
  detail::load_group_options<GLRAMSGDOptions>(archive, *this);
}

}  // namespace optim
}  // namespace quadnet
