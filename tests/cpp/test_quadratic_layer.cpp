#include <gtest/gtest.h>
#include <torch/torch.h>

#include <quadnet/quadnet.h>

#include <cstdio>
#include <string>

namespace {

torch::Tensor dense_reference(const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& S) {
  // y_i = x^T A_i x with A_i = W^T sym(S_i) W, through torch::bilinear.
  auto A = torch::matmul(torch::matmul(W.t(), (S + S.transpose(1, 2)) / 2), W);
  return torch::bilinear(x, x, A);
}

TEST(QuadraticForm, MatchesDenseReference) {
  torch::manual_seed(0);
  auto opts = torch::dtype(torch::kFloat64);
  auto x = torch::randn({7, 5}, opts), W = torch::randn({3, 5}, opts), S = torch::randn({4, 3, 3}, opts);
  auto y = quadnet::quadratic_form(x, W, S);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{7, 4}));
  EXPECT_TRUE(torch::allclose(y, dense_reference(x, W, S), 1e-12, 1e-12));
}

TEST(QuadraticForm, GradientsMatchAutogradComposition) {
  torch::manual_seed(1);
  auto opts = torch::dtype(torch::kFloat64).requires_grad(true);
  auto x = torch::randn({6, 4}, opts), W = torch::randn({2, 4}, opts), S = torch::randn({3, 2, 2}, opts);
  auto g = torch::randn({6, 3}, torch::kFloat64);
  auto grads = torch::autograd::grad({quadnet::quadratic_form(x, W, S)}, {x, W, S}, {g});
  auto expected = torch::autograd::grad({dense_reference(x, W, S)}, {x, W, S}, {g});
  for (size_t i = 0; i < grads.size(); ++i) {
    EXPECT_TRUE(torch::allclose(grads[i], expected[i], 1e-10, 1e-10)) << "gradient " << i;
  }
}

TEST(QuadraticForm, BatchDimsAndNonContiguous) {
  torch::manual_seed(2);
  auto x = torch::randn({2, 3, 8}).transpose(0, 1);  // non-contiguous (3, 2, 8)
  auto W = torch::randn({8, 4}).t();                 // non-contiguous (4, 8)
  auto S = torch::randn({5, 4, 4});
  auto y = quadnet::quadratic_form(x, W, S);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{3, 2, 5}));
  auto ref = dense_reference(x.reshape({-1, 8}), W, S).view({3, 2, 5});
  EXPECT_TRUE(torch::allclose(y, ref, 1e-4, 1e-4));
}

TEST(QuadraticForm, BadInputNamesTheArgument) {
  auto W = torch::randn({3, 5}), S = torch::randn({2, 3, 3});
  auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const c10::Error& e) {
      return std::string(e.what_without_backtrace());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] {
              quadnet::quadratic_form(torch::randn({4, 6}), W, S);
            }).find("x has 6 features"),
            std::string::npos);
  EXPECT_NE(message([&] {
              quadnet::quadratic_form(torch::randn({4, 5}), W, torch::randn({2, 4, 4}));
            }).find("S of shape"),
            std::string::npos);
  EXPECT_NE(message([&] {
              quadnet::quadratic_form(torch::randn({4, 5}), W, torch::randn({2, 3, 4}));
            }).find("square matrices S"),
            std::string::npos);
  EXPECT_NE(message([&] {
              quadnet::quadratic_form(torch::randn({4, 5}, torch::kFloat64), W, S);
            }).find("weight to have the dtype of x"),
            std::string::npos);
  EXPECT_NE(message([&] { quadnet::quadratic_form(torch::randn({}), W, S); }).find("expected x of shape"),
            std::string::npos);
}

TEST(QuadraticLayer, ParametersCanonicalAndCount) {
  torch::manual_seed(3);
  quadnet::nn::QuadraticLayer layer(quadnet::nn::QuadraticLayerOptions(6, 4, 3));
  auto params = layer->named_parameters();
  ASSERT_TRUE(params.contains("weight") && params.contains("S") && params.contains("bias"));
  EXPECT_EQ(layer->weight.sizes(), (std::vector<int64_t>{3, 6}));
  EXPECT_EQ(layer->S.sizes(), (std::vector<int64_t>{4, 3, 3}));
  EXPECT_TRUE(torch::equal(layer->S, layer->S.transpose(1, 2)));
  EXPECT_EQ(layer->num_parameters(), 3 * 6 + 4 * 6 + 4);

  auto x = torch::randn({10, 6});
  auto A = layer->canonical();
  ASSERT_EQ(A.sizes(), (std::vector<int64_t>{4, 6, 6}));
  auto expected = torch::bilinear(x, x, A, layer->bias);
  EXPECT_TRUE(torch::allclose(layer->forward(x), expected, 1e-4, 1e-5));

  quadnet::nn::QuadraticLayer no_bias(quadnet::nn::QuadraticLayerOptions(6, 4, 3).bias(false));
  EXPECT_FALSE(no_bias->named_parameters().contains("bias"));
  EXPECT_EQ(no_bias->num_parameters(), 3 * 6 + 4 * 6);
}

