// The tangent-space projected step (linalg::tangent_update / tangent_step) and GLRAMSGD's use
// of it: agreement with the full projected step to first order, the result on the model, a
// bounded step at an ill-conditioned S, the points where it does not apply, momentum.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <quadnet/quadnet.h>

#include "testing.h"

#include <cmath>
#include <sstream>
#include <string>

namespace {

using quadnet::linalg::GLRAMOptions;

struct Layer {
  torch::Tensor W, S, X, G, weight_grad, S_grad, A, canonical_gradient;
};

// A float64 layer with orthonormal weight rows, a batch and its output gradient; the gradients
// of y = (Wx)^T S (Wx) by autograd, and the dense A and canonical gradient.
Layer random_layer(int64_t d, int64_t r, int64_t n, int64_t B, double S_scale_last = 1.0, uint64_t seed = 0) {
  torch::manual_seed(seed);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  Layer l;
  l.W = std::get<0>(torch::linalg_qr(torch::randn({d, r}, opts))).t().contiguous();
  auto E = std::get<0>(torch::linalg_qr(torch::randn({r, r}, opts)));
  auto scales = torch::randn({n, r}, opts);
  scales.select(1, r - 1).mul_(S_scale_last);
  l.S = torch::matmul(E * scales.unsqueeze(1), E.t());  // E diag(scales_i) E^T
  l.X = torch::randn({B, d}, opts);
  l.G = torch::randn({B, n}, opts) * 0.01;
  auto W = l.W.clone().requires_grad_(), S = l.S.clone().requires_grad_();
  auto y = quadnet::quadratic_form(l.X, W, S);
  (y * l.G).sum().backward();
  l.weight_grad = W.grad(), l.S_grad = S.grad();
  l.A = quadnet::canonical_form(l.W, l.S);
  l.canonical_gradient = quadnet::canonical_gradient(l.X, l.G);
  return l;
}

torch::Tensor canonical(const quadnet::linalg::GLRAMResult& r) { return quadnet::canonical_form(r.weight, r.S); }

using quadnet::testing::error_of;

TEST(TangentStep, AgreesWithTheFullStepToFirstOrder) {
  auto l = random_layer(30, 4, 3, 50);
  auto exact = GLRAMOptions().tol(0).max_iter(500).solver(quadnet::linalg::GLRAMSolver::exact);
  std::vector<double> differences;
  for (double lr : {0.02, 0.01, 0.005}) {
    auto tangent = quadnet::linalg::tangent_step(l.W, l.S, l.weight_grad, l.S_grad, lr, exact);
    auto full = quadnet::linalg::projected_step(l.W, l.S, l.X, l.G, lr, exact);
    const double step = (canonical(full) - l.A).norm().item<double>();
    differences.push_back((canonical(tangent) - canonical(full)).norm().item<double>() / step);
  }
  EXPECT_LT(differences.back(), 1e-2);
  for (size_t i = 1; i < differences.size(); ++i) {  // relative difference O(lr): halves with lr
    EXPECT_GT(differences[i - 1] / differences[i], 1.7) << i;
    EXPECT_LT(differences[i - 1] / differences[i], 2.3) << i;
  }
}

TEST(TangentStep, ResultIsOnTheModelAndTheFrameDoesNotMatter) {
  auto l = random_layer(20, 3, 2, 40);
  // The same layer with non-orthonormal rows: W2 = M W, S2 = M^{-T} S M^{-1}.
  auto M = torch::triu(torch::randn({3, 3}, torch::kDouble)) + 3 * torch::eye(3, torch::kDouble);
  auto Minv = torch::inverse(M);
  auto W2 = torch::mm(M, l.W), S2 = torch::matmul(torch::matmul(Minv.t(), l.S), Minv);
  auto W2p = W2.clone().requires_grad_(), S2p = S2.clone().requires_grad_();
  (quadnet::quadratic_form(l.X, W2p, S2p) * l.G).sum().backward();
  auto one = quadnet::linalg::tangent_step(l.W, l.S, l.weight_grad, l.S_grad, 0.01);
  auto two = quadnet::linalg::tangent_step(W2, S2, W2p.grad(), S2p.grad(), 0.01);
  EXPECT_TRUE(torch::allclose(canonical(one), canonical(two), 0, 1e-10));
  for (const auto& r : {one, two}) {
    EXPECT_TRUE(torch::allclose(torch::mm(r.weight, r.weight.t()), torch::eye(3, torch::kDouble), 0, 1e-12));
    EXPECT_TRUE(torch::equal(r.S, r.S.transpose(1, 2)));
  }
}

TEST(TangentStep, NearlyUnusedDirectionGivesABoundedStep) {
  auto l = random_layer(30, 4, 3, 50, /*S_scale_last=*/1e-6);
  EXPECT_EQ(quadnet::linalg::tangent_step_unavailable(l.W, l.S), "");
  const double bound_per_lr = 2 * l.canonical_gradient.norm().item<double>();
  for (double lr : {1.0, 0.1, 0.01}) {
    auto r = quadnet::linalg::tangent_step(l.W, l.S, l.weight_grad, l.S_grad, lr);
    EXPECT_LE((canonical(r) - l.A).norm().item<double>(), lr * bound_per_lr) << lr;
    EXPECT_TRUE(torch::allclose(torch::mm(r.weight, r.weight.t()), torch::eye(4, torch::kDouble), 0, 1e-10));
  }
}

TEST(TangentStep, DoesNotApplyOffTheModel) {
  auto l = random_layer(10, 3, 2, 8);
  EXPECT_NE(quadnet::linalg::tangent_step_unavailable(torch::zeros_like(l.W), l.S).find("linearly dependent"),
            std::string::npos);
  auto rank_one = l.S.narrow(1, 0, 1).narrow(2, 0, 1);
  auto deficient = torch::zeros_like(l.S);
  deficient.narrow(1, 0, 1).narrow(2, 0, 1).copy_(rank_one);  // S_i = s_i e_1 e_1^T
  EXPECT_NE(quadnet::linalg::tangent_step_unavailable(l.W, deficient).find("singular"), std::string::npos);
  EXPECT_NE(quadnet::linalg::tangent_step_unavailable(l.W, torch::zeros_like(l.S)).find("S is zero"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              quadnet::linalg::tangent_step(l.W, deficient, l.weight_grad, l.S_grad, 0.1);
            }).find("needs the full projected step"),
            std::string::npos);
  EXPECT_NE(
      error_of([&] { quadnet::linalg::tangent_step(l.W, l.S, l.weight_grad.t(), l.S_grad, 0.1); }).find("weight_grad"),
      std::string::npos);
}

