#include <gtest/gtest.h>
#include <torch/torch.h>

#include <quadnet/quadnet.h>

#include "testing.h"

#include <sstream>
#include <string>
#include <vector>

namespace {

using quadnet::nn::QuadraticLayer;
using quadnet::optim::GLRAMSGD;
using quadnet::optim::GLRAMSGDOptions;

TEST(GLRAMSGD, OneStepEqualsDenseCanonicalStep) {
  torch::manual_seed(0);
  QuadraticLayer layer(quadnet::nn::QuadraticLayerOptions(12, 3, 2).bias(false));
  layer->to(torch::kFloat64);
  auto W0 = layer->weight.detach().clone(), S0 = layer->S.detach().clone();
  auto x = torch::randn({5, 12}, torch::kFloat64);
  auto target = torch::randn({5, 3}, torch::kFloat64);
  const double lr = 0.05;
  GLRAMSGD opt(*layer, GLRAMSGDOptions(lr).tol(0).max_iter(3).projection(quadnet::optim::GLRAMSGDProjection::full));
  opt.zero_grad();
  auto loss = 0.5 * (layer->forward(x) - target).square().sum();
  loss.backward();
  opt.step();

  // Dense reference: G = ∂ℓ/∂y, A = W^T S W − lr X^T diag(G) X, GLRAM warm-started at W0.
  auto G = quadnet::quadratic_form(x, W0, S0) - target;
  auto A = quadnet::canonical_form(W0, S0) - lr * quadnet::canonical_gradient(x, G);
  auto dense = quadnet::linalg::glram(A, 2, quadnet::linalg::GLRAMOptions().tol(0).max_iter(3).init(W0));
  EXPECT_TRUE(torch::allclose(layer->canonical(), quadnet::canonical_form(dense.weight, dense.S), 0, 1e-8));
  ASSERT_EQ(opt.last_projections().size(), 1u);
}

TEST(GLRAMSGD, OtherParametersGetSGDAndUnusedLayersStay) {
  torch::manual_seed(1);
  torch::nn::Sequential model(QuadraticLayer(6, 4, 2), torch::nn::Linear(4, 3));
  QuadraticLayer unused(6, 4, 2);
  model->register_module("unused", unused);
  GLRAMSGD opt(*model, GLRAMSGDOptions(0.1));
  auto linear = model[1]->as<torch::nn::Linear>();
  auto quad = model[0]->as<QuadraticLayer>();
  auto before_unused = unused->weight.detach().clone();
  auto before_w = quad->weight.detach().clone();
  auto before_lin = linear->weight.detach().clone();

  auto x = torch::randn({8, 6});
  auto loss = torch::nn::functional::cross_entropy(model->forward(x), torch::randint(0, 3, {8}));
  opt.zero_grad();
  loss.backward();
  auto expected_lin = before_lin - 0.1 * linear->weight.grad();
  opt.step();
  EXPECT_TRUE(torch::allclose(linear->weight, expected_lin));
  EXPECT_FALSE(torch::equal(quad->weight, before_w));
  EXPECT_TRUE(torch::equal(unused->weight, before_unused));
}

TEST(GLRAMSGD, NonFiniteStepThrowsAndChangesNothing) {
  torch::manual_seed(2);
  torch::nn::Sequential model(QuadraticLayer(5, 2, 2), torch::nn::Linear(2, 2));
  GLRAMSGD opt(*model, GLRAMSGDOptions(0.1).momentum(0.9));
  auto x = torch::randn({4, 5});
  opt.zero_grad();
  model->forward(x).sum().backward();
  opt.step();  // creates momentum state
  std::vector<torch::Tensor> before;
  for (auto& p : model->parameters()) before.push_back(p.detach().clone());
  opt.zero_grad();
  (model->forward(x).sum() * std::numeric_limits<float>::infinity()).backward();
  EXPECT_THROW(opt.step(), c10::Error);
  auto params = model->parameters();
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(torch::equal(params[i], before[i])) << i;
}

TEST(GLRAMSGD, StateRoundTripContinuesIdentically) {
  auto make = [] {
    torch::manual_seed(3);
    return torch::nn::Sequential(QuadraticLayer(5, 3, 2), torch::nn::Linear(3, 2));
  };
  auto x = torch::randn({6, 5});
  auto run = [&](torch::nn::Sequential& model, GLRAMSGD& opt, int steps) {
    for (int i = 0; i < steps; ++i) {
      opt.zero_grad();
      model->forward(x).square().sum().backward();
      opt.step();
    }
  };
  auto a = make();
  GLRAMSGD opt_a(*a, GLRAMSGDOptions(0.01).momentum(0.5));
  run(a, opt_a, 4);

  auto b = make();
  GLRAMSGD opt_b(*b, GLRAMSGDOptions(0.01).momentum(0.5));
  run(b, opt_b, 2);
  std::stringstream model_stream, opt_stream;
  torch::save(b, model_stream);
  torch::save(opt_b, opt_stream);
  auto c = make();
  GLRAMSGD opt_c(*c, GLRAMSGDOptions(0.5).momentum(0.9).max_iter(7).solver(
                         quadnet::linalg::GLRAMSolver::exact));  // restored by load
  torch::load(c, model_stream);
  torch::load(opt_c, opt_stream);
  const auto& restored = static_cast<const GLRAMSGDOptions&>(opt_c.param_groups()[0].options());
  EXPECT_EQ(restored.lr(), 0.01);
  EXPECT_EQ(restored.momentum(), 0.5);
  EXPECT_EQ(restored.max_iter(), 100);
  EXPECT_EQ(restored.solver(), quadnet::linalg::GLRAMSolver::rayleigh_ritz);
  run(c, opt_c, 2);
  auto pa = a->parameters(), pc = c->parameters();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pc[i])) << i;
}

