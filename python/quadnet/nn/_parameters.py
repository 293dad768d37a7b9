"""The free-parameter count every module's ``num_parameters()`` returns (C++: quadnet::nn::num_free_parameters)."""
import torch

from .. import _C


def num_free_parameters(module: torch.nn.Module) -> int:
    """The elements of each parameter of ``module`` and its submodules, a quadratic form's ``S``
    ``(n, r, r)`` counted by its ``n·r(r+1)/2`` free entries (the layers use ``sym(S_i)`` only).
    The rule is C++'s; this sums it over the parameters."""
    return sum(_C.nn.num_free_parameters(name, list(p.shape)) for name, p in module.named_parameters())
