#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <quadnet/quadnet.h>

#include "testing.h"

#include <cstdio>
#include <string>

namespace {

using quadnet::nn::PolynomialConvBlock;
using quadnet::nn::PolynomialConvBlockOptions;
using quadnet::nn::QuadraticConv2d;
using quadnet::nn::QuadraticConv2dOptions;

using quadnet::testing::error_of;

// Independent reference: the dense form u^T A_i u of every patch u (torch::nn::functional::unfold).
torch::Tensor unfold_reference(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& S,
                               int64_t stride, int64_t padding) {
  namespace F = torch::nn::functional;
  auto patches = F::unfold(x, F::UnfoldFuncOptions({weight.size(2), weight.size(3)}).stride(stride).padding(padding));
  auto W = weight.flatten(1);
  auto A = torch::matmul(torch::matmul(W.t(), (S + S.transpose(1, 2)) / 2), W);
  auto y = torch::einsum("ndl,ide,nel->nil", {patches, A, patches});
  const int64_t out_h = (x.size(2) + 2 * padding - weight.size(2)) / stride + 1;
  return y.reshape({x.size(0), S.size(0), out_h, -1});
}

TEST(QuadraticConv2d, MatchesUnfoldReferenceAndCanonical) {
  torch::manual_seed(0);
  QuadraticConv2d layer(QuadraticConv2dOptions(3, 5, 3, 4).stride(2).padding(1));
  layer->to(torch::kFloat64);
  auto x = torch::randn({2, 3, 9, 8}, torch::kFloat64);
  auto expected = unfold_reference(x, layer->weight, layer->S, 2, 1) + layer->bias.view({-1, 1, 1});
  auto y = layer->forward(x);
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({2, 5, 5, 4}));
  EXPECT_TRUE(torch::allclose(y, expected, 1e-12, 1e-12));
  EXPECT_EQ(layer->canonical().sizes(), torch::IntArrayRef({5, 27, 27}));
  EXPECT_EQ(layer->num_parameters(), 4 * 27 + 5 * 10 + 5);
  // Unbatched input.
  EXPECT_TRUE(torch::allclose(layer->forward(x[1]), y[1], 1e-12, 1e-12));
}

TEST(QuadraticConv2d, GradientsMatchTheUnfoldReference) {
  torch::manual_seed(1);
  auto x = torch::randn({2, 2, 6, 7}, torch::dtype(torch::kFloat64).requires_grad(true));
  auto W = torch::randn({3, 2, 3, 3}, torch::dtype(torch::kFloat64).requires_grad(true));
  auto S = torch::randn({4, 3, 3}, torch::dtype(torch::kFloat64).requires_grad(true));
  auto G = torch::randn({2, 4, 6, 7}, torch::kFloat64);
  auto grads = torch::autograd::grad({quadnet::quadratic_conv2d(x, W, S, 1, 1, 1)}, {x, W, S}, {G});
  auto expected = torch::autograd::grad({unfold_reference(x, W, S, 1, 1)}, {x, W, S}, {G});
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::allclose(grads[i], expected[i], 1e-10, 1e-10)) << i;
}

TEST(QuadraticConv2d, CpuKernelsMatchTheFormulaOnManyTiles) {
  torch::manual_seed(2);
  auto h = torch::randn({4000, 16}), S = torch::randn({64, 16, 16}), G = torch::randn({4000, 64});
  auto hd = h.to(torch::kFloat64).requires_grad_(true), Sd = S.to(torch::kFloat64).requires_grad_(true);
  auto reference = torch::einsum("ba,iac,bc->bi", {hd, (Sd + Sd.transpose(1, 2)) / 2, hd});
  auto ref_grads = torch::autograd::grad({reference}, {hd, Sd}, {G.to(torch::kFloat64)});
  auto y = quadnet::quadratic_features(h, S);
  auto [dh, dS] = quadnet::quadratic_features_backward(G, h, S);
  auto relative = [](const torch::Tensor& a, const torch::Tensor& b) {
    return ((a.to(torch::kFloat64) - b).abs().max() / b.abs().max()).item<double>();
  };
  EXPECT_LT(relative(y, reference), 1e-5);
  EXPECT_LT(relative(dh, ref_grads[0]), 1e-5);
  EXPECT_LT(relative(dS, ref_grads[1]), 1e-5);
}