// The options an archive of the first release held: lr, momentum, weight_decay, tol, max_iter.
torch::serialize::OutputArchive first_release_options(double lr, double momentum) {
  torch::serialize::OutputArchive archive;
  archive.write("lr", c10::IValue(lr));
  archive.write("momentum", c10::IValue(momentum));
  archive.write("weight_decay", c10::IValue(0.0));
  archive.write("tol", c10::IValue(1e-6));
  archive.write("max_iter", c10::IValue(int64_t{3}));
  return archive;
}

// The solver and the projection are saved by name (as Python's state dicts hold them) and come
// back as the enumerators; a name no version wrote is a ValueError.
TEST(GLRAMSGD, SolverAndProjectionAreSavedByName) {
  using quadnet::linalg::GLRAMSolver;
  using quadnet::optim::GLRAMSGDProjection;
  for (auto projection : {GLRAMSGDProjection::tangent, GLRAMSGDProjection::full})
    EXPECT_EQ(quadnet::optim::parse_projection(quadnet::optim::projection_name(projection), "GLRAMSGD"), projection);
  EXPECT_EQ(GLRAMSGDOptions(0.1).projection(), GLRAMSGDProjection::tangent);
  EXPECT_THROW(quadnet::optim::parse_projection("tangential", "GLRAMSGD"), c10::ValueError);

  auto saved = GLRAMSGDOptions(0.1).solver(GLRAMSolver::exact).projection(GLRAMSGDProjection::full);
  torch::serialize::OutputArchive out;
  saved.serialize(out);
  auto in = quadnet::testing::reloaded(out);
  c10::IValue name;
  ASSERT_TRUE(in.try_read("projection", name));
  EXPECT_EQ(name.toStringRef(), "full");
  GLRAMSGDOptions restored(0.5);
  restored.serialize(in);
  EXPECT_EQ(restored.solver(), GLRAMSolver::exact);
  EXPECT_EQ(restored.projection(), GLRAMSGDProjection::full);

  // An archive of the first release (lr, momentum, weight_decay, tol, max_iter only) loads with the
  // later options' defaults.
  auto first = first_release_options(0.2, 0.5);
  auto first_in = quadnet::testing::reloaded(first);
  GLRAMSGDOptions old(0.5);
  old.solver(GLRAMSolver::exact).projection(GLRAMSGDProjection::full).dampening(0.3).nesterov(true).maximize(true);
  old.serialize(first_in);
  EXPECT_EQ(old.lr(), 0.2);
  EXPECT_EQ(old.momentum(), 0.5);
  EXPECT_EQ(old.solver(), GLRAMSolver::rayleigh_ritz);
  EXPECT_EQ(old.projection(), GLRAMSGDProjection::tangent);
  EXPECT_EQ(old.dampening(), 0.0);
  EXPECT_FALSE(old.nesterov());
  EXPECT_FALSE(old.maximize());

  auto bad = first_release_options(0.1, 0.0);
  bad.write("solver", c10::IValue(std::string("lanczos")));
  auto bad_in = quadnet::testing::reloaded(bad);
  EXPECT_THROW(restored.serialize(bad_in), c10::ValueError);
}

