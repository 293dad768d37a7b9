#include <gtest/gtest.h>
#include <torch/torch.h>

#include <quadnet/quadnet.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

namespace {

using quadnet::nn::DeepPolynomialNet;
using quadnet::nn::DeepPolynomialNetOptions;
using quadnet::nn::PolynomialBlock;

TEST(PolynomialBlock, IsQuadraticPlusLinearSkip) {
  torch::manual_seed(0);
  PolynomialBlock block(quadnet::nn::PolynomialBlockOptions(5, 3, 2).quadratic_norm(false));
  block->to(torch::kFloat64);
  auto x = torch::randn({4, 5}, torch::kFloat64);
  auto expected = quadnet::quadratic_form(x, block->quadratic->weight, block->quadratic->S) + block->quadratic->bias +
                  torch::mm(x, block->skip->weight.t());
  EXPECT_TRUE(torch::allclose(block->forward(x), expected, 1e-12, 1e-12));
  EXPECT_EQ(block->num_parameters(), 2 * 5 + 3 * 3 + 3 + 3 * 5);

  PolynomialBlock no_skip(quadnet::nn::PolynomialBlockOptions(5, 3, 2).skip(false).quadratic_norm(false));
  EXPECT_FALSE(no_skip->skip);
  EXPECT_EQ(no_skip->num_parameters(), 2 * 5 + 3 * 3 + 3);
}

TEST(PolynomialBlock, QuadraticNormIsTheDefaultAndNormalisesTheQuadraticTermAlone) {
  torch::manual_seed(5);
  PolynomialBlock block(5, 3, 2);
  block->to(torch::kFloat64);
  ASSERT_TRUE(block->quadratic_norm);
  EXPECT_FALSE(block->quadratic->bias.defined());  // the norm's shift is the bias
  EXPECT_TRUE(block->quadratic_norm->options.affine());
  EXPECT_EQ(block->num_parameters(), 2 * 5 + 3 * 3 + 2 * 3 + 3 * 5);
  torch::NoGradGuard no_grad;
  block->quadratic_norm->weight.uniform_(0.5, 2.0);
  block->quadratic_norm->bias.uniform_(-1.0, 1.0);
  auto x = torch::randn({40, 5}, torch::kFloat64);
  // training: the batch's mean and (biased) variance of the quadratic term, per output
  auto q = quadnet::quadratic_form(x, block->quadratic->weight, block->quadratic->S);
  auto mean = q.mean(0), var = q.var(0, /*unbiased=*/false);
  auto skip = torch::mm(x, block->skip->weight.t());
  auto expected =
      (q - mean) / torch::sqrt(var + 1e-5) * block->quadratic_norm->weight + block->quadratic_norm->bias + skip;
  EXPECT_TRUE(torch::allclose(block->forward(x), expected, 1e-10, 1e-10));
  // eval: an affine map of the quadratic term with the running statistics
  block->eval();
  const auto& bn = block->quadratic_norm;
  expected = (q - bn->running_mean) / torch::sqrt(bn->running_var + 1e-5) * bn->weight + bn->bias + skip;
  EXPECT_TRUE(torch::allclose(block->forward(x), expected, 1e-10, 1e-10));

  PolynomialBlock no_bias(quadnet::nn::PolynomialBlockOptions(5, 3, 2).bias(false));
  EXPECT_FALSE(no_bias->quadratic_norm->options.affine());
  EXPECT_EQ(no_bias->num_parameters(), 2 * 5 + 3 * 3 + 3 * 5);
}

TEST(DeepPolynomialNet, NamesDegreeCountAndForward) {
  torch::manual_seed(1);
  DeepPolynomialNet net(std::vector<int64_t>{6, 4, 3}, std::vector<int64_t>{3, 2});
  std::vector<std::string> names;
  for (const auto& item : net->named_parameters()) names.push_back(item.key());
  EXPECT_EQ(names,
            (std::vector<std::string>{"0.quadratic.weight", "0.quadratic.S", "0.quadratic_norm.weight",
                                      "0.quadratic_norm.bias", "0.skip.weight", "1.quadratic.weight", "1.quadratic.S",
                                      "1.quadratic_norm.weight", "1.quadratic_norm.bias", "1.skip.weight"}));
  DeepPolynomialNet plain(DeepPolynomialNetOptions({6, 4, 3}, {3, 2}).quadratic_norm(false));
  names.clear();
  for (const auto& item : plain->named_parameters()) names.push_back(item.key());
  EXPECT_EQ(names,
            (std::vector<std::string>{"0.quadratic.weight", "0.quadratic.S", "0.quadratic.bias", "0.skip.weight",
                                      "1.quadratic.weight", "1.quadratic.S", "1.quadratic.bias", "1.skip.weight"}));
  EXPECT_EQ(net->degree(), 4);
  EXPECT_EQ(net->num_parameters(), net[0]->num_parameters() + net[1]->num_parameters());
  auto x = torch::randn({5, 6});
  EXPECT_TRUE(torch::equal(net->forward(x), net[1]->forward(net[0]->forward(x))));
}

TEST(DeepPolynomialNet, GradientsReachEveryParameter) {
  torch::manual_seed(2);
  // zero_init_residual off: with it, block 1's W and S get no gradient until its γ moves off zero
  DeepPolynomialNet net(DeepPolynomialNetOptions({6, 4, 4, 2}, {3, 2, 2}).zero_init_residual(false));
  net->forward(torch::randn({8, 6})).square().sum().backward();
  for (const auto& item : net->named_parameters()) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_GT(item.value().grad().abs().sum().item<double>(), 0) << item.key();
  }
}