TEST(QuadraticConv2d, BadInputNamesTheArgument) {
  auto W = torch::randn({2, 3, 3, 3}), S = torch::randn({4, 2, 2});
  EXPECT_NE(error_of([&] {
              quadnet::quadratic_conv2d(torch::randn({1, 4, 6, 6}), W, S);
            }).find("has 4 channels"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              quadnet::quadratic_conv2d(torch::randn({1, 3, 6, 6}), W, torch::randn({4, 3, 3}));
            }).find("expected S of shape (out_channels, rank, rank)"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              quadnet::quadratic_conv2d(torch::randn({1, 3, 6, 6}), W, S, 0);
            }).find("stride >= 1"),
            std::string::npos);
  EXPECT_NE(error_of([] { QuadraticConv2d(0, 2, 3, 2); }).find("must be positive"), std::string::npos);
  EXPECT_NE(error_of([] { PolynomialConvBlock(PolynomialConvBlockOptions(2, 3, 3, 2)); }).find("1x1 skip needs"),
            std::string::npos);
}

TEST(QuadraticConv2d, ToDiagonalHasIdenticalOutputs) {
  torch::manual_seed(3);
  QuadraticConv2d layer(QuadraticConv2dOptions(3, 4, {3, 2}, 3).padding({1, 0}).dilation({2, 1}));
  auto diagonal = quadnet::nn::to_diagonal(layer);
  EXPECT_EQ(diagonal->options.rank(), 6);
  auto x = torch::randn({2, 3, 9, 8});
  EXPECT_TRUE(torch::allclose(diagonal->forward(x), layer->forward(x), 1e-4, 1e-4));
}

TEST(PolynomialConvBlock, NamesShapesAndForward) {
  torch::manual_seed(4);
  PolynomialConvBlock block(PolynomialConvBlockOptions(3, 6, 3, 4).padding(1).norm(true).pool(2));
  std::vector<std::string> names;
  for (const auto& item : block->named_parameters()) names.push_back(item.key());
  EXPECT_EQ(names, (std::vector<std::string>{"quadratic.weight", "quadratic.S", "quadratic.bias", "skip.weight"}));
  auto x = torch::randn({4, 3, 8, 10});
  EXPECT_EQ(block->forward(x).sizes(), torch::IntArrayRef({4, 6, 4, 5}));
  block->eval();
  auto z = block->quadratic->forward(x) + torch::conv2d(x, block->skip->weight);
  z = (z - block->norm->running_mean.view({-1, 1, 1})) / (block->norm->running_var.view({-1, 1, 1}) + 1e-5).sqrt();
  EXPECT_TRUE(torch::allclose(block->forward(x), torch::avg_pool2d(z, 2), 1e-4, 1e-5));
  EXPECT_EQ(block->num_parameters(), block->quadratic->num_parameters() + 18);
}

