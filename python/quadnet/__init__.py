"""quadnet: quadratic layers, GLRAM projections, projection optimizers, deep polynomial networks
and overparameterized linear layers for PyTorch.

Importing the package loads the C++ extension, which registers the ops as
``torch.ops.quadnet.*`` (usable from TorchScript and from C++ apps linking quadnet).
"""
import torch  # noqa: F401  (the extension needs libtorch loaded first)

from . import _C  # noqa: F401  (registers torch.ops.quadnet.*)
from . import linalg, nn, ops, optim, serialize
from .nn import collapse, overparameterize
from .serialize import load_state_dict, save_state_dict

__all__ = ["linalg", "nn", "ops", "optim", "serialize", "save_state_dict", "load_state_dict",
           "overparameterize", "collapse"]