TEST(DeepPolynomialNet, GLRAMSGDLowersTheLoss) {
  torch::manual_seed(3);
  DeepPolynomialNet net(std::vector<int64_t>{6, 5, 3}, std::vector<int64_t>{3, 2});
  quadnet::optim::GLRAMSGD opt(*net, quadnet::optim::GLRAMSGDOptions(0.1).max_iter(5));
  auto x = torch::randn({64, 6}), target = torch::randint(0, 3, {64});
  auto loss = [&] { return torch::nn::functional::cross_entropy(net->forward(x), target); };
  const double initial = loss().item<double>();
  for (int step = 0; step < 100; ++step) {
    opt.zero_grad();
    loss().backward();
    opt.step();
  }
  EXPECT_LT(loss().item<double>(), 0.7 * initial);
}

TEST(DeepPolynomialNet, ZeroInitResidualStartsTheResidualBlocksAsTheIdentity) {
  for (const bool quadratic_norm : {true, false}) {
    torch::manual_seed(6);
    DeepPolynomialNet net(DeepPolynomialNetOptions({6, 4, 4, 4, 3}, {2, 2, 2, 2}).quadratic_norm(quadratic_norm));
    net->to(torch::kFloat64);
    EXPECT_EQ(net->residual_blocks(), (std::vector<size_t>{1, 2}));
    EXPECT_TRUE(torch::equal(net[1]->skip->weight, torch::eye(4, torch::kFloat64)));
    EXPECT_FALSE(torch::equal(net[0]->skip->weight.narrow(0, 0, 3).narrow(1, 0, 3), torch::eye(3, torch::kFloat64)));
    auto x = torch::randn({32, 6}, torch::kFloat64);
    for (const bool training : {true, false}) {
      net->train(training);
      auto h = net[0]->forward(x);
      EXPECT_TRUE(torch::equal(net[1]->forward(h), h)) << "quadratic_norm " << quadratic_norm;
      EXPECT_TRUE(torch::equal(net->forward(x), net[3]->forward(h)));
    }
    // the zeroed scale (γ, or S) is what the first gradient reaches
    net->train();
    net->forward(x).square().sum().backward();
    const auto& scale = quadratic_norm ? net[1]->quadratic_norm->weight : net[1]->quadratic->S;
    EXPECT_GT(scale.grad().abs().max().item<double>(), 0);
  }
  torch::manual_seed(6);
  DeepPolynomialNet plain(DeepPolynomialNetOptions({6, 4, 4, 3}, {2, 2, 2}).zero_init_residual(false));
  EXPECT_FALSE(torch::equal(plain[1]->skip->weight, torch::eye(4)));
  EXPECT_TRUE(torch::all(plain[1]->quadratic_norm->weight == 1).item<bool>());
  std::ostringstream repr;
  plain->pretty_print(repr);
  EXPECT_NE(repr.str().find("zero_init_residual=false"), std::string::npos);
}

TEST(DeepPolynomialNet, ResetParametersReappliesTheZeroInit) {
  DeepPolynomialNet net(std::vector<int64_t>{6, 4, 4, 3}, std::vector<int64_t>{2, 2, 2});
  {
    torch::NoGradGuard no_grad;
    for (auto& p : net->parameters()) p.add_(1.0);
  }
  net->reset_parameters();
  EXPECT_TRUE(torch::equal(net[1]->skip->weight, torch::eye(4)));
  EXPECT_TRUE(torch::all(net[1]->quadratic_norm->weight == 0).item<bool>());
  EXPECT_LT(net[0]->skip->weight.abs().max().item<double>(), 1.0 / std::sqrt(6.0) + 1e-6);
}

TEST(DeepPolynomialNet, ZeroInitResidualWithANormWithoutScaleIsRefused) {
  try {
    DeepPolynomialNet(DeepPolynomialNetOptions({6, 4, 4, 3}, {2, 2, 2}).bias(false));
    FAIL() << "expected an error";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("bias=false removes"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(
      DeepPolynomialNet(DeepPolynomialNetOptions({6, 4, 4, 3}, {2, 2, 2}).bias(false).zero_init_residual(false)));
  EXPECT_NO_THROW(DeepPolynomialNet(DeepPolynomialNetOptions({6, 4, 3}, {2, 2}).bias(false)));
}

TEST(DeepPolynomialNet, BadSizesAreRejected) {
  EXPECT_THROW(DeepPolynomialNet(std::vector<int64_t>{6}, std::vector<int64_t>{}), c10::Error);
  try {
    DeepPolynomialNet(std::vector<int64_t>{6, 4, 3}, std::vector<int64_t>{3});
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("ranks needs sizes.size() - 1 = 2 entries, got 1"), std::string::npos);
  }
}

}  // namespace

namespace {

TEST(DeepPolynomialNet, NormOnEveryBlockButTheLastMatchesPythonNames) {
  torch::manual_seed(4);
  DeepPolynomialNet net(DeepPolynomialNetOptions({6, 4, 4, 2}, {3, 2, 2}).norm(true).quadratic_norm(false));
  EXPECT_TRUE(net[0]->norm);
  EXPECT_TRUE(net[1]->norm);
  EXPECT_FALSE(net[2]->norm);
  std::vector<std::string> buffers;
  for (const auto& item : net->named_buffers()) buffers.push_back(item.key());
  EXPECT_EQ(buffers.front(), "0.norm.running_mean");
  net->eval();                       // BatchNorm in eval mode: an affine map of the block output
  auto x = torch::randn({2, 3, 6});  // leading dims are flattened for the norm
  auto h = net[0]->quadratic->forward(x) + net[0]->skip->forward(x);
  auto expected = (h - net[0]->norm->running_mean) / torch::sqrt(net[0]->norm->running_var + 1e-5);
  EXPECT_TRUE(torch::allclose(net[0]->forward(x), expected, 1e-6, 1e-6));
}

}  // namespace