TEST(GLRAMSGD, ParamGroupsGiveProjectedLayersTheirOwnOptions) {
  torch::manual_seed(5);
  QuadraticLayer quad(quadnet::nn::QuadraticLayerOptions(6, 4, 2).bias(false));
  torch::nn::Linear head(4, 3);
  torch::nn::Sequential model(quad, head);
  model->to(torch::kFloat64);
  auto x = torch::randn({8, 6}, torch::kFloat64);
  auto head_before = head->weight.detach().clone();
  auto canonical_before = quad->canonical().detach();
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{quad->weight, quad->S},
                      std::make_unique<GLRAMSGDOptions>(GLRAMSGDOptions(0.0)));  // frozen canonical A
  groups.emplace_back(head->parameters());
  GLRAMSGD opt(*model, std::move(groups), GLRAMSGDOptions(0.1));
  opt.zero_grad();
  model->forward(x).square().sum().backward();
  opt.step();
  ASSERT_EQ(opt.last_projections().size(), 1u);  // the layer was projected, with lr 0
  EXPECT_TRUE(torch::allclose(quad->canonical(), canonical_before, 0, 1e-10));
  EXPECT_FALSE(torch::allclose(head->weight, head_before));

  std::vector<torch::optim::OptimizerParamGroup> split;
  split.emplace_back(std::vector<torch::Tensor>{quad->weight});
  split.emplace_back(std::vector<torch::Tensor>{quad->S});
  try {
    GLRAMSGD bad(*model, std::move(split), GLRAMSGDOptions(0.1));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("weight and S must be in the same param group"), std::string::npos);
  }
}

// clip_grad_norm_ scales every .grad by c: the projected step uses c·G. Any other edit of .grad
// throws and leaves parameters and captures as they were.
TEST(GLRAMSGD, EditedGradientsScaleTheStepOrThrow) {
  torch::manual_seed(7);
  QuadraticLayer layer(quadnet::nn::QuadraticLayerOptions(12, 3, 2).bias(false));
  layer->to(torch::kFloat64);
  auto W0 = layer->weight.detach().clone(), S0 = layer->S.detach().clone();
  auto x = torch::randn({6, 12}, torch::kFloat64), target = torch::randn({6, 3}, torch::kFloat64);
  GLRAMSGD opt(*layer, GLRAMSGDOptions(0.05).projection(quadnet::optim::GLRAMSGDProjection::full));
  opt.zero_grad();
  (0.5 * (layer->forward(x) - target).square().sum()).backward();
  const double norm = torch::nn::utils::clip_grad_norm_(layer->parameters(), 1e-3);
  opt.step();
  auto G = (quadnet::quadratic_form(x, W0, S0) - target) * (1e-3 / (norm + 1e-6));
  auto expected = quadnet::linalg::projected_step(W0, S0, x, G, 0.05);
  EXPECT_TRUE(torch::allclose(layer->canonical(), quadnet::canonical_form(expected.weight, expected.S), 0, 1e-9));

  opt.zero_grad();
  (0.5 * (layer->forward(x) - target).square().sum()).backward();
  torch::nn::utils::clip_grad_value_(layer->parameters(), 1e-3);
  auto before = layer->canonical().detach().clone();
  try {
    opt.step();
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("are not a multiple of those its captured batch implies"), std::string::npos);
  }
  EXPECT_TRUE(torch::equal(layer->canonical(), before));
  EXPECT_TRUE(layer->captured().first.defined());
}

