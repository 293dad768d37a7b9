#include <gtest/gtest.h>
#include <torch/torch.h>

#include <quadnet/quadnet.h>

#include "testing.h"

#include <sstream>
#include <string>
#include <vector>

namespace {

using quadnet::nn::OverparamLinear;
using quadnet::nn::OverparamLinearOptions;

const auto kDouble = torch::dtype(torch::kFloat64);

// Σ_j (W W^T)^{(j−1)/N} G (W^T W)^{(N−j)/N} through eigen-powers (exponent 0: the identity).
torch::Tensor reference_direction(const torch::Tensor& W, const torch::Tensor& G, int64_t N) {
  auto power = [](const torch::Tensor& P, double e) {
    if (e == 0) return torch::eye(P.size(0), P.options());
    auto eig = at::linalg_eigh(P, "L");
    auto lam = std::get<0>(eig), Q = std::get<1>(eig);
    lam = torch::where(lam > 1e-12 * lam.max(), lam, torch::zeros_like(lam));
    return torch::mm(Q * lam.pow(e), Q.t());
  };
  auto sum = torch::zeros_like(G);
  for (int64_t j = 1; j <= N; ++j) {
    sum += torch::mm(torch::mm(power(torch::mm(W, W.t()), double(j - 1) / N), G),
                     power(torch::mm(W.t(), W), double(N - j) / N));
  }
  return sum;
}

TEST(OverparamLinear, ProductCollapseAndForwardAgree) {
  torch::manual_seed(0);
  for (int64_t depth : {1, 2, 3}) {
    OverparamLinear layer(OverparamLinearOptions(6, 4, depth).width(5).init_scale(0.5));
    layer->to(torch::kFloat64);
    auto factors = layer->factors->parameters();
    ASSERT_EQ(factors.size(), static_cast<size_t>(depth));
    auto W = factors[0];
    for (size_t j = 1; j < factors.size(); ++j) W = torch::mm(factors[j], W);
    EXPECT_TRUE(torch::equal(layer->end_to_end(), W));
    auto linear = layer->collapse();
    for (int64_t rows : {1, 300}) {  // chained and collapsed forward
      auto x = torch::randn({rows, 6}, kDouble);
      auto expected = torch::mm(x, W.t()) + layer->bias;
      EXPECT_TRUE(torch::allclose(layer->forward(x), expected, 1e-12, 1e-12)) << "depth " << depth;
      EXPECT_TRUE(torch::allclose(linear->forward(x), expected, 1e-12, 1e-12)) << "depth " << depth;
    }
  }
}

TEST(OverparamLinear, NamesAndBalancedFactorisationOfAMatrix) {
  torch::manual_seed(1);
  auto A = torch::randn({3, 7}, kDouble);
  OverparamLinear layer(OverparamLinearOptions(7, 3, 3).width(4).weight(A));
  layer->to(torch::kFloat64);
  std::vector<std::string> names;
  for (const auto& item : layer->named_parameters()) names.push_back(item.key());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"bias", "factors.0", "factors.1", "factors.2"}));
  // The float32 parameters hold the float64 factors rounded: compare the float64 factors.
  auto f = quadnet::nn::balanced_factors(A, 3, 4);
  EXPECT_TRUE(torch::allclose(quadnet::nn::chain_product(f), A, 0, 1e-12));
  for (size_t j = 0; j + 1 < f.size(); ++j) {
    EXPECT_LT((torch::mm(f[j + 1].t(), f[j + 1]) - torch::mm(f[j], f[j].t())).abs().max().item<double>(), 1e-12);
  }
  EXPECT_TRUE(torch::allclose(layer->end_to_end(), A, 1e-5, 1e-5));
}

TEST(OverparamLinear, WidthTooSmallOrBadDepthIsRejected) {
  EXPECT_THROW(OverparamLinear(5, 3, 0), c10::Error);
  try {
    OverparamLinear(OverparamLinearOptions(5, 3, 2).width(2).init("identity"));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs width >= min(in_features, out_features) = 3"), std::string::npos);
  }
}

TEST(EndToEnd, DirectionMatchesTheSumFormula) {
  torch::manual_seed(2);
  for (auto shape : std::vector<std::vector<int64_t>>{{3, 5}, {5, 3}, {1, 6}}) {
    for (int64_t N : {1, 2, 3, 4}) {
      auto W = torch::randn(shape, kDouble), G = torch::randn(shape, kDouble);
      EXPECT_TRUE(
          torch::allclose(quadnet::optim::end_to_end_direction(W, G, N), reference_direction(W, G, N), 1e-8, 1e-9))
          << shape << " depth " << N;
    }
  }
  // Rank-deficient W, wide and tall: the exponent-0 terms are the full identity (not U U^T).
  for (auto shape : std::vector<std::vector<int64_t>>{{4, 5}, {6, 4}}) {
    auto W = torch::mm(torch::randn({shape[0], 1}, kDouble), torch::randn({1, shape[1]}, kDouble));
    auto G = torch::randn(shape, kDouble);
    EXPECT_TRUE(
        torch::allclose(quadnet::optim::end_to_end_direction(W, G, 3), reference_direction(W, G, 3), 1e-8, 1e-9))
        << shape;
  }
}

