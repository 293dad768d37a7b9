"""Convolutional quadratic layers and the polynomial conv block (docs/quadratic_conv.rst)."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _C
from ..ops import _int, _Pair, _pair
from ._parameters import num_free_parameters
from ._registry import LayerRegistry

__all__ = ["QuadraticConv2d", "DiagonalQuadraticConv2d", "PolynomialConvBlock"]

# So GLRAMSGD, given plain parameters, finds these layers (and refuses them with projection="full").
_CONVS = LayerRegistry()


class _QuadraticConvBase(torch.nn.Module):
    """Geometry, checks and repr shared by the two convolutional layers (as in C++)."""

    __constants__ = ["in_channels", "out_channels", "kernel_size", "rank", "stride", "padding", "dilation"]
    in_channels: int
    out_channels: int
    rank: int
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    bias: Optional[Tensor]

    def _set_geometry(self, name: str, in_channels: int, out_channels: int, kernel_size: _Pair, rank: int,
                      stride: _Pair, padding: _Pair, dilation: _Pair) -> None:
        """Converts the arguments (``TypeError``/``ValueError`` naming one that is not an int or a pair
        of ints) and checks them in C++ (``quadnet::nn::check_conv_options``: ``ValueError``)."""
        in_channels, out_channels, rank = (_int(value, f"{name}: {arg}") for arg, value in (
            ("in_channels", in_channels), ("out_channels", out_channels), ("rank", rank)))
        kernel_size, stride, padding, dilation = (_pair(value, f"{name}: {arg}") for arg, value in (
            ("kernel_size", kernel_size), ("stride", stride), ("padding", padding), ("dilation", dilation)))
        _C.nn.check_conv_options(name, in_channels, out_channels, kernel_size, rank, stride, padding, dilation,
                                 isinstance(self, QuadraticConv2d))
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation

    def _add_bias(self, y: Tensor) -> Tensor:
        bias = self.bias  # a local, so TorchScript can refine Optional[Tensor]
        if bias is not None:
            y = y + bias.view(-1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}")


class QuadraticConv2d(_QuadraticConvBase):
    r"""Convolutional quadratic layer ``y_i(p) = h(p)^T S_i h(p) + b_i``, ``h = conv2d(x, W)``.

    A convolution to ``rank`` channels, then, at every output pixel ``p``, one quadratic form of
    the ``rank``-vector ``h(p)`` per output channel (symmetric ``S_i``). Each output is a
    quadratic form of the input patch ``u(p)`` (``C·kh·kw`` values, as ``F.unfold`` lays it out):
    ``y_i(p) = u(p)^T A_i u(p) + b_i`` with ``A_i = W^T S_i W``, ``W = weight.flatten(1)``
    (:meth:`canonical`). Computed by ``torch.ops.quadnet.quadratic_conv2d`` (no patch matrix).

    Args:
        in_channels: input channels ``C``.
        out_channels: output channels ``n``.
        kernel_size: ``k`` or ``(kh, kw)``.
        rank: channels ``r`` of ``h`` (the rank of every ``A_i``).
        stride, padding, dilation: as in ``nn.Conv2d`` (int or pair; zero padding).
        bias: if ``False``, no additive bias.

    Shape:
        - Input: ``(N, C, H, W)`` or ``(C, H, W)``.
        - Output: ``(N, n, H', W')`` or ``(n, H', W')``, ``H'``, ``W'`` as for ``nn.Conv2d``
          (channels-last strides).

    Attributes:
        weight: ``(rank, in_channels, kh, kw)``, initialised like ``nn.Conv2d.weight``.
        S: ``(out_channels, rank, rank)``, symmetric at init (only its symmetric part is used).
        bias: ``(out_channels)`` or ``None``.

    Example::

        >>> layer = quadnet.nn.QuadraticConv2d(32, 64, 3, rank=16, padding=1)
        >>> layer(torch.randn(8, 32, 28, 28)).shape
        torch.Size([8, 64, 28, 28])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Pair, rank: int, stride: _Pair = 1,
                 padding: _Pair = 0, dilation: _Pair = 1, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self._set_geometry("QuadraticConv2d", in_channels, out_channels, kernel_size, rank, stride, padding, dilation)
        factory = {"device": device, "dtype": dtype}
        self.weight = torch.nn.Parameter(torch.empty(rank, in_channels, *self.kernel_size, **factory))
        self.S = torch.nn.Parameter(torch.empty(out_channels, rank, rank, **factory))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        _CONVS.register(self)

    # Copies (copy.deepcopy, pickle) are registered as well (as QuadraticLayer's).
    @torch.jit.unused
    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        _CONVS.register(self)

    def reset_parameters(self) -> None:
        """The C++ module's initialisation (``quadnet::nn::init::quadratic_layer_``, fan-in ``C·kh·kw``)."""
        _C.nn.init_quadratic_layer_(self.weight, self.S, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.quadnet.quadratic_conv2d(x, self.weight, self.S, self.stride, self.padding, self.dilation)
        return self._add_bias(y)

    def canonical(self) -> Tensor:
        """Canonical matrices of the patch space, ``A_i = W^T sym(S_i) W`` with ``W = weight.flatten(1)``:
        ``(out_channels, C·kh·kw, C·kh·kw)``."""
        return torch.ops.quadnet.canonical_form(self.weight.flatten(1), self.S)

    def num_parameters(self) -> int:
        """Free parameters, each symmetric ``S_i`` counted once: ``r·C·kh·kw + n·r(r+1)/2 (+ n)``."""
        return num_free_parameters(self)


class DiagonalQuadraticConv2d(_QuadraticConvBase):
    r"""The diagonal ("squared activation") convolution ``y_i(p) = Σ_j alpha_ij h_j(p)^2 + b_i``.

    ``h = conv2d(x, weight)`` with ``rank`` channels, squared, then a 1×1 linear map ``alpha``.
    Canonical matrices ``A_i = W^T diag(alpha_i) W``. Arguments and shapes as
    :class:`QuadraticConv2d`.

    Attributes:
        weight: ``(rank, in_channels, kh, kw)``.
        alpha: ``(out_channels, rank)``.
        bias: ``(out_channels)`` or ``None``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Pair, rank: int, stride: _Pair = 1,
                 padding: _Pair = 0, dilation: _Pair = 1, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self._set_geometry("DiagonalQuadraticConv2d", in_channels, out_channels, kernel_size, rank, stride, padding,
                           dilation)
        factory = {"device": device, "dtype": dtype}
        self.weight = torch.nn.Parameter(torch.empty(rank, in_channels, *self.kernel_size, **factory))
        self.alpha = torch.nn.Parameter(torch.empty(out_channels, rank, **factory))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The C++ module's initialisation (``quadnet::nn::init::diagonal_quadratic_layer_``)."""
        _C.nn.init_diagonal_quadratic_layer_(self.weight, self.alpha, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.quadnet.diagonal_quadratic_conv2d(x, self.weight, self.alpha, self.stride, self.padding,
                                                        self.dilation)
        return self._add_bias(y)

    def canonical(self) -> Tensor:
        """``A_i = W^T diag(alpha_i) W`` with ``W = weight.flatten(1)``: ``(out_channels, C·kh·kw, C·kh·kw)``."""
        return torch.ops.quadnet.diagonal_canonical_form(self.weight.flatten(1), self.alpha)

    def num_parameters(self) -> int:
        """Free parameters: ``r·(C·kh·kw + n) (+ n)``."""
        return num_free_parameters(self)


def conv_to_diagonal(layer: QuadraticConv2d) -> DiagonalQuadraticConv2d:
    """:func:`quadnet.nn.to_diagonal` for :class:`QuadraticConv2d` (the dense inclusion on the flattened filters)."""
    r = layer.rank
    diagonal = DiagonalQuadraticConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, r * (r + 1) // 2,
                                       stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                                       bias=layer.bias is not None, device=layer.weight.device,
                                       dtype=layer.weight.dtype)
    with torch.no_grad():
        weight, alpha = _C.nn.diagonal_parameters(layer.weight.flatten(1), layer.S)
        diagonal.weight.copy_(weight.view_as(diagonal.weight))
        diagonal.alpha.copy_(alpha)
        if layer.bias is not None:
            diagonal.bias.copy_(layer.bias)
    return diagonal


class PolynomialConvBlock(torch.nn.Module):
    r"""One degree-2 convolutional block ``y = pool(norm(QuadConv(x) + Conv1x1(x)))``.

    A :class:`QuadraticConv2d` with a bias-free 1×1 convolution skip (same stride), which keeps
    the lower-degree terms: ``L`` stacked blocks are a polynomial of degree ``2^L`` in the pixels,
    with every monomial up to that degree of the pixels in the receptive field. No other
    nonlinearity: the optional batch norms are affine maps in eval mode, and the optional pooling
    is an average (linear; max pooling would not be a polynomial).

    ``rank_norm=True`` batch-normalises the ``rank`` filter outputs ``h = conv2d(x, W)`` before
    the quadratic forms, ``QuadConv(x)_i = ĥ^T S_i ĥ + b_i`` with ``ĥ = BatchNorm2d(rank)(h)``
    (affine): every product the forms take is then of unit-scale factors, whatever the filters'
    size, and the norm's shift gives each form linear terms in ``h``. In eval mode ``ĥ`` is an
    affine map of ``h``, so the block is still a quadratic polynomial of its input (no longer a
    homogeneous form ``x^T A_i x``: :class:`~quadnet.optim.GLRAMSGD`, which steps in the space of
    the ``A_i = W^T S_i W``, refuses such a block). Its effect on the polynomial convnet of
    ``examples/polynomial_convnet_fashion_mnist.py`` is measured in the README (the ablation).

    Args:
        in_channels, out_channels, kernel_size, rank, stride, padding, dilation: as
            :class:`QuadraticConv2d`. With ``skip=True`` the quadratic convolution must keep the
            input's size (before the stride): ``padding = dilation·(kernel_size − 1)/2``.
        skip: if ``False``, no skip (a pure quadratic convolution).
        bias: if ``False``, no additive bias.
        norm: if ``True``, ``BatchNorm2d(out_channels, affine=False)`` on the output.
        pool: average-pooling window and stride after the norm (``1``: none).
        rank_norm: if ``True``, ``BatchNorm2d(rank)`` on the filter outputs, before the forms.

    Shape:
        - Input: ``(N, in_channels, H, W)``.
        - Output: ``(N, out_channels, H'', W'')``: the convolution's size divided by ``pool``.

    Attributes:
        quadratic: the :class:`QuadraticConv2d` (its ``weight``, ``S`` and ``bias`` are the block's).
        rank_norm: ``nn.BatchNorm2d(rank)`` or ``None``.
        skip: ``nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)`` or ``None``.
        norm: ``nn.BatchNorm2d`` or ``None``.
        pool: ``nn.AvgPool2d(pool)`` or ``None``.

    Example::

        >>> block = quadnet.nn.PolynomialConvBlock(1, 32, 3, rank=8, padding=1, norm=True, pool=2)
        >>> block(torch.randn(4, 1, 28, 28)).shape
        torch.Size([4, 32, 14, 14])
    """

    __constants__ = ["in_channels", "out_channels", "rank"]
    in_channels: int
    out_channels: int
    rank: int
    __jit_unused_properties__ = ["degree"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Pair, rank: int, stride: _Pair = 1,
                 padding: _Pair = 0, dilation: _Pair = 1, skip: bool = True, bias: bool = True,
                 norm: bool = False, pool: int = 1, rank_norm: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        if pool < 1:
            raise ValueError(f"PolynomialConvBlock: pool must be >= 1 (1: no pooling), got {pool}")
        k, p, dl = (_pair(value, f"PolynomialConvBlock: {arg}") for arg, value in (
            ("kernel_size", kernel_size), ("padding", padding), ("dilation", dilation)))
        if skip and any(2 * p[i] != dl[i] * (k[i] - 1) for i in range(2)):
            raise ValueError("PolynomialConvBlock: the 1x1 skip needs the quadratic convolution to keep the input's "
                             "size, i.e. padding = dilation * (kernel_size - 1) / 2 (odd kernel sizes), got "
                             f"kernel_size={k}, padding={p}, dilation={dl}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.quadratic = QuadraticConv2d(in_channels, out_channels, kernel_size, rank, stride=stride,
                                         padding=padding, dilation=dilation, bias=bias, **factory)
        if rank_norm:
            self.rank_norm = torch.nn.BatchNorm2d(rank, **factory)
        else:
            self.register_module("rank_norm", None)
        # GLRAMSGD reads this to refuse the layer: its forms act on the normalised ĥ, not on W x.
        self.quadratic._rank_normed = rank_norm
        if skip:
            self.skip = torch.nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, **factory)
        else:
            self.register_module("skip", None)
        if norm:
            self.norm = torch.nn.BatchNorm2d(out_channels, affine=False, **factory)
        else:
            self.register_module("norm", None)
        if pool > 1:
            self.pool = torch.nn.AvgPool2d(pool)
        else:
            self.register_module("pool", None)

    def reset_parameters(self) -> None:
        """Re-initialises the quadratic convolution, the rank norm and the skip, and resets the output
        norm's running statistics."""
        self.quadratic.reset_parameters()
        if self.rank_norm is not None:
            self.rank_norm.reset_parameters()
        if self.skip is not None:
            self.skip.reset_parameters()
        if self.norm is not None:
            self.norm.reset_running_stats()

    def forward(self, x: Tensor) -> Tensor:
        rank_norm = self.rank_norm  # a local, so TorchScript can refine the Optional
        if rank_norm is not None:
            q = self.quadratic
            h = rank_norm(F.conv2d(x, q.weight, None, q.stride, q.padding, q.dilation))
            y = q._add_bias(torch.ops.quadnet.quadratic_features(h.movedim(-3, -1), q.S).movedim(-1, -3))
        else:
            y = self.quadratic(x)
        if self.skip is not None:
            y = y + self.skip(x)
        if self.norm is not None:
            y = self.norm(y)
        if self.pool is not None:
            y = self.pool(y)
        return y

    @property
    def degree(self) -> int:
        """The polynomial degree of the block in its input (always 2)."""
        return 2

    def num_parameters(self) -> int:
        """Free parameters (each symmetric ``S_i`` counted once)."""
        return num_free_parameters(self)

    def extra_repr(self) -> str:
        return (f"skip={self.skip is not None}, norm={self.norm is not None}, "
                f"pool={self.pool.kernel_size if self.pool is not None else 1}, rank_norm={self.rank_norm is not None}")