// Forwards without a backward record nothing; zero_grad forgets recorded batches; a destroyed
// optimizer releases its use of the captures, and the layer stops when none is left.
TEST(GLRAMSGD, CaptureIsBoundedAndEndsWithItsOptimizers) {
  torch::manual_seed(8);
  QuadraticLayer layer(6, 3, 2);
  auto x = torch::randn({4, 6});
  auto first =
      std::make_unique<GLRAMSGD>(*layer, GLRAMSGDOptions(0.01).projection(quadnet::optim::GLRAMSGDProjection::full));
  {
    GLRAMSGD second(*layer, GLRAMSGDOptions(0.01).projection(quadnet::optim::GLRAMSGDProjection::full));
    for (int i = 0; i < 20; ++i) layer->forward(x).sum();  // graphs freed at once
    EXPECT_FALSE(layer->captured().first.defined());
    layer->forward(x).sum().backward();
    EXPECT_EQ(layer->captured().first.size(0), 4);
    second.zero_grad();
    EXPECT_FALSE(layer->captured().first.defined());
  }
  EXPECT_TRUE(layer->capture());  // `first` still uses it
  first.reset();
  EXPECT_FALSE(layer->capture());
  layer->forward(x).sum().backward();
  EXPECT_FALSE(layer->captured().first.defined());
}

}  // namespace