// rank_norm: the forms act on the batch-normalised filter outputs; the reference normalises the
// unfolded patches' projections by hand (batch statistics, then the running ones in eval mode).
TEST(PolynomialConvBlock, RankNormMatchesTheFormulaInBothModes) {
  torch::manual_seed(6);
  PolynomialConvBlock block(PolynomialConvBlockOptions(3, 5, 3, 4).padding(1).rank_norm(true));
  block->to(torch::kDouble);
  std::vector<std::string> names;
  for (const auto& item : block->named_parameters()) names.push_back(item.key());
  EXPECT_EQ(names, (std::vector<std::string>{"quadratic.weight", "quadratic.S", "quadratic.bias", "rank_norm.weight",
                                             "rank_norm.bias", "skip.weight"}));
  {
    torch::NoGradGuard no_grad;  // not the init, so a scale or shift left out shows
    block->rank_norm->weight.uniform_(0.5, 1.5);
    block->rank_norm->bias.uniform_(-0.5, 0.5);
  }
  auto filter_outputs = [&](const torch::Tensor& x) {  // h = W u for every patch u
    namespace F = torch::nn::functional;
    auto patches = F::unfold(x, F::UnfoldFuncOptions({3, 3}).padding(1));
    return torch::matmul(block->quadratic->weight.flatten(1), patches).view({x.size(0), 4, x.size(2), x.size(3)});
  };
  auto reference = [&](const torch::Tensor& x, const torch::Tensor& mean, const torch::Tensor& var) {
    auto h = (filter_outputs(x) - mean.view({-1, 1, 1})) / (var.view({-1, 1, 1}) + 1e-5).sqrt() *
                 block->rank_norm->weight.view({-1, 1, 1}) +
             block->rank_norm->bias.view({-1, 1, 1});
    const auto& S = block->quadratic->S;
    return torch::einsum("nahw,oab,nbhw->nohw", {h, (S + S.transpose(1, 2)) / 2, h}) +
           block->quadratic->bias.view({-1, 1, 1}) + torch::conv2d(x, block->skip->weight);
  };
  auto x = torch::randn({6, 3, 7, 8}, torch::kDouble);
  auto h = filter_outputs(x).detach();
  EXPECT_TRUE(torch::allclose(block->forward(x), reference(x, h.mean({0, 2, 3}), h.var({0, 2, 3}, /*unbiased=*/false)),
                              1e-10, 1e-12));
  block->eval();
  x = torch::randn({2, 3, 7, 8}, torch::kDouble);
  EXPECT_TRUE(torch::allclose(
      block->forward(x), reference(x, block->rank_norm->running_mean, block->rank_norm->running_var), 1e-10, 1e-12));
  EXPECT_FALSE(torch::allclose(block->rank_norm->running_mean, torch::zeros({4}, torch::kDouble)));
  EXPECT_EQ(block->num_parameters(), block->quadratic->num_parameters() + 15 + 8);
}

TEST(PolynomialConvBlock, GLRAMSGDRefusesARankNormedBlock) {
  torch::nn::Sequential model(PolynomialConvBlock(PolynomialConvBlockOptions(1, 2, 3, 2).padding(1).rank_norm(true)));
  auto weight = model[0]->as<PolynomialConvBlock>()->quadratic->weight.detach().clone();
  EXPECT_NE(error_of([&] {
              quadnet::optim::GLRAMSGD(*model, quadnet::optim::GLRAMSGDOptions(0.1));
            }).find("belongs to a PolynomialConvBlock with rank_norm=true"),
            std::string::npos);
  EXPECT_TRUE(torch::equal(model[0]->as<PolynomialConvBlock>()->quadratic->weight, weight));
  // without the norm, the same block is projected
  PolynomialConvBlock plain(PolynomialConvBlockOptions(1, 2, 3, 2).padding(1));
  quadnet::optim::GLRAMSGD opt(*plain, quadnet::optim::GLRAMSGDOptions(0.1));
}

TEST(PolynomialConvBlock, StateDictRoundTrip) {
  torch::manual_seed(5);
  auto make = [] {
    return torch::nn::Sequential(PolynomialConvBlock(PolynomialConvBlockOptions(1, 4, 3, 2).padding(1).norm(true)),
                                 PolynomialConvBlock(PolynomialConvBlockOptions(4, 4, 3, 2).padding(1).rank_norm(true)),
                                 QuadraticConv2d(QuadraticConv2dOptions(4, 2, 3, 2)));
  };
  auto a = make(), b = make();
  a->forward(torch::randn({3, 1, 7, 7}));  // running statistics
  const std::string path = ::testing::TempDir() + "quadnet_conv_state_dict.pt";
  quadnet::serialize::save_state_dict(*a, path);
  quadnet::serialize::load_state_dict(*b, path);
  a->eval();
  b->eval();
  auto x = torch::randn({2, 1, 7, 7});
  EXPECT_TRUE(torch::equal(a->forward(x), b->forward(x)));
  std::remove(path.c_str());
}

