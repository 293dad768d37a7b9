#pragma once
// Moving weights between Python and C++: a state dict is stored as a pickled plain dict
// {name: tensor} (what Python's quadnet.save_state_dict / torch.save(dict(...)) write).
// Names are the modules' parameter and buffer names, identical in C++ and Python.

#include <torch/nn/module.h>

#include <string>

namespace quadnet {
namespace serialize {

// Copies every parameter and buffer of `module` from the file. Errors (naming the key)
// on a missing or unexpected key or a shape mismatch; the module is untouched on error.
void load_state_dict(torch::nn::Module& module, const std::string& path);

// Writes the module's parameters and buffers; torch.load in Python reads the file.
void save_state_dict(const torch::nn::Module& module, const std::string& path);

}  // namespace serialize
}  // namespace quadnet