// GLRAMSGD: the projected layer gets momentum in the tangent space (no bias: nothing else could
// carry it), and a resumed optimizer continues exactly.
TEST(TangentStep, GLRAMSGDMomentumChangesTheTrajectoryAndResumes) {
  torch::manual_seed(3);
  auto make = [] {
    torch::manual_seed(3);
    auto layer = quadnet::nn::QuadraticLayer(quadnet::nn::QuadraticLayerOptions(12, 3, 4).bias(false));
    layer->to(torch::kDouble);
    return layer;
  };
  auto x = torch::randn({16, 12}, torch::kDouble), t = torch::randn({16, 3}, torch::kDouble);
  auto run = [&](quadnet::nn::QuadraticLayer& layer, quadnet::optim::GLRAMSGD& opt, int steps) {
    for (int s = 0; s < steps; ++s) {
      opt.zero_grad();
      (layer->forward(x) - t).square().mean().backward();
      opt.step();
    }
  };
  auto plain = make(), heavy = make(), resumed = make();
  quadnet::optim::GLRAMSGD opt_plain(*plain, quadnet::optim::GLRAMSGDOptions(0.01));
  quadnet::optim::GLRAMSGD opt_heavy(*heavy, quadnet::optim::GLRAMSGDOptions(0.01).momentum(0.9).nesterov(true));
  run(plain, opt_plain, 3);
  run(heavy, opt_heavy, 3);
  EXPECT_FALSE(torch::allclose(plain->weight, heavy->weight, 0, 1e-6));
  EXPECT_FALSE(opt_plain.state().size() > 0);
  EXPECT_FALSE(heavy->capture());  // on the model: no batch captured
  std::stringstream stream;
  {
    torch::serialize::OutputArchive archive;
    opt_heavy.save(archive);
    archive.save_to(stream);
  }
  {
    torch::NoGradGuard no_grad;
    resumed->weight.copy_(heavy->weight);
    resumed->S.copy_(heavy->S);
  }
  quadnet::optim::GLRAMSGD opt_resumed(*resumed, quadnet::optim::GLRAMSGDOptions(0.5));
  torch::serialize::InputArchive archive;
  archive.load_from(stream);
  opt_resumed.load(archive);
  run(heavy, opt_heavy, 2);
  run(resumed, opt_resumed, 2);
  EXPECT_TRUE(torch::equal(heavy->weight, resumed->weight));
  EXPECT_TRUE(torch::equal(heavy->S, resumed->S));
}

TEST(TangentStep, GLRAMSGDCapturesOnlyWhileALayerIsOffTheModel) {
  torch::manual_seed(1);
  auto layer = quadnet::nn::QuadraticLayer(quadnet::nn::QuadraticLayerOptions(10, 2, 3));
  {
    torch::NoGradGuard no_grad;
    layer->weight.zero_();
    layer->S.zero_();
  }
  quadnet::optim::GLRAMSGD opt(*layer, quadnet::optim::GLRAMSGDOptions(0.1));
  EXPECT_TRUE(layer->capture());  // zero init: the first step is the full one
  auto x = torch::randn({32, 10});
  opt.zero_grad();
  (layer->forward(x) - 1).square().mean().backward();
  opt.step();
  EXPECT_EQ(quadnet::linalg::tangent_step_unavailable(layer->weight, layer->S), "");
  EXPECT_FALSE(layer->capture());  // on the model now: tangent steps, no capture
}

}  // namespace