TEST(QuadraticConv2d, GLRAMSGDRefusesItsFullStep) {
  torch::nn::Sequential model(QuadraticConv2d(1, 2, 3, 2), quadnet::nn::QuadraticLayer(3, 2, 2));
  EXPECT_NE(error_of([&] {
              quadnet::optim::GLRAMSGD(
                  *model, quadnet::optim::GLRAMSGDOptions(0.1).projection(quadnet::optim::GLRAMSGDProjection::full));
            }).find("not implemented for convolutions"),
            std::string::npos);
}

// The tangent step projects a convolution in its patch space: the new weight's flattened rows are
// orthonormal, S symmetric, and the step equals linalg::tangent_step on weight.flatten(1).
TEST(QuadraticConv2d, GLRAMSGDTakesTheTangentStep) {
  torch::manual_seed(0);
  auto conv = QuadraticConv2d(QuadraticConv2dOptions(2, 3, 3, 4));
  conv->to(torch::kDouble);
  auto x = torch::randn({5, 2, 6, 6}, torch::kDouble);
  quadnet::optim::GLRAMSGD opt(*conv, quadnet::optim::GLRAMSGDOptions(0.01).tol(0).max_iter(20));
  opt.zero_grad();
  conv->forward(x).square().mean().backward();
  auto W0 = conv->weight.detach().clone(), S0 = conv->S.detach().clone();
  auto expected = quadnet::linalg::tangent_step(W0.flatten(1), S0, conv->weight.grad().flatten(1), conv->S.grad(), 0.01,
                                                quadnet::linalg::GLRAMOptions().tol(0).max_iter(20));
  opt.step();
  auto W = conv->weight.detach().flatten(1);
  EXPECT_TRUE(torch::allclose(W, expected.weight, 0, 1e-12));
  EXPECT_TRUE(torch::allclose(conv->S.detach(), expected.S, 0, 1e-12));
  EXPECT_TRUE(torch::allclose(torch::mm(W, W.t()), torch::eye(4, torch::kDouble), 0, 1e-12));
  EXPECT_FALSE(torch::allclose(W, W0.flatten(1)));
}

}  // namespace

namespace {

// CPU autocast to bfloat16 for the guard's lifetime.
struct CpuAutocast {
  CpuAutocast() {
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCPU, true);
  }
  ~CpuAutocast() {
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
  }
};

TEST(Autocast, ModulesRunInFloat32OnAReducedPrecisionInput) {
  torch::manual_seed(30);
  quadnet::nn::QuadraticLayer dense(6, 3, 2);
  QuadraticConv2d conv(QuadraticConv2dOptions(3, 4, 3, 2).padding(1));
  auto x = torch::randn({8, 6}).to(torch::kBFloat16), image = torch::randn({2, 3, 5, 5}).to(torch::kBFloat16);
  auto expected_dense = dense->forward(x.to(torch::kFloat32));
  auto expected_conv = conv->forward(image.to(torch::kFloat32));
  torch::Tensor y, z;
  {
    CpuAutocast autocast;
    y = dense->forward(x);  // without the Autocast kernels: a dtype mismatch (bfloat16 x, float32 weight)
    z = conv->forward(image);
  }
  // the op in float32, its result in x's bfloat16; the float32 bias then promotes it
  EXPECT_TRUE(torch::allclose(y, expected_dense, 1e-2, 1e-2));
  EXPECT_TRUE(torch::allclose(z, expected_conv, 1e-2, 1e-2));
  (y.sum() + z.sum()).backward();
  EXPECT_EQ(dense->weight.grad().scalar_type(), torch::kFloat32);
  EXPECT_EQ(conv->S.grad().scalar_type(), torch::kFloat32);
}

}  // namespace
