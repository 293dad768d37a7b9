// quadnet_app: runs quadnet models in a LibTorch program.
//
//   quadnet_app aoti MODEL.pt2 INPUT.pt OUTPUT.pt
//       Loads an AOTInductor package made in Python (torch.export.export, then
//       torch._inductor.aoti_compile_and_package) with AOTIModelPackageLoader and runs it on
//       INPUT's tensor. The package calls torch.ops.quadnet.* through the dispatcher, so the
//       app must link quadnet (it registers the ops when loaded). The recommended route.
//   quadnet_app script MODEL.pt INPUT.pt OUTPUT.pt
//       Loads a TorchScript model saved from Python (torch.jit.script(model).save(...)),
//       whose quadratic layers call torch.ops.quadnet.*, and runs it on INPUT's tensor.
//       TorchScript is deprecated in PyTorch 2.x; kept while LibTorch still runs it.
//   quadnet_app state-dict SPEC WEIGHTS.pt INPUT.pt OUTPUT.pt
//       Builds a torch::nn::Sequential of quadnet C++ modules from SPEC, e.g.
//       "quadratic:8:6:3,diagonal:6:4:2,polynomial:4:4:2,overparam:4:2:3" (kind:in:out:rank,
//       or kind:in:out:depth for overparam; all with bias; quadconv and polyconv are a
//       QuadraticConv2d / PolynomialConvBlock with in/out channels, 3×3 filters and padding 1;
//       polyconv-rank-norm the latter with rank_norm),
//       loads weights saved in Python by quadnet.save_state_dict(model, path) and runs it.
//   quadnet_app classify MODEL IMAGES.gz LABELS.gz PREDICTIONS.pt
//       Loads a classifier taking (N, 784) pixels in [0, 1] — an AOTInductor package if MODEL
//       ends in .pt2, else a TorchScript file — classifies the images of an MNIST-format idx
//       file pair (e.g. Fashion-MNIST's t10k-*-idx*-ubyte.gz) in batches of 1000, prints the
//       accuracy and writes the predicted classes (int64, N).
//
// INPUT.pt holds a tensor saved with torch.save; OUTPUT.pt is written for torch.load.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <quadnet/quadnet.h>

#include <zlib.h>

#include <cstdint>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open " + path);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

torch::Tensor load_tensor(const std::string& path) { return torch::pickle_load(read_bytes(path)).toTensor(); }

