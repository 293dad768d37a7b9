// Python bindings of quadnet's C++ library (the quadnet._C extension). The ops themselves
// are reached through torch.ops.quadnet.* (registered in csrc/quadnet/ops/); this file
// exposes the non-op API. Python only adapts these: no algorithm is written twice.
#include <torch/extension.h>

#include "quadnet/quadnet.h"

namespace {

// Options as Python passes them (the solver by name; a wrong name is a ValueError naming `op`).
quadnet::linalg::GLRAMOptions glram_options(const char* op, double tol, int64_t max_iter, const std::string& solver) {
  return quadnet::linalg::GLRAMOptions().tol(tol).max_iter(max_iter).solver(quadnet::linalg::parse_solver(solver, op));
}

// A Python param group's GLRAMSGD options (the keys torch.optim fills from the defaults).
quadnet::optim::GLRAMSGDOptions glram_sgd_options(const py::dict& group) {
  return quadnet::optim::GLRAMSGDOptions(group["lr"].cast<double>())
      .momentum(group["momentum"].cast<double>())
      .weight_decay(group["weight_decay"].cast<double>())
      .tol(group["tol"].cast<double>())
      .max_iter(group["max_iter"].cast<int64_t>())
      .solver(quadnet::linalg::parse_solver(group["solver"].cast<std::string>(), "GLRAMSGD"))
      .dampening(group["dampening"].cast<double>())
      .nesterov(group["nesterov"].cast<bool>())
      .maximize(group["maximize"].cast<bool>())
      .projection(quadnet::optim::parse_projection(group["projection"].cast<std::string>(), "GLRAMSGD"));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "quadnet C++ core";

  auto linalg = m.def_submodule("linalg", "GLRAM projections");
  using quadnet::linalg::GLRAMResult;
  py::class_<GLRAMResult>(linalg, "GLRAMResult")
      .def_readonly("weight", &GLRAMResult::weight)
      .def_readonly("S", &GLRAMResult::S)
      .def_readonly("objective", &GLRAMResult::objective)
      .def_readonly("iterations", &GLRAMResult::iterations)
      .def_readonly("converged", &GLRAMResult::converged);
  linalg.def(
      "glram",
      [](const torch::Tensor& A, int64_t rank, double tol, int64_t max_iter, c10::optional<torch::Tensor> init,
         const std::string& solver) {
        return quadnet::linalg::glram(
            A, rank, glram_options("glram", tol, max_iter, solver).init(init.value_or(torch::Tensor())));
      },
      py::arg("A"), py::arg("rank"), py::arg("tol"), py::arg("max_iter"), py::arg("init"), py::arg("solver"),
      py::call_guard<py::gil_scoped_release>());
  linalg.def(
      "projected_step",
      [](const torch::Tensor& weight, const torch::Tensor& S, const torch::Tensor& X, const torch::Tensor& G, double lr,
         double tol, int64_t max_iter, const std::string& solver) {
        return quadnet::linalg::projected_step(weight, S, X, G, lr,
                                               glram_options("projected_step", tol, max_iter, solver));
      },
      py::arg("weight"), py::arg("S"), py::arg("X"), py::arg("G"), py::arg("lr"), py::arg("tol"), py::arg("max_iter"),
      py::arg("solver"), py::call_guard<py::gil_scoped_release>());

  linalg.def(
      "tangent_step",
      [](const torch::Tensor& weight, const torch::Tensor& S, const torch::Tensor& weight_grad,
         const torch::Tensor& S_grad, double lr, double tol, int64_t max_iter, const std::string& solver) {
        return quadnet::linalg::tangent_step(weight, S, weight_grad, S_grad, lr,
                                             glram_options("tangent_step", tol, max_iter, solver));
      },
      py::arg("weight"), py::arg("S"), py::arg("weight_grad"), py::arg("S_grad"), py::arg("lr"), py::arg("tol"),
      py::arg("max_iter"), py::arg("solver"), py::call_guard<py::gil_scoped_release>());
  linalg.def("tangent_step_unavailable", &quadnet::linalg::tangent_step_unavailable, py::arg("weight"), py::arg("S"),
             py::call_guard<py::gil_scoped_release>());

  // The one definition of every default (C++), read by the Python signatures.
  const quadnet::linalg::GLRAMOptions glram_defaults;
  py::dict linalg_defaults;
  linalg_defaults["tol"] = glram_defaults.tol();
  linalg_defaults["max_iter"] = glram_defaults.max_iter();
  linalg_defaults["solver"] = quadnet::linalg::solver_name(glram_defaults.solver());
  linalg.attr("DEFAULTS") = linalg_defaults;

  auto optim = m.def_submodule("optim", "optimizer update rules");
  const quadnet::optim::GLRAMSGDOptions sgd_defaults;
  py::dict glram_sgd_defaults;
  glram_sgd_defaults["momentum"] = sgd_defaults.momentum();
  glram_sgd_defaults["dampening"] = sgd_defaults.dampening();
  glram_sgd_defaults["nesterov"] = sgd_defaults.nesterov();
  glram_sgd_defaults["weight_decay"] = sgd_defaults.weight_decay();
  glram_sgd_defaults["tol"] = sgd_defaults.tol();
  glram_sgd_defaults["max_iter"] = sgd_defaults.max_iter();
  glram_sgd_defaults["solver"] = quadnet::linalg::solver_name(sgd_defaults.solver());
  glram_sgd_defaults["projection"] = quadnet::optim::projection_name(sgd_defaults.projection());
  glram_sgd_defaults["maximize"] = sgd_defaults.maximize();
  optim.attr("GLRAMSGD_DEFAULTS") = glram_sgd_defaults;
  const quadnet::optim::EndToEndSGDOptions end_to_end_defaults(/*lr=*/0);
  py::dict end_to_end_sgd_defaults;
  end_to_end_sgd_defaults["depth"] = end_to_end_defaults.depth();
  end_to_end_sgd_defaults["maximize"] = end_to_end_defaults.maximize();
  optim.attr("END_TO_END_SGD_DEFAULTS") = end_to_end_sgd_defaults;
  optim.def(
      "needs_batch",
      [](const std::string& projection, const torch::Tensor& weight, const torch::Tensor& S, bool convolution) {
        return quadnet::optim::needs_batch(quadnet::optim::parse_projection(projection, "GLRAMSGD"),
                                           {weight, S, {}, {}, convolution});
      },
      py::arg("projection"), py::arg("weight"), py::arg("S"), py::arg("convolution"),
      py::call_guard<py::gil_scoped_release>());
  optim.def(
      "check_options", [](const py::dict& group) { quadnet::optim::check_options(glram_sgd_options(group)); },
      py::arg("group"));
  using GroupArg = std::tuple<std::vector<torch::Tensor>, std::vector<c10::optional<torch::Tensor>>, py::dict>;
  // (weight, S, X, G, convolution, create_graph): ProjectedBatch
  using LayerArg =
      std::tuple<torch::Tensor, torch::Tensor, c10::optional<torch::Tensor>, c10::optional<torch::Tensor>, bool, bool>;
  // One whole step: every update computed and checked (throws: nothing written), then written
  // (projected values copied, SGD updates in place); returns (momentum buffers, projections,
  // needs_batch).
  optim.def(
      "glram_sgd_step",
      [](const std::vector<GroupArg>& groups, const std::vector<LayerArg>& layers) {
        std::vector<quadnet::optim::StepGroup> step_groups;
        for (const auto& group : groups) {
          quadnet::optim::StepGroup step_group{std::get<0>(group), {}, glram_sgd_options(std::get<2>(group))};
          for (const auto& buffer : std::get<1>(group))
            step_group.momentum_buffers.push_back(buffer.value_or(torch::Tensor()));
          step_groups.push_back(std::move(step_group));
        }
        std::vector<quadnet::optim::ProjectedBatch> batches;
        for (const auto& layer : layers) {
          batches.push_back({std::get<0>(layer), std::get<1>(layer), std::get<2>(layer).value_or(torch::Tensor()),
                             std::get<3>(layer).value_or(torch::Tensor()), std::get<4>(layer), std::get<5>(layer)});
        }
        py::gil_scoped_release release;
        auto updates = quadnet::optim::glram_sgd_updates(step_groups, batches);
        auto buffers = quadnet::optim::apply_step_updates(updates);
        return std::make_tuple(buffers, updates.projections, updates.needs_batch);
      },
      py::arg("groups"), py::arg("layers"));
  optim.def("end_to_end_direction", &quadnet::optim::end_to_end_direction, py::arg("weight"), py::arg("grad"),
            py::arg("depth"));
  optim.def("end_to_end_update", &quadnet::optim::end_to_end_update, py::arg("weight"), py::arg("grad"), py::arg("lr"),
            py::arg("depth"));

  auto nn = m.def_submodule("nn", "module helpers");
  nn.def(
      "check_layer_sizes",
      [](const std::string& module, int64_t in, int64_t out, int64_t rank, bool rank_at_most_in) {
        quadnet::nn::check_layer_sizes(module.c_str(), in, out, rank, rank_at_most_in);
      },
      py::arg("module"), py::arg("in_features"), py::arg("out_features"), py::arg("rank"),
      py::arg("rank_at_most_in_features"));
  nn.def(
      "check_conv_options",
      [](const std::string& module, int64_t in, int64_t out, std::vector<int64_t> kernel_size, int64_t rank,
         std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
         bool rank_at_most_patch) {
        auto options = quadnet::nn::QuadraticConv2dOptions(in, out, torch::IntArrayRef(kernel_size), rank)
                           .stride(torch::IntArrayRef(stride))
                           .padding(torch::IntArrayRef(padding))
                           .dilation(torch::IntArrayRef(dilation));
        quadnet::nn::check_conv_options(module.c_str(), options, rank_at_most_patch);
      },
      py::arg("module"), py::arg("in_channels"), py::arg("out_channels"), py::arg("kernel_size"), py::arg("rank"),
      py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("rank_at_most_patch"));
  // Called from the Python layers' autograd hooks (the C++ layers' hooks call it directly).
  nn.def("backward_accumulates_into", &quadnet::nn::backward_accumulates_into, py::arg("param"));
  nn.def(
      "num_free_parameters",
      [](const std::string& name, std::vector<int64_t> sizes) {
        return quadnet::nn::num_free_parameters(name, torch::IntArrayRef(sizes));
      },
      py::arg("name"), py::arg("sizes"));
  nn.def("diagonal_parameters", &quadnet::nn::diagonal_parameters, py::arg("weight"), py::arg("S"));
  nn.def(
      "init_quadratic_layer_",
      [](torch::Tensor weight, torch::Tensor S, c10::optional<torch::Tensor> bias) {
        auto b = bias.value_or(torch::Tensor());
        quadnet::nn::init::quadratic_layer_(weight, S, b);
      },
      py::arg("weight"), py::arg("S"), py::arg("bias"));
  nn.def(
      "init_diagonal_quadratic_layer_",
      [](torch::Tensor weight, torch::Tensor alpha, c10::optional<torch::Tensor> bias) {
        auto b = bias.value_or(torch::Tensor());
        quadnet::nn::init::diagonal_quadratic_layer_(weight, alpha, b);
      },
      py::arg("weight"), py::arg("alpha"), py::arg("bias"));
  nn.def(
      "init_overparam_linear_",
      [](std::vector<torch::Tensor> factors, c10::optional<torch::Tensor> bias, const std::string& init,
         double init_scale, c10::optional<torch::Tensor> weight) {
        quadnet::nn::init::overparam_linear_(std::move(factors), bias.value_or(torch::Tensor()), init, init_scale,
                                             weight.value_or(torch::Tensor()));
      },
      py::arg("factors"), py::arg("bias"), py::arg("init"), py::arg("init_scale"), py::arg("weight"));
}
