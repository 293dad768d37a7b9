#pragma once
// Pieces shared by quadnet's optimizers (not part of the public API).

#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <memory>
#include <string>
#include <vector>

#include "../utils/checks.h"

namespace quadnet {
namespace optim {
namespace detail {

// An update is committed only when every new value is finite.
inline void check_finite_update(const char* optimizer, const char* what, const torch::Tensor& t) {
  TORCH_CHECK(utils::all_finite(t), optimizer, ": the step would make ", what,
              " NaN or Inf (loss or learning rate too large?); no parameter was changed");
}

// Adds the param groups, each keeping the options it was given (the optimizer's defaults where it
// has none). Why not Optimizer's constructor: since LibTorch 2.10 it merges a group's options
// with the defaults field by field for LibTorch's own optimizer types only, and gives a group of
// any other options type the defaults instead of its own options.
inline void add_param_groups(torch::optim::Optimizer& optimizer,
                             const std::vector<torch::optim::OptimizerParamGroup>& groups) {
  for (const auto& group : groups) {
    optimizer.add_param_group(group);
    if (group.has_options()) optimizer.param_groups().back().set_options(group.options().clone());
  }
}

// torch::optim::serialize restores per-parameter state but not the param groups' options
// (lr, …), while Python's Optimizer.load_state_dict restores both. quadnet's optimizers also
// save each group's options and restore them on load, so a resumed run continues with the
// saved settings in both languages.
inline std::string group_options_key(size_t index) { return "quadnet/param_groups/" + std::to_string(index); }

template <class Options>
void save_group_options(torch::serialize::OutputArchive& archive, const torch::optim::Optimizer& optimizer) {
  const auto& groups = optimizer.param_groups();
  for (size_t i = 0; i < groups.size(); ++i) {
    torch::serialize::OutputArchive group(archive.compilation_unit());
    static_cast<const Options&>(groups[i].options()).serialize(group);
    archive.write(group_options_key(i), group);
  }
}

// Archives written without the options (older saves) leave the current options in place; an
// archive's options lacking a later option give it that option's default (Options::serialize).
template <class Options>
void load_group_options(torch::serialize::InputArchive& archive, torch::optim::Optimizer& optimizer) {
  auto& groups = optimizer.param_groups();
  for (size_t i = 0; i < groups.size(); ++i) {
    torch::serialize::InputArchive group;
    if (!archive.try_read(group_options_key(i), group)) continue;
    auto options = std::make_unique<Options>(static_cast<const Options&>(groups[i].options()));
    options->serialize(group);
    groups[i].set_options(std::move(options));
  }
}

}  // namespace detail
}  // namespace optim
}  // namespace quadnet