void save_tensor(const torch::Tensor& t, const std::string& path) {
  auto bytes = torch::pickle_save(t);
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// An idx file (MNIST format), gzip-compressed: returns its dimensions and raw uint8 payload.
std::pair<std::vector<int64_t>, std::vector<uint8_t>> read_idx_gz(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw std::runtime_error("cannot open " + path);
  std::vector<uint8_t> bytes;
  uint8_t buffer[1 << 16];
  for (int n; (n = gzread(file, buffer, sizeof buffer)) > 0;) bytes.insert(bytes.end(), buffer, buffer + n);
  gzclose(file);
  if (bytes.size() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08) {
    throw std::runtime_error(path + " is not an idx file of unsigned bytes");
  }
  const int ndim = bytes[3];
  std::vector<int64_t> dims;
  for (int i = 0; i < ndim; ++i) {
    const uint8_t* p = bytes.data() + 4 + 4 * i;
    dims.push_back((int64_t(p[0]) << 24) | (int64_t(p[1]) << 16) | (int64_t(p[2]) << 8) | int64_t(p[3]));
  }
  return {dims, std::vector<uint8_t>(bytes.begin() + 4 + 4 * ndim, bytes.end())};
}

torch::Tensor idx_tensor(const std::string& path) {
  auto idx = read_idx_gz(path);
  auto t = torch::from_blob(idx.second.data(), {static_cast<int64_t>(idx.second.size())}, torch::kUInt8).clone();
  return t.reshape(idx.first);
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  for (std::string part; std::getline(stream, part, separator);) parts.push_back(part);
  return parts;
}

torch::nn::Sequential build_from_spec(const std::string& spec) {
  torch::nn::Sequential model;
  for (const auto& layer : split(spec, ',')) {
    auto f = split(layer, ':');
    if (f.size() != 4) throw std::runtime_error("bad layer spec '" + layer + "', want kind:in:out:rank");
    const auto in = std::stoll(f[1]), out = std::stoll(f[2]), rank = std::stoll(f[3]);
    if (f[0] == "quadratic") {
      model->push_back(quadnet::nn::QuadraticLayer(in, out, rank));
    } else if (f[0] == "diagonal") {
      model->push_back(quadnet::nn::DiagonalQuadraticLayer(in, out, rank));
    } else if (f[0] == "polynomial") {
      model->push_back(quadnet::nn::PolynomialBlock(in, out, rank));
    } else if (f[0] == "quadconv") {
      model->push_back(quadnet::nn::QuadraticConv2d(quadnet::nn::QuadraticConv2dOptions(in, out, 3, rank).padding(1)));
    } else if (f[0] == "polyconv") {
      model->push_back(
          quadnet::nn::PolynomialConvBlock(quadnet::nn::PolynomialConvBlockOptions(in, out, 3, rank).padding(1)));
    } else if (f[0] == "polyconv-rank-norm") {
      model->push_back(quadnet::nn::PolynomialConvBlock(
          quadnet::nn::PolynomialConvBlockOptions(in, out, 3, rank).padding(1).rank_norm(true)));
    } else if (f[0] == "overparam") {
      model->push_back(quadnet::nn::OverparamLinear(in, out, /*depth=*/rank));
    } else {
      throw std::runtime_error("unknown layer kind '" + f[0] + "'");
    }
  }
  return model;
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// One tensor in, one tensor out: an AOTInductor package (.pt2) or a TorchScript module.
std::function<torch::Tensor(const torch::Tensor&)> load_model(const std::string& path) {
  if (ends_with(path, ".pt2")) {
    auto loader = std::make_shared<torch::inductor::AOTIModelPackageLoader>(path);
    return [loader](const torch::Tensor& x) {
      auto outputs = loader->run({x});
      if (outputs.size() != 1) throw std::runtime_error("expected a model with one output");
      return outputs[0];
    };
  }
  auto module = std::make_shared<torch::jit::Module>(torch::jit::load(path));
  module->eval();
  return [module](const torch::Tensor& x) { return module->forward({x}).toTensor(); };
}

int usage() {
  std::cerr << "usage: quadnet_app aoti MODEL.pt2 INPUT.pt OUTPUT.pt\n"
               "       quadnet_app script MODEL.pt INPUT.pt OUTPUT.pt\n"
               "       quadnet_app state-dict SPEC WEIGHTS.pt INPUT.pt OUTPUT.pt\n"
               "       quadnet_app classify MODEL(.pt2|.pt) IMAGES.gz LABELS.gz PREDICTIONS.pt\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return usage();
  try {
    torch::NoGradGuard no_grad;
    if ((args[0] == "aoti" || args[0] == "script") && args.size() == 4) {
      if (args[0] == "aoti" && !ends_with(args[1], ".pt2"))
        throw std::runtime_error("aoti: MODEL must be a .pt2 package");
      save_tensor(load_model(args[1])(load_tensor(args[2])), args[3]);
    } else if (args[0] == "state-dict" && args.size() == 5) {
      auto model = build_from_spec(args[1]);
      quadnet::serialize::load_state_dict(*model, args[2]);
      auto x = load_tensor(args[3]);
      model->to(x.scalar_type());
      save_tensor(model->forward(x), args[4]);
    } else if (args[0] == "classify" && args.size() == 5) {
      auto model = load_model(args[1]);
      auto images = idx_tensor(args[2]);
      auto labels = idx_tensor(args[3]).to(torch::kInt64);
      auto x = images.reshape({images.size(0), -1}).to(torch::kFloat32) / 255.0;
      std::vector<torch::Tensor> batches;
      for (const auto& batch : x.split(1000)) batches.push_back(model(batch).argmax(1));
      auto predictions = torch::cat(batches);
      const double accuracy = predictions.eq(labels).to(torch::kDouble).mean().item<double>();
      std::cout << "classified " << x.size(0) << " images: accuracy " << accuracy << "\n";
      save_tensor(predictions, args[4]);
    } else {
      return usage();
    }
  } catch (const c10::Error& e) {
    std::cerr << "quadnet_app: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "quadnet_app: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
