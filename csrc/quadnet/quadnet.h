#pragma once
// quadnet: quadratic layers, GLRAM projections and projection optimizers for LibTorch.
// Link quadnet::quadnet (CMake: find_package(quadnet)); the ops are then also available
// to TorchScript models as torch.ops.quadnet.*.

#include "linalg/glram.h"
#include "linalg/tangent_step.h"
#include "nn/overparam_linear.h"
#include "nn/polynomial.h"
#include "nn/quadratic_conv.h"
#include "nn/quadratic_layer.h"
#include "ops/quadratic_conv.h"
#include "ops/quadratic_form.h"
#include "optim/end_to_end_sgd.h"
#include "optim/glram_sgd.h"
#include "serialize/state_dict.h"
