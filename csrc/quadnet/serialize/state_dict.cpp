#include "state_dict.h"

#include <torch/serialize.h>

#include <fstream>
#include <iterator>
#include <map>
#include <vector>

namespace quadnet {
namespace serialize {
namespace {

std::map<std::string, torch::Tensor> module_entries(const torch::nn::Module& module) {
  std::map<std::string, torch::Tensor> entries;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) entries[item.key()] = item.value();
  for (const auto& item : module.named_buffers(/*recurse=*/true)) entries[item.key()] = item.value();
  return entries;
}

}  // namespace

void load_state_dict(torch::nn::Module& module, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  TORCH_CHECK(file, "load_state_dict: cannot open '", path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  auto value = torch::pickle_load(bytes);
  TORCH_CHECK(value.isGenericDict(), "load_state_dict: '", path,
              "' does not hold a dict of tensors (save it with quadnet.save_state_dict)");

  std::map<std::string, torch::Tensor> loaded;
  for (const auto& item : value.toGenericDict()) {
    TORCH_CHECK(item.key().isString() && item.value().isTensor(), "load_state_dict: '", path,
                "' must map names to tensors");
    loaded[item.key().toStringRef()] = item.value().toTensor();
  }
  auto entries = module_entries(module);
  // Validate everything before touching the module.
  for (const auto& entry : entries) {
    auto found = loaded.find(entry.first);
    TORCH_CHECK(found != loaded.end(), "load_state_dict: missing key '", entry.first, "' in '", path, "'");
    TORCH_CHECK(found->second.sizes() == entry.second.sizes(), "load_state_dict: '", entry.first, "' has shape ",
                found->second.sizes(), " in the file but ", entry.second.sizes(), " in the module");
  }
  for (const auto& item : loaded) {
    TORCH_CHECK(entries.count(item.first), "load_state_dict: unexpected key '", item.first, "' in '", path, "'");
  }
  torch::NoGradGuard no_grad;
  for (auto& entry : entries) entry.second.copy_(loaded.at(entry.first));
}

void save_state_dict(const torch::nn::Module& module, const std::string& path) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& entry : module_entries(module)) dict.insert(entry.first, entry.second.detach());
  auto bytes = torch::pickle_save(dict);
  std::ofstream file(path, std::ios::binary);
  TORCH_CHECK(file, "save_state_dict: cannot open '", path, "' for writing");
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace serialize
}  // namespace quadnet