TEST(EndToEndSGD, FollowsExplicitTrainingOfTheFactors) {
  torch::manual_seed(3);
  auto x = torch::randn({128, 6}, kDouble), y = torch::randn({128, 3}, kDouble);
  OverparamLinear explicit_layer(OverparamLinearOptions(6, 3, 2).init_scale(0.3));
  explicit_layer->to(torch::kFloat64);
  torch::nn::Linear direct(6, 3);
  direct->to(torch::kFloat64);
  {
    torch::NoGradGuard no_grad;
    direct->weight.copy_(explicit_layer->end_to_end());
    direct->bias.copy_(explicit_layer->bias);
  }
  torch::optim::SGD sgd(explicit_layer->parameters(), 2e-3);
  quadnet::optim::EndToEndSGD e2e(direct->parameters(), quadnet::optim::EndToEndSGDOptions(2e-3, 2));
  for (int step = 0; step < 300; ++step) {
    sgd.zero_grad();
    torch::mse_loss(explicit_layer->forward(x), y).backward();
    sgd.step();
    e2e.zero_grad();
    torch::mse_loss(direct->forward(x), y).backward();
    e2e.step();
  }
  auto W = explicit_layer->end_to_end().detach();
  EXPECT_LT(((direct->weight - W).norm() / W.norm()).item<double>(), 1e-2);
}

TEST(EndToEndSGD, RejectsTensorsAndKeepsParametersOnNaN) {
  EXPECT_THROW(quadnet::optim::EndToEndSGD({torch::randn({2, 3, 4}, torch::requires_grad())},
                                           quadnet::optim::EndToEndSGDOptions(0.1, 2)),
               c10::Error);
  torch::nn::Linear model(4, 3);
  quadnet::optim::EndToEndSGD opt(model->parameters(), quadnet::optim::EndToEndSGDOptions(1e308, 2));
  torch::mse_loss(model->forward(torch::randn({8, 4})), torch::randn({8, 3}) * 1e3).backward();
  auto before = model->weight.detach().clone();
  EXPECT_THROW(opt.step(), c10::Error);
  EXPECT_TRUE(torch::equal(model->weight, before));
}

}  // namespace

namespace {

TEST(EndToEndSGD, ParamGroupsSaveAndLoad) {
  torch::nn::Linear model(4, 2);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{model->weight});
  groups.emplace_back(std::vector<torch::Tensor>{model->bias},
                      std::make_unique<quadnet::optim::EndToEndSGDOptions>(0.5, 1));
  quadnet::optim::EndToEndSGD opt(std::move(groups), quadnet::optim::EndToEndSGDOptions(0.1, 3));
  std::stringstream buffer;
  torch::save(opt, buffer);

  std::vector<torch::optim::OptimizerParamGroup> fresh;
  fresh.emplace_back(std::vector<torch::Tensor>{model->weight});
  fresh.emplace_back(std::vector<torch::Tensor>{model->bias});
  quadnet::optim::EndToEndSGD loaded(std::move(fresh), quadnet::optim::EndToEndSGDOptions(1.0, 2));
  torch::load(loaded, buffer);
  const auto& first = static_cast<const quadnet::optim::EndToEndSGDOptions&>(loaded.param_groups()[0].options());
  const auto& second = static_cast<const quadnet::optim::EndToEndSGDOptions&>(loaded.param_groups()[1].options());
  EXPECT_EQ(first.lr(), 0.1);
  EXPECT_EQ(first.depth(), 3);
  EXPECT_EQ(second.lr(), 0.5);
  EXPECT_EQ(second.depth(), 1);

  // Options saved before `maximize` existed (lr and depth only) load with its default.
  torch::serialize::OutputArchive first_release;
  first_release.write("lr", c10::IValue(0.2));
  first_release.write("depth", c10::IValue(int64_t{2}));
  auto first_in = quadnet::testing::reloaded(first_release);
  quadnet::optim::EndToEndSGDOptions old(0.5, 3);
  old.maximize(true);
  old.serialize(first_in);
  EXPECT_EQ(old.lr(), 0.2);
  EXPECT_EQ(old.depth(), 2);
  EXPECT_FALSE(old.maximize());
}

}  // namespace
