"""Quadratic layers: the symmetric-S model and the older diagonal model (docs/quadratic_layer.rst)."""
import weakref
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _C
from ..ops import _int
from ._parameters import num_free_parameters
from ._registry import LayerRegistry
from .conv import QuadraticConv2d, conv_to_diagonal

__all__ = ["QuadraticLayer", "DiagonalQuadraticLayer", "to_diagonal"]

# So optimizers given plain parameters find the layers.
_LAYERS = LayerRegistry()


def _check_sizes(module: str, in_features, out_features, rank, rank_at_most_in_features: bool):
    """The sizes as ints (``TypeError`` naming the argument otherwise), checked by C++
    (``quadnet::nn::check_layer_sizes``: ``ValueError``)."""
    sizes = tuple(_int(value, f"{module}: {name}")
                  for name, value in (("in_features", in_features), ("out_features", out_features), ("rank", rank)))
    _C.nn.check_layer_sizes(module, *sizes, rank_at_most_in_features)
    return sizes


class QuadraticLayer(torch.nn.Module):
    r"""Quadratic layer ``y_i = (W x)^T S_i (W x) + b_i`` with symmetric ``S_i``.

    A fully connected layer to ``rank`` hidden units followed by a "vector activation":
    one quadratic form of the hidden vector per output. Its canonical form is
    ``y_i = x^T A_i x + b_i`` with ``A_i = W^T S_i W`` (see :meth:`canonical`).

    Args:
        in_features: size ``d`` of each input sample.
        out_features: number of outputs ``n``.
        rank: number of hidden units ``r`` (the rank of every ``A_i``).
        bias: if ``False``, the layer has no additive bias.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    Attributes:
        weight: ``(rank, in_features)``, initialised like ``nn.Linear.weight``.
        S: ``(out_features, rank, rank)``, symmetric at init (only its symmetric part is used).
        bias: ``(out_features)`` or ``None``.

    Example::

        >>> model = torch.nn.Sequential(quadnet.nn.QuadraticLayer(784, 10, rank=25))
        >>> model(torch.randn(128, 784)).shape
        torch.Size([128, 10])
    """

    __constants__ = ["in_features", "out_features", "rank"]
    in_features: int
    out_features: int
    rank: int
    bias: Optional[Tensor]

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        in_features, out_features, rank = _check_sizes("QuadraticLayer", in_features, out_features, rank, True)
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.weight = torch.nn.Parameter(torch.empty(rank, in_features, **factory))
        self.S = torch.nn.Parameter(torch.empty(out_features, rank, rank, **factory))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self._reset_capture()
        self.reset_parameters()
        _LAYERS.register(self)

    # Copies (``copy.deepcopy``, pickle) are registered as well; the registry asks each layer
    # for its current weight and S, so new Parameter objects need no tracking.
    @torch.jit.unused
    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        _LAYERS.register(self)
        self._reset_capture()  # a copy has no optimizer yet: it must not capture for the original's

    def reset_parameters(self) -> None:
        """The C++ modules' initialisation (``quadnet::nn::init::quadratic_layer_``)."""
        _C.nn.init_quadratic_layer_(self.weight, self.S, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.quadnet.quadratic_form(x, self.weight, self.S)
        if not torch.jit.is_scripting():
            if self._capture_users > 0 and self.training and y.requires_grad:
                self._record(x, y)
        bias = self.bias  # a local, so TorchScript can refine Optional[Tensor]
        if bias is not None:
            y = y + bias
        return y

    # -- capture of (X, ∂ℓ/∂y) for projection optimizers (as QuadraticLayerImpl in C++) --

    @torch.jit.unused
    def _reset_capture(self) -> None:
        self._capture_users = 0
        self._captured: List[Tuple[Tensor, Tensor]] = []
        self._create_graph = False

    @torch.jit.unused
    def set_capture(self, enabled: bool) -> None:
        """Registers (``True``) or releases (``False``) a user of the captures, e.g. a
        ``GLRAMSGD``: while any remains, each training forward's input and output gradient are
        recorded. Releasing the last one forgets what was recorded."""
        self._capture_users = self._capture_users + 1 if enabled else max(0, self._capture_users - 1)
        if self._capture_users == 0:
            self.drop_captured()

    @torch.jit.unused
    def _record(self, x: Tensor, y: Tensor) -> None:
        # X is held by the hook alone, so it lives as long as y's autograd graph: a forward that
        # never gets a backward (a validation pass with grad enabled) keeps nothing once its
        # graph is freed. The hook reaches the layer through a weak reference. As in C++, only a
        # pass that accumulates into weight.grad records (not torch.autograd.grad over the inputs),
        # and a pass with create_graph=True is noted (its .grad may hold second-order terms).
        layer = weakref.ref(self)
        x = x.detach().reshape(-1, self.in_features)
        weight, out_features = self.weight, self.out_features

        def record(grad: Tensor) -> None:
            owner = layer()
            if owner is None or owner._capture_users == 0:
                return
            if torch.is_grad_enabled():
                owner._create_graph = True
            if _C.nn.backward_accumulates_into(weight):
                owner._captured.append((x, grad.reshape(-1, out_features)))
        y.register_hook(record)

    @torch.jit.unused
    def captured(self) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """``(X (B, in), G (B, out))`` of every backward since the last :meth:`drop_captured`
        (concatenated; ``(None, None)`` if none)."""
        if not self._captured:
            return None, None
        return torch.cat([x for x, _ in self._captured]), torch.cat([g for _, g in self._captured])

    @torch.jit.unused
    def drop_captured(self) -> None:
        """Forgets the recorded batches (after a step, or when their gradients are zeroed)."""
        self._captured = []
        self._create_graph = False

    @torch.jit.unused
    def captured_with_create_graph(self) -> bool:
        """Whether a backward pass through the output ran with ``create_graph=True`` since the
        last :meth:`drop_captured` (a gradient penalty, double backward)."""
        return self._create_graph

    def canonical(self) -> Tensor:
        """Canonical matrices ``A_i = W^T sym(S_i) W``, shape ``(out_features, in_features, in_features)``."""
        return torch.ops.quadnet.canonical_form(self.weight, self.S)

    def num_parameters(self) -> int:
        """Free parameters, each symmetric ``S_i`` counted once: ``r·d + n·r(r+1)/2 (+ n)``."""
        return num_free_parameters(self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")


class DiagonalQuadraticLayer(torch.nn.Module):
    r"""The older squared-activation model ``y = alpha (W x)^{∘2} + b``.

    ``y_i = Σ_j alpha_ij (w_j · x)^2 + b_i``: a linear layer, a square, and a linear read-out.
    Its canonical matrices are ``A_i = W^T diag(alpha_i) W``.

    Args:
        in_features, out_features, rank, bias: as in :class:`QuadraticLayer`.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    Attributes:
        weight: ``(rank, in_features)``.
        alpha: ``(out_features, rank)``.
        bias: ``(out_features)`` or ``None``.
    """

    __constants__ = ["in_features", "out_features", "rank"]
    in_features: int
    out_features: int
    rank: int
    bias: Optional[Tensor]

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        in_features, out_features, rank = _check_sizes("DiagonalQuadraticLayer", in_features, out_features, rank,
                                                       False)
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.weight = torch.nn.Parameter(torch.empty(rank, in_features, **factory))
        self.alpha = torch.nn.Parameter(torch.empty(out_features, rank, **factory))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The C++ modules' initialisation (``quadnet::nn::init::diagonal_quadratic_layer_``)."""
        _C.nn.init_diagonal_quadratic_layer_(self.weight, self.alpha, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.quadnet.diagonal_quadratic_form(x, self.weight, self.alpha)
        bias = self.bias  # a local, so TorchScript can refine Optional[Tensor]
        if bias is not None:
            y = y + bias
        return y

    def canonical(self) -> Tensor:
        """Canonical matrices ``A_i = W^T diag(alpha_i) W``, shape ``(out_features, in_features, in_features)``."""
        return torch.ops.quadnet.diagonal_canonical_form(self.weight, self.alpha)

    def num_parameters(self) -> int:
        """Free parameters: ``r·(d + n) (+ n)``."""
        return num_free_parameters(self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")


def to_diagonal(layer):
    r"""The constructive inclusion ``H_sym(d, r, n) ⊂ H_diag(d, r(r+1)/2, n)``.

    Returns a :class:`DiagonalQuadraticLayer` with ``r(r+1)/2`` neurons computing exactly what
    ``layer`` computes: neuron ``(i, j), j ≤ i`` has weight row ``w_i + w_j`` (the rank-1 basis
    ``(e_i + e_j)(e_i + e_j)^T`` of symmetric ``r×r`` matrices), and ``alpha`` holds each
    ``S_k``'s coordinates in that basis. Same dtype and device; bias copied.

    A :class:`QuadraticConv2d` gives the :class:`DiagonalQuadraticConv2d` with ``r(r+1)/2``
    channels built the same way from the flattened filters (same geometry).
    """
    if isinstance(layer, QuadraticConv2d):
        return conv_to_diagonal(layer)
    if not isinstance(layer, QuadraticLayer):
        raise TypeError(f"to_diagonal: expected a QuadraticLayer or QuadraticConv2d, got {type(layer).__name__}")
    r = layer.rank
    diagonal = DiagonalQuadraticLayer(layer.in_features, layer.out_features, r * (r + 1) // 2,
                                      bias=layer.bias is not None, device=layer.weight.device,
                                      dtype=layer.weight.dtype)
    with torch.no_grad():
        weight, alpha = _C.nn.diagonal_parameters(layer.weight, layer.S)
        diagonal.weight.copy_(weight)
        diagonal.alpha.copy_(alpha)
        if layer.bias is not None:
            diagonal.bias.copy_(layer.bias)
    return diagonal
