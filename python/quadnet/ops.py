"""Functional form of quadnet's ops (C++ kernels, registered as ``torch.ops.quadnet.*``)."""
from torch import Tensor
import torch

__all__ = ["quadratic_form", "diagonal_quadratic_form", "canonical_form", "diagonal_canonical_form",
           "canonical_gradient"]


def quadratic_form(x: Tensor, weight: Tensor, S: Tensor) -> Tensor:
    r"""``y[..., i] = h^T sym(S_i) h`` with ``h = weight @ x[...]``.

    Shapes: ``x (..., d)``, ``weight (r, d)``, ``S (n, r, r)`` -> ``(..., n)``.
    Differentiable w.r.t. all inputs, twice (double backward is exact).
    """
    return torch.ops.quadnet.quadratic_form(x, weight, S)


def diagonal_quadratic_form(x: Tensor, weight: Tensor, alpha: Tensor) -> Tensor:
    r"""``y = alpha @ (weight @ x)^2``: ``x (..., d)``, ``weight (r, d)``, ``alpha (n, r)`` -> ``(..., n)``."""
    return torch.ops.quadnet.diagonal_quadratic_form(x, weight, alpha)


def canonical_form(weight: Tensor, S: Tensor) -> Tensor:
    r"""``A_i = weight^T sym(S_i) weight``: ``(r, d)``, ``(n, r, r)`` -> ``(n, d, d)``."""
    return torch.ops.quadnet.canonical_form(weight, S)


def diagonal_canonical_form(weight: Tensor, alpha: Tensor) -> Tensor:
    r"""``A_i = weight^T diag(alpha_i) weight``: ``(r, d)``, ``(n, r)`` -> ``(n, d, d)``."""
    return torch.ops.quadnet.diagonal_canonical_form(weight, alpha)


def canonical_gradient(X: Tensor, G: Tensor) -> Tensor:
    r"""``∂ℓ/∂A_i = X^T diag(G[:, i]) X``: ``X (B, d)``, ``G (B, n)`` -> ``(n, d, d)``."""
    return torch.ops.quadnet.canonical_gradient(X, G)
