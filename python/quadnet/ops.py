"""Functional form of quadnet's ops (C++ kernels, registered as ``torch.ops.quadnet.*``)."""
import operator
from typing import Tuple, Union

import torch
from torch import Tensor

__all__ = ["quadratic_form", "diagonal_quadratic_form", "canonical_form", "diagonal_canonical_form",
           "canonical_gradient", "quadratic_features", "quadratic_conv2d", "diagonal_quadratic_conv2d"]

_Pair = Union[int, Tuple[int, int]]


def _int(value, name: str) -> int:
    """``value`` as an int (any integer type), else a ``TypeError`` naming ``name`` (no silent
    truncation of floats)."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})") from None


def _pair(value: _Pair, name: str) -> Tuple[int, int]:
    """``(value, value)`` for an integer, ``value`` as a tuple for a pair of integers; else a
    ValueError naming ``name`` (no silent truncation of floats or of longer sequences)."""
    try:
        return (operator.index(value),) * 2
    except TypeError:
        pass
    try:
        first, second = value
        return (operator.index(first), operator.index(second))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None


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


def quadratic_features(h: Tensor, S: Tensor) -> Tensor:
    r"""``y[..., i] = h^T sym(S_i) h`` for every feature vector: ``h (..., r)``, ``S (n, r, r)`` -> ``(..., n)``.

    The dense layer's quadratic form without its weight (``quadratic_form(x, W, S) =
    quadratic_features(x @ W.T, S)``); differentiable twice.
    """
    return torch.ops.quadnet.quadratic_features(h, S)


def quadratic_conv2d(x: Tensor, weight: Tensor, S: Tensor, stride: _Pair = 1, padding: _Pair = 0,
                     dilation: _Pair = 1) -> Tensor:
    r"""``y_i(p) = h(p)^T sym(S_i) h(p)`` with ``h = conv2d(x, weight, stride, padding, dilation)``.

    Shapes: ``x (N, C, H, W)`` or ``(C, H, W)``, ``weight (r, C, kh, kw)``, ``S (n, r, r)`` ->
    ``(N, n, H', W')`` (or ``(n, H', W')``), ``H'``, ``W'`` as for ``conv2d``. The output is
    channels-last in memory. Differentiable twice.
    """
    return torch.ops.quadnet.quadratic_conv2d(x, weight, S, _pair(stride, "quadratic_conv2d: stride"),
                                              _pair(padding, "quadratic_conv2d: padding"),
                                              _pair(dilation, "quadratic_conv2d: dilation"))


def diagonal_quadratic_conv2d(x: Tensor, weight: Tensor, alpha: Tensor, stride: _Pair = 1, padding: _Pair = 0,
                              dilation: _Pair = 1) -> Tensor:
    r"""``y_i(p) = Σ_j alpha_ij h_j(p)^2`` with ``h = conv2d(x, weight, ...)``: ``weight (m, C, kh, kw)``,
    ``alpha (n, m)``; shapes otherwise as :func:`quadratic_conv2d`."""
    return torch.ops.quadnet.diagonal_quadratic_conv2d(
        x, weight, alpha, _pair(stride, "diagonal_quadratic_conv2d: stride"),
        _pair(padding, "diagonal_quadratic_conv2d: padding"), _pair(dilation, "diagonal_quadratic_conv2d: dilation"))
