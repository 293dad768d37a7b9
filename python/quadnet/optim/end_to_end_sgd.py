"""EndToEndSGD: the closed-form dynamics of a depth-N linear network on an ordinary weight
(docs/end_to_end.rst)."""
from typing import Callable, Iterable, Optional, Union

import torch
from torch.optim import Optimizer

from .. import _C

__all__ = ["EndToEndSGD"]

# The defaults of C++ quadnet::optim::EndToEndSGDOptions (their one definition).
_DEFAULTS = _C.optim.END_TO_END_SGD_DEFAULTS


class EndToEndSGD(Optimizer):
    r"""Gradient descent as a depth-``N`` overparameterization would do it, without the factors.

    For every matrix parameter ``W`` (2-D, e.g. ``nn.Linear.weight``) a step is::

        W ← W − lr · Σ_{j=1..N} (W W^T)^{(j−1)/N} ∇ (W^T W)^{(N−j)/N}

    (exponent 0 is the identity), computed from a thin SVD; for a 1-row matrix the closed form
    ``||W||^{2−2/N} (∇ + (N−1)·Pr_W(∇))``. This is the trajectory of the end-to-end matrix of
    :class:`quadnet.nn.OverparamLinear` trained by small-step gradient descent from a balanced
    init (Arora, Cohen & Hazan 2018): an adaptive learning rate plus a momentum-like term.
    1-D parameters are biases and get plain SGD. ``depth=1`` is plain SGD. Note that
    ``W = 0`` is a fixed point for ``depth ≥ 2``: start from a nonzero weight.

    A step that would make any parameter NaN/Inf raises ``RuntimeError`` and changes nothing.
    The rule is the C++ one (``quadnet::optim::end_to_end_update``).

    Args:
        params: iterable of parameters or param-group dicts (as for ``torch.optim.SGD``).
        lr: learning rate (a float, or a one-element tensor as in ``torch.optim``).
        depth: depth ``N`` of the emulated factorisation (default 2; per group; ``1`` for plain SGD).
        maximize: ascend the objective instead (default ``False``).
    """

    def __init__(self, params: Iterable, lr: Union[float, torch.Tensor], depth: int = _DEFAULTS["depth"], *,
                 maximize: bool = _DEFAULTS["maximize"]):
        defaults = dict(lr=lr, depth=depth, maximize=maximize)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # state dicts saved before the option existed
            group.setdefault("maximize", _DEFAULTS["maximize"])

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if not float(group["lr"]) >= 0:
            raise ValueError(f"EndToEndSGD: lr must be >= 0, got {group['lr']}")
        if not isinstance(group["depth"], int) or group["depth"] < 1:
            raise ValueError(f"EndToEndSGD: depth must be an int >= 1, got {group['depth']}")
        for p in group["params"]:
            if p.dim() not in (1, 2) and group["depth"] != 1:
                raise ValueError(f"EndToEndSGD: a parameter of shape {tuple(p.shape)} is neither a matrix nor "
                                 "a bias; put it in a param group with depth=1 (plain SGD)")

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        commits = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                depth = group["depth"] if p.dim() == 2 else 1
                grad = -p.grad if group["maximize"] else p.grad
                commits.append((p, _C.optim.end_to_end_update(p, grad, float(group["lr"]), depth)))
        for p, value in commits:  # every update computed and finite: commit
            p.copy_(value)
        return loss