TEST(QuadraticLayer, FreeParametersOfAnyModel) {
  // Each S_i (r x r) counts r(r+1)/2; everything else, quadnet's or not, its elements.
  torch::nn::Sequential model(quadnet::nn::QuadraticLayer(6, 4, 3), torch::nn::Linear(4, 2),
                              quadnet::nn::DiagonalQuadraticLayer(2, 2, 2));
  EXPECT_EQ(quadnet::nn::num_free_parameters(*model), (3 * 6 + 4 * 6 + 4) + (4 * 2 + 2) + (2 * 2 + 2 * 2 + 2));
  EXPECT_EQ(quadnet::nn::num_free_parameters("0.S", {4, 3, 3}), 4 * 6);
  EXPECT_EQ(quadnet::nn::num_free_parameters("S", {5, 2, 2}), 5 * 3);
  EXPECT_EQ(quadnet::nn::num_free_parameters("0.SS", {4, 3, 3}), 36);  // only a parameter named S
  EXPECT_EQ(quadnet::nn::num_free_parameters("S", {4, 3, 2}), 24);     // and only square forms
  EXPECT_EQ(quadnet::nn::num_free_parameters("weight", {3, 6}), 18);
}

TEST(DiagonalQuadraticLayer, MatchesCanonicalForm) {
  torch::manual_seed(4);
  quadnet::nn::DiagonalQuadraticLayer layer(5, 2, 3);
  auto x = torch::randn({8, 5});
  auto expected = torch::bilinear(x, x, layer->canonical(), layer->bias);
  EXPECT_TRUE(torch::allclose(layer->forward(x), expected, 1e-4, 1e-5));
  EXPECT_EQ(layer->num_parameters(), 3 * 5 + 2 * 3 + 2);
}

TEST(Serialize, StateDictRoundTrip) {
  torch::manual_seed(5);
  torch::nn::Sequential a(quadnet::nn::QuadraticLayer(4, 3, 2), quadnet::nn::QuadraticLayer(3, 2, 2));
  torch::nn::Sequential b(quadnet::nn::QuadraticLayer(4, 3, 2), quadnet::nn::QuadraticLayer(3, 2, 2));
  const std::string path = ::testing::TempDir() + "quadnet_state_dict.pt";
  quadnet::serialize::save_state_dict(*a, path);
  quadnet::serialize::load_state_dict(*b, path);
  auto x = torch::randn({5, 4});
  EXPECT_TRUE(torch::equal(a->forward(x), b->forward(x)));

  torch::nn::Sequential wrong(quadnet::nn::QuadraticLayer(4, 3, 3));
  auto before = wrong->named_parameters()["0.weight"].clone();
  EXPECT_THROW(quadnet::serialize::load_state_dict(*wrong, path), c10::Error);
  EXPECT_TRUE(torch::equal(before, wrong->named_parameters()["0.weight"]));
  std::remove(path.c_str());
}

}  // namespace

namespace {
TEST(QuadraticLayer, ToDiagonalHasIdenticalOutputs) {
  torch::manual_seed(6);
  quadnet::nn::QuadraticLayer layer(6, 3, 4);
  layer->to(torch::kFloat64);
  auto diagonal = quadnet::nn::to_diagonal(layer);
  EXPECT_EQ(diagonal->options.rank(), 10);
  auto x = torch::randn({5, 6}, torch::kFloat64);
  EXPECT_TRUE(torch::allclose(diagonal->forward(x), layer->forward(x), 1e-12, 1e-12));
}

TEST(QuadraticLayer, ToDiagonalKeepsDeviceAndDtype) {
  // Every available device (torch::nn::Module::to cannot move a CPU module to the meta device,
  // so on a CPU-only machine only the dtype half of this can fail; Python's test uses meta).
  std::vector<torch::Device> devices{torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA);
  for (const auto& device : devices) {
    quadnet::nn::QuadraticLayer layer(6, 3, 2);
    layer->to(device, torch::kFloat64);
    auto diagonal = quadnet::nn::to_diagonal(layer);
    EXPECT_EQ(diagonal->weight.device(), layer->weight.device()) << device;
    EXPECT_EQ(diagonal->alpha.scalar_type(), torch::kFloat64) << device;
    quadnet::nn::QuadraticConv2d conv(quadnet::nn::QuadraticConv2dOptions(2, 3, 3, 2));
    conv->to(device, torch::kFloat64);
    auto diagonal_conv = quadnet::nn::to_diagonal(conv);
    EXPECT_EQ(diagonal_conv->weight.device(), conv->weight.device()) << device;
    EXPECT_EQ(diagonal_conv->alpha.scalar_type(), torch::kFloat64) << device;
  }
}
}  // namespace
