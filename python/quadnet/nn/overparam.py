"""Overparameterized linear layers: a weight replaced by a product of factors (docs/end_to_end.rst)."""
from typing import Optional, Union

import torch
from torch import Tensor

from .. import _C

__all__ = ["OverparamLinear", "overparameterize", "collapse"]


class OverparamLinear(torch.nn.Module):
    r"""A linear layer whose weight is a product ``W_e = W_N ⋯ W_1`` of ``depth`` factors.

    ``y = x W_e^T + b``: the same function class as ``nn.Linear``, different gradient
    dynamics. From a balanced init, gradient descent on the factors moves ``W_e`` by the
    end-to-end rule that :class:`quadnet.optim.EndToEndSGD` applies to an ordinary weight
    (Arora, Cohen & Hazan 2018, "On the Optimization of Deep Networks: Implicit Acceleration by
    Overparameterization"; Gissin, "Over-Parameterization and Optimization").

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        depth: number of factors ``N`` (1: an ordinary linear layer).
        width: hidden width of every factor (default ``min(in_features, out_features)``, the
            narrowest that loses nothing; for a scalar output, size-1 hidden layers).
        bias: if ``False``, no additive bias.
        init: ``"balanced"`` — the balanced factorisation (``W_{j+1}^T W_{j+1} = W_j W_j^T``)
            of a near-zero random matrix with ``N(0, init_scale²)`` entries; ``"identity"`` —
            every factor the (rectangular) identity (a linear residual network); or a tensor
            ``(out_features, in_features)`` — its balanced factorisation, whose product equals
            it (to rounding); the bias then starts at zero.
        init_scale: scale of the ``"balanced"`` random init (default ``1e-2``).

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    Attributes:
        factors: ``ParameterList`` ``[W_1 (width, in), W_2 (width, width), …, W_N (out, width)]``,
            named ``factors.0 … factors.{N-1}`` as in C++ (``quadnet::nn::OverparamLinear``).
        bias: ``(out_features)`` or ``None``.

    Forward chains the factors or multiplies by :meth:`end_to_end`, whichever costs fewer
    flops for the batch at hand. :meth:`collapse` returns the equivalent ``nn.Linear``.
    """

    __constants__ = ["in_features", "out_features", "depth", "width"]
    in_features: int
    out_features: int
    depth: int
    width: int
    bias: Optional[Tensor]

    def __init__(self, in_features: int, out_features: int, depth: int, width: Optional[int] = None,
                 bias: bool = True, init: Union[str, Tensor] = "balanced", init_scale: float = 1e-2,
                 device=None, dtype=None) -> None:
        super().__init__()
        if min(in_features, out_features) <= 0:
            raise ValueError("OverparamLinear: in_features and out_features must be positive, got "
                             f"in_features={in_features}, out_features={out_features}")
        if depth < 1:
            raise ValueError(f"OverparamLinear: depth must be >= 1, got {depth}")
        if width is not None and width < 1:
            raise ValueError(f"OverparamLinear: width must be >= 1, got {width}")
        if isinstance(init, Tensor) and tuple(init.shape) != (out_features, in_features):
            raise ValueError(f"OverparamLinear: expected init weight of shape (out_features={out_features}, "
                             f"in_features={in_features}), got {tuple(init.shape)}")
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.depth = in_features, out_features, depth
        self.width = width if width is not None else min(in_features, out_features)
        # A given matrix is kept (a copy) so reset_parameters can factorise it again.
        self.init = init.detach().clone() if isinstance(init, Tensor) else init
        self.init_scale = init_scale
        shapes = [(out_features if j == depth - 1 else self.width, in_features if j == 0 else self.width)
                  for j in range(depth)]
        self.factors = torch.nn.ParameterList([torch.nn.Parameter(torch.empty(s, **factory)) for s in shapes])
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, depth: int, width: Optional[int] = None) -> "OverparamLinear":
        """An ``OverparamLinear`` computing what ``linear`` computes (balanced factors, bias copied)."""
        layer = cls(linear.in_features, linear.out_features, depth, width=width, bias=linear.bias is not None,
                    init=linear.weight.detach(), device=linear.weight.device, dtype=linear.weight.dtype)
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias)
        return layer

    def reset_parameters(self) -> None:
        """The C++ module's initialisation (``quadnet::nn::init::overparam_linear_``, same RNG stream)."""
        given = self.init if isinstance(self.init, Tensor) else None
        _C.nn.init_overparam_linear_(list(self.factors), self.bias, "balanced" if given is not None else self.init,
                                     self.init_scale, given)

    def end_to_end(self) -> Tensor:
        """The end-to-end matrix ``W_N ⋯ W_1``, shape ``(out_features, in_features)`` (differentiable)."""
        product = self.factors[0]
        for j, factor in enumerate(self.factors):
            if j > 0:
                product = factor @ product
        return product

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        chained = 0
        collapsed = rows * self.out_features * self.in_features
        for j, factor in enumerate(self.factors):
            chained += rows * factor.shape[0] * factor.shape[1]
            if j > 0:
                collapsed += factor.shape[0] * factor.shape[1] * self.in_features
        if chained <= collapsed:
            y = x
            for factor in self.factors:
                y = torch.matmul(y, factor.t())
        else:
            y = torch.matmul(x, self.end_to_end().t())
        bias = self.bias  # a local, so TorchScript can refine Optional[Tensor]
        if bias is not None:
            y = y + bias
        return y

    @torch.jit.unused
    def collapse(self) -> torch.nn.Linear:
        """The equivalent ``nn.Linear`` (weight ``end_to_end()``, bias copied), for inference."""
        weight = self.end_to_end().detach()
        linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                                 device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, depth={self.depth}, "
                f"width={self.width}, bias={self.bias is not None}")


def overparameterize(model: torch.nn.Module, depth: int, width: Optional[int] = None) -> torch.nn.Module:
    """Replaces every ``nn.Linear`` in ``model`` (recursively) by an :class:`~quadnet.nn.OverparamLinear` of
    ``depth`` balanced factors whose product equals the original weight: outputs are unchanged
    (to rounding). In place for containers; returns the model (a new module if ``model`` itself
    is an ``nn.Linear``). Undo with :func:`collapse`."""
    if isinstance(model, torch.nn.Linear):
        return OverparamLinear.from_linear(model, depth, width=width)
    for name, child in model.named_children():
        setattr(model, name, overparameterize(child, depth, width=width))
    return model


def collapse(model: torch.nn.Module) -> torch.nn.Module:
    """Replaces every :class:`~quadnet.nn.OverparamLinear` in ``model`` (recursively) by its equivalent
    ``nn.Linear``. In place for containers; returns the model."""
    if isinstance(model, OverparamLinear):
        return model.collapse()
    for name, child in model.named_children():
        setattr(model, name, collapse(child))
    return model