namespace gradient_passes {

using quadnet::testing::error_of;

// A layer with a full-step optimizer, a batch, and the loss y² summed.
struct FullStep {
  QuadraticLayer layer{quadnet::nn::QuadraticLayerOptions(6, 3, 2).bias(false)};
  torch::Tensor x = torch::randn({8, 6}, torch::kFloat64);
  FullStep() { layer->to(torch::kFloat64); }
};

TEST(GLRAMSGDGradientPasses, AnAutogradGradPassOverTheInputsIsNotCaptured) {
  torch::manual_seed(20);
  FullStep s;
  GLRAMSGD opt(*s.layer, GLRAMSGDOptions(0.05).projection(quadnet::optim::GLRAMSGDProjection::full));
  auto x = s.x.clone().requires_grad_(true);
  auto grad_x = torch::autograd::grad({s.layer->forward(x).square().sum()}, {x})[0];
  EXPECT_FALSE(s.layer->captured().first.defined());  // .grad untouched: nothing recorded
  auto x_adv = (x + 0.1 * grad_x.sign()).detach();
  auto W0 = s.layer->weight.detach().clone(), S0 = s.layer->S.detach().clone();
  s.layer->forward(x_adv).square().sum().backward();
  EXPECT_EQ(s.layer->captured().first.size(0), 8);
  opt.step();
  auto expected = quadnet::linalg::projected_step(W0, S0, x_adv, 2 * quadnet::quadratic_form(x_adv, W0, S0), 0.05);
  EXPECT_TRUE(torch::allclose(s.layer->canonical(), quadnet::canonical_form(expected.weight, expected.S), 0, 1e-9));
}

TEST(GLRAMSGDGradientPasses, AGradientPenaltyWithTheFullStepNamesCreateGraph) {
  torch::manual_seed(21);
  FullStep s;
  GLRAMSGD opt(*s.layer, GLRAMSGDOptions(0.05).projection(quadnet::optim::GLRAMSGDProjection::full));
  auto x = s.x.clone().requires_grad_(true);
  auto y = s.layer->forward(x).square().sum();
  auto grad_x = torch::autograd::grad({y}, {x}, /*grad_outputs=*/{}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  (y + grad_x.square().sum()).backward();
  EXPECT_TRUE(s.layer->captured_with_create_graph());
  auto W0 = s.layer->weight.detach().clone();
  const auto message = error_of([&] { opt.step(); });
  EXPECT_NE(message.find("create_graph=True"), std::string::npos) << message;
  EXPECT_TRUE(torch::equal(s.layer->weight, W0));
  opt.zero_grad();
  EXPECT_FALSE(s.layer->captured_with_create_graph());
}

TEST(GLRAMSGDGradientPasses, ASecondFullOptimizerWithoutABatchRefuses) {
  torch::manual_seed(22);
  FullStep s;
  GLRAMSGD first(*s.layer, GLRAMSGDOptions(0.05).projection(quadnet::optim::GLRAMSGDProjection::full));
  GLRAMSGD second(*s.layer, GLRAMSGDOptions(0.05).projection(quadnet::optim::GLRAMSGDProjection::full));
  s.layer->forward(s.x).square().sum().backward();
  first.step();
  const auto message = error_of([&] { second.step(); });
  EXPECT_NE(message.find("has gradients but no captured batch"), std::string::npos) << message;
}

TEST(GLRAMSGDGradientPasses, BFloat16GradientsAreNotMistakenForEdits) {
  torch::manual_seed(23);
  QuadraticLayer layer(quadnet::nn::QuadraticLayerOptions(32, 4, 5).bias(false));
  layer->to(torch::kBFloat16);
  GLRAMSGD opt(*layer, GLRAMSGDOptions(0.01).projection(quadnet::optim::GLRAMSGDProjection::full));
  layer->forward(torch::randn({64, 32}).to(torch::kBFloat16)).to(torch::kFloat32).square().mean().backward();
  EXPECT_EQ(error_of([&] { opt.step(); }), "no error");
  EXPECT_EQ(opt.last_projections().size(), 1u);
}

TEST(QuadraticLayerSizes, RankAboveTheInputsIsAValueErrorAtConstruction) {
  EXPECT_THROW(QuadraticLayer(2, 3, 4), c10::ValueError);
  EXPECT_NE(error_of([] { QuadraticLayer(2, 3, 4); }).find("rank must be at most in_features (2), got rank=4"),
            std::string::npos);
  EXPECT_NO_THROW(quadnet::nn::DiagonalQuadraticLayer(2, 3, 10));
  EXPECT_THROW(quadnet::nn::QuadraticConv2d(quadnet::nn::QuadraticConv2dOptions(1, 3, 2, 5)), c10::ValueError);
  EXPECT_NO_THROW(quadnet::nn::QuadraticConv2d(quadnet::nn::QuadraticConv2dOptions(1, 3, 2, 4)));
}

}  // namespace gradient_passes

namespace conventions {

TEST(GLRAMSGDConventions, MaximizeMinimizesTheNegatedLossAndPlainUpdatesAreInPlace) {
  std::vector<torch::Tensor> batches;
  torch::manual_seed(40);
  for (int i = 0; i < 3; ++i) batches.push_back(torch::randn({8, 6}));
  std::vector<std::vector<torch::Tensor>> finals;
  for (bool maximize : {false, true}) {
    torch::manual_seed(41);
    torch::nn::Sequential model(QuadraticLayer(6, 3, 2), torch::nn::Linear(3, 2));
    GLRAMSGD opt(*model, GLRAMSGDOptions(0.05).momentum(0.9).weight_decay(0.01).maximize(maximize));
    auto linear = model->ptr(1)->as<torch::nn::Linear>();
    const auto* pointer = linear->weight.data_ptr();
    for (const auto& x : batches) {
      opt.zero_grad();
      auto loss = model->forward(x).square().mean();
      (maximize ? -loss : loss).backward();
      opt.step();
    }
    EXPECT_EQ(linear->weight.data_ptr(), pointer);  // updated in place, as torch::optim::SGD
    std::vector<torch::Tensor> values;
    for (const auto& p : model->parameters()) values.push_back(p.detach().clone());
    finals.push_back(values);
  }
  for (size_t i = 0; i < finals[0].size(); ++i) EXPECT_TRUE(torch::allclose(finals[0][i], finals[1][i], 0, 1e-6));
}

}  // namespace conventions
