"""Deep polynomial networks: quadratic layers stacked with linear skips (docs/polynomial.rst)."""
from typing import List, Sequence

import torch
from torch import Tensor

from ._parameters import num_free_parameters
from .quadratic import QuadraticLayer

__all__ = ["PolynomialBlock", "DeepPolynomialNet"]


class PolynomialBlock(torch.nn.Module):
    r"""One degree-2 block ``y = Quad(x) + Linear(x)``: a quadratic layer with a linear skip.

    ``y_i = (W x)^T S_i (W x) + (L x)_i + b_i``. The fully connected skip ``L`` keeps the
    lower-degree monomials, so ``L`` stacked blocks hold every monomial of degree ``≤ 2^L``
    (:doc:`/polynomial`). The quadratic part is a :class:`QuadraticLayer` (so ``GLRAMSGD`` projects
    it); the skip is an ``nn.Linear`` without bias (the quadratic norm's shift, or without it the
    quadratic layer, holds the bias).

    ``quadratic_norm=True`` (the default) batch-normalises the quadratic term alone,
    ``y = BN(Quad(x)) + L x``, with ``BatchNorm1d(out_features, affine=bias)``: its shift is the
    block's bias (the quadratic layer then has none) and its scale the weight of the quadratic
    term. The quadratic term's size then no longer grows with ``W`` and ``S`` during training,
    which is what made stacks diverge: with it, 2- and 4-block nets train with SGD (momentum
    0.9, lr 0.01) and Adam (lr 1e-3) on digits and Fashion-MNIST, where without any norm SGD
    turns NaN within 70 steps and with ``norm=True`` alone it stops learning or turns NaN
    (docs/polynomial.rst, examples/deep_polynomial_depth.py). Like any batch norm in training
    mode it needs batches of more than one sample.

    ``norm=True`` appends ``BatchNorm1d(out_features, affine=False)`` over the feature dim.
    Stacks trained with ``GLRAMSGD`` without ``quadratic_norm`` need it (measured on
    Fashion-MNIST, ``[784, 64, 10]``: NaN in the first epoch at lr 0.002–0.05 without it; SGD
    with momentum too at lr 0.05, not at 0.01; see the README).

    In eval mode both norms are affine maps, so the network is still a polynomial of the same
    degree.

    Args:
        in_features: size ``d`` of each input sample.
        out_features: number of outputs ``n``.
        rank: hidden rank ``r`` of the quadratic layer.
        skip: if ``False``, no linear skip (a pure quadratic layer: degree exactly 2).
        bias: if ``False``, no additive bias (and, with ``quadratic_norm``, no scale).
        norm: if ``True``, batch-normalise the output (no affine parameters).
        quadratic_norm: if ``True`` (default), batch-normalise the quadratic term.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    Attributes:
        quadratic: the :class:`QuadraticLayer` ``(in_features → out_features, rank)``; with a
            bias unless ``quadratic_norm`` (or ``bias=False``).
        quadratic_norm: ``nn.BatchNorm1d(out_features, affine=bias)`` or ``None``.
        skip: ``nn.Linear(in_features, out_features, bias=False)`` or ``None``.
        norm: ``nn.BatchNorm1d(out_features, affine=False)`` or ``None``.
    """

    __constants__ = ["in_features", "out_features", "rank"]
    in_features: int
    out_features: int
    rank: int
    __jit_unused_properties__ = ["degree"]

    def __init__(self, in_features: int, out_features: int, rank: int, skip: bool = True,
                 bias: bool = True, norm: bool = False, quadratic_norm: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.quadratic = QuadraticLayer(in_features, out_features, rank, bias=bias and not quadratic_norm, **factory)
        if quadratic_norm:
            self.quadratic_norm = torch.nn.BatchNorm1d(out_features, affine=bias, **factory)
        else:
            self.register_module("quadratic_norm", None)
        if skip:
            self.skip = torch.nn.Linear(in_features, out_features, bias=False, **factory)
        else:
            self.register_module("skip", None)
        if norm:
            self.norm = torch.nn.BatchNorm1d(out_features, affine=False, **factory)
        else:
            self.register_module("norm", None)

    def reset_parameters(self) -> None:
        """Re-initialises the quadratic layer, its norm and the skip, and resets the output norm's
        running statistics."""
        self.quadratic.reset_parameters()
        if self.quadratic_norm is not None:
            self.quadratic_norm.reset_parameters()
        if self.skip is not None:
            self.skip.reset_parameters()
        if self.norm is not None:
            self.norm.reset_running_stats()

    def forward(self, x: Tensor) -> Tensor:
        y = self.quadratic(x)
        if self.quadratic_norm is not None:  # over the feature dim, for any leading dims
            y = self.quadratic_norm(y.reshape(-1, self.out_features)).reshape(y.shape)
        if self.skip is not None:
            y = y + self.skip(x)
        if self.norm is not None:  # over the feature dim, for any leading dims
            y = self.norm(y.reshape(-1, self.out_features)).reshape(y.shape)
        return y

    @property
    def degree(self) -> int:
        """The polynomial degree of the block in its input (always 2)."""
        return 2

    def num_parameters(self) -> int:
        """Free parameters (each symmetric ``S_i`` counted once; a norm's scale and shift count)."""
        return num_free_parameters(self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, skip={self.skip is not None}, norm={self.norm is not None}, "
                f"quadratic_norm={self.quadratic_norm is not None}")


class DeepPolynomialNet(torch.nn.Sequential):
    r"""A stack of :class:`PolynomialBlock`\ s: a polynomial of degree ``2^L`` in the input.

    ``sizes = [d_0, d_1, …, d_L]`` gives ``L`` blocks ``d_{t-1} → d_t`` with quadratic ranks
    ``ranks[t-1]``; no nonlinearity other than the quadratic forms. An ``nn.Sequential``, so
    blocks are ``net[0] … net[L-1]`` and the state-dict names are those of the C++
    ``quadnet::nn::DeepPolynomialNet`` (``0.quadratic.weight``, ``0.skip.weight``, …).

    Args:
        sizes: layer widths, input first (at least two entries).
        ranks: one rank per block (``len(sizes) - 1`` entries), or a single int for all.
        skip: linear skips in every block (default ``True``: all monomials up to ``2^L``).
        bias: biases in every block.
        norm: batch-normalise the output of every block but the last (see
            :class:`PolynomialBlock`; default ``False``).
        quadratic_norm: batch-normalise the quadratic term of every block (default ``True``;
            what lets deep stacks train with SGD and Adam at their usual learning rates).
        zero_init_residual: start every *residual* block (one with a skip and
            ``in_features == out_features``) as the identity map: its skip is initialised to
            the identity matrix and its quadratic term's scale to zero (the quadratic norm's
            weight ``γ``; without ``quadratic_norm``, ``S`` and the quadratic layer's bias), so
            the net starts as its first and last blocks and its depth is learnt (default
            ``True``; ResNet's zero-initialised last batch norm, Goyal et al. 2017). On
            Fashion-MNIST it brings SGD's 4-block nets level with 2-block ones (README,
            "Depth"). With ``quadratic_norm`` and ``bias=False`` the quadratic term has no scale
            to zero: pass ``zero_init_residual=False`` there.

    Shape:
        - Input: ``(*, sizes[0])``.
        - Output: ``(*, sizes[-1])``.

    Example::

        >>> net = quadnet.nn.DeepPolynomialNet([784, 64, 10], ranks=[32, 16])
        >>> net.degree, net.num_parameters()
        (4, ...)
    """

    __jit_unused_properties__ = ["degree"]

    def __init__(self, sizes: Sequence[int], ranks, skip: bool = True, bias: bool = True,
                 norm: bool = False, quadratic_norm: bool = True, zero_init_residual: bool = True,
                 device=None, dtype=None) -> None:
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"DeepPolynomialNet: sizes needs at least 2 entries (input, output), got {sizes}")
        if isinstance(ranks, int):
            ranks = [ranks] * (len(sizes) - 1)
        ranks = list(ranks)
        if len(ranks) != len(sizes) - 1:
            raise ValueError(f"DeepPolynomialNet: ranks needs len(sizes) - 1 = {len(sizes) - 1} entries, "
                             f"got {len(ranks)}")
        last = len(sizes) - 2
        if zero_init_residual and skip and quadratic_norm and not bias and any(
                d_in == d_out for d_in, d_out in zip(sizes[:-1], sizes[1:])):
            raise ValueError(f"DeepPolynomialNet: zero_init_residual=True zeroes the scale of each residual block's "
                             f"quadratic norm, which bias=False removes (sizes {sizes}); pass "
                             f"zero_init_residual=False, or bias=True")
        blocks: List[torch.nn.Module] = [
            PolynomialBlock(d_in, d_out, r, skip=skip, bias=bias, norm=norm and t < last,
                            quadratic_norm=quadratic_norm, device=device, dtype=dtype)
            for t, (d_in, d_out, r) in enumerate(zip(sizes[:-1], sizes[1:], ranks))]
        super().__init__(*blocks)
        self.sizes, self.ranks, self.skip, self.norm = sizes, ranks, skip, norm
        self.quadratic_norm, self.zero_init_residual = quadratic_norm, zero_init_residual
        self._init_residual_blocks()

    def residual_blocks(self) -> List[int]:
        """Indices of the blocks that ``zero_init_residual`` starts as the identity: those with a
        skip and ``in_features == out_features``."""
        return [t for t, block in enumerate(self) if block.skip is not None and block.in_features == block.out_features]

    def _init_residual_blocks(self) -> None:
        if not self.zero_init_residual:
            return
        with torch.no_grad():
            for t in self.residual_blocks():
                block = self[t]
                torch.nn.init.eye_(block.skip.weight)
                if block.quadratic_norm is not None:
                    torch.nn.init.zeros_(block.quadratic_norm.weight)
                else:
                    torch.nn.init.zeros_(block.quadratic.S)
                    if block.quadratic.bias is not None:
                        torch.nn.init.zeros_(block.quadratic.bias)

    def reset_parameters(self) -> None:
        """Re-initialises every block (:meth:`PolynomialBlock.reset_parameters`), then, with
        ``zero_init_residual``, starts the residual blocks as the identity again."""
        for block in self:
            block.reset_parameters()
        self._init_residual_blocks()

    @property
    def degree(self) -> int:
        """The polynomial degree in the input, ``2^L`` for ``L`` blocks."""
        return 2 ** len(self)

    def num_parameters(self) -> int:
        """Free parameters of all blocks (each symmetric ``S_i`` counted once)."""
        return num_free_parameters(self)

    def extra_repr(self) -> str:
        return (f"sizes={self.sizes}, ranks={self.ranks}, skip={self.skip}, norm={self.norm}, "
                f"quadratic_norm={self.quadratic_norm}, zero_init_residual={self.zero_init_residual}, "
                f"degree={self.degree}")
