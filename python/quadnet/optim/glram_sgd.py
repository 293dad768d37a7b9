"""GLRAMSGD: projected SGD of quadratic layers in their canonical space (docs/glram.rst)."""
import weakref
from typing import Callable, Iterable, Optional, Union

import torch
import torch.distributed as dist
from torch.optim import Optimizer

from .. import _C
from ..linalg import GLRAMResult
from ..nn._registry import layers_of
from ..nn.conv import _CONVS, QuadraticConv2d
from ..nn.quadratic import _LAYERS as _DENSE
from ..nn.quadratic import QuadraticLayer

__all__ = ["GLRAMSGD"]


# The defaults of C++ quadnet::optim::GLRAMSGDOptions (their one definition; tol, max_iter and
# solver are linalg::GLRAMOptions'), read from the extension.
_DEFAULTS = _C.optim.GLRAMSGD_DEFAULTS
DEFAULT_PROJECTION: str = _DEFAULTS["projection"]


class GLRAMSGD(Optimizer):
    r"""Projected SGD for quadratic layers, SGD for everything else.

    Every :class:`~quadnet.nn.QuadraticLayer` and :class:`~quadnet.nn.QuadraticConv2d` whose
    ``weight`` and ``S`` are in a param group is stepped in its canonical space
    ``A_i = W^T S_i W`` (for a convolution ``W = weight.flatten(1)``, the patch space) and
    projected back onto the rank-``r`` model (:doc:`/glram`). Two projections:

    ``projection="tangent"`` (default)
        ``A ← Π(A − lr·ξ)`` with ``ξ`` the tangent-space projection of the canonical gradient
        (plus momentum and weight decay, below), computed from the layer's ``.grad`` alone
        (:func:`quadnet.linalg.tangent_step`): no batch, ``O(d·r² + n·r³)`` a step. It agrees with
        the full step to ``O(lr²)``. A layer that is not on the rank-``r`` model — a zero weight or
        ``S`` (the seed's ``W = S = 0`` protocol), a rank-deficient ``S``
        (:func:`quadnet.linalg.tangent_step_unavailable`) — takes the full step instead, which
        needs its batch: the optimizer has such a ``QuadraticLayer`` record ``X`` and
        ``G = ∂ℓ/∂y`` during forward/backward only while it needs them (a convolution there
        raises). Weight rows that are merely not orthonormal (a fresh random init) are rewritten
        exactly (``W^T = QR``, ``S_i ← R S_i R^T``: the same function) without a batch.
    ``projection="full"``
        ``A_i ← (1 − lr·weight_decay) A_i − lr · X^T diag(G[:, i]) X``, then GLRAM
        (:func:`quadnet.linalg.projected_step`), from the batch recorded during forward/backward:
        the seed's algorithm exactly. ``QuadraticLayer`` only (convolutions are refused); no
        momentum for the projected layers (a canonical momentum would need ``n·d²`` state).

    The usual loop works unchanged: ``opt.zero_grad(); loss.backward(); opt.step()``. A layer
    whose parameters have no ``.grad`` is left untouched. All other parameters get
    ``torch.optim.SGD``'s update with the group's ``momentum``, ``dampening``, ``nesterov`` and
    ``weight_decay``.

    Momentum of a projected layer (``"tangent"``): its buffer is a tangent vector at the current
    point, kept as ``(dW, dS)`` in ``state[weight]["momentum_buffer"]`` and
    ``state[S]["momentum_buffer"]`` (the parameters' shapes, ``O(d·r + n·r²)``); each step forms
    ``d = P_T(G) + weight_decay·A``, ``b ← momentum·b + (1 − dampening)·d`` (``b = d`` at first),
    moves along ``b`` (or ``d + momentum·b`` with ``nesterov``), and carries ``b`` to the new
    point by projecting it onto the new tangent space.

    Gradients: with ``"tangent"`` a step is a function of the parameters and their ``.grad``,
    so gradient accumulation, clipping of any kind, ``GradScaler`` and DDP act on projected
    layers as on any parameter. With ``"full"`` the step is computed from the recorded batch; it
    follows a uniform scaling of ``.grad`` (clipping by norm, ``GradScaler``) by scaling ``G`` and
    raises ``RuntimeError`` for any other edit (:doc:`/glram`, "Edited gradients"); under
    ``torch.distributed`` the batches are all-gathered (``G`` divided by the world size, DDP's
    mean). The optimizer's ``zero_grad`` forgets recorded batches along with the gradients.

    A step that would make any parameter NaN/Inf, or that cannot do what was asked, raises and
    changes no parameter or state. The update rules are the C++ ones (``quadnet::optim``).

    Args:
        params: an ``nn.Module`` (all its parameters), or an iterable of parameters / param
            group dicts, as for ``torch.optim.SGD``. Quadratic layers are found from their
            parameters by identity among every live layer — at construction,
            ``add_param_group``, ``load_state_dict``, unpickling and every step — so any route
            works: ``model.parameters()``, param groups, layers added later, ``copy.deepcopy``,
            pickle, ``load_state_dict(..., assign=True)``, ``to_empty`` after meta-device
            construction, ``module.to()``, new Parameters assigned. A layer's ``weight`` and
            ``S`` must be in the same param group (``ValueError`` otherwise, on every route:
            half a layer would get plain SGD). The optimizer pickles and deep-copies with its
            layers: copied alone it projects the copies; copied with the model (``copy.deepcopy
            ((model, opt))``) it continues identically.
        lr: learning rate.
        momentum: momentum factor (default 0): of every parameter with ``"tangent"``, of the
            non-quadratic parameters with ``"full"``.
        dampening: dampening for momentum (default 0).
        nesterov: Nesterov momentum (default ``False``; needs ``momentum > 0``, ``dampening = 0``).
        weight_decay: L2 penalty, on the canonical ``A_i`` for quadratic layers (default 0).
        tol: GLRAM stopping tolerance (default 1e-6).
        max_iter: GLRAM iterations per step at most (default 100).
        solver: GLRAM solver, ``"rayleigh_ritz"`` (default) or ``"exact"``
            (:func:`quadnet.linalg.glram`).
        projection: ``"tangent"`` (default) or ``"full"``, as above.
        maximize: ascend the objective instead (default ``False``; every parameter, projected
            layers included).

    ``lr`` may be a one-element tensor, as in ``torch.optim`` (it is read as a float at each
    step). Plain parameters and their momentum buffers are updated in place, as by
    ``torch.optim.SGD``'s single-tensor rule, after every update of the step has been checked.
    Not supported: ``foreach``, ``fused``, ``differentiable``, ``capturable`` (the projection is
    not a ``torch.optim`` kernel).
    """

    def __init__(self, params: Union[torch.nn.Module, Iterable], lr: Union[float, torch.Tensor], *,
                 momentum: float = _DEFAULTS["momentum"], dampening: float = _DEFAULTS["dampening"],
                 nesterov: bool = _DEFAULTS["nesterov"], weight_decay: float = _DEFAULTS["weight_decay"],
                 tol: float = _DEFAULTS["tol"], max_iter: int = _DEFAULTS["max_iter"],
                 solver: str = _DEFAULTS["solver"], projection: str = DEFAULT_PROJECTION,
                 maximize: bool = _DEFAULTS["maximize"]):
        if isinstance(params, torch.nn.Module):
            params = params.parameters()
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                        tol=tol, max_iter=max_iter, solver=solver, projection=projection, maximize=maximize)
        _check_options(defaults)
        self._layers: list = []
        self._capturing: dict = {}  # id(layer) -> weakref, for the layers this optimizer has capture on
        super().__init__(params, defaults)  # each group through add_param_group, which finds the layers
        self._finalize_capture()
        #: GLRAM results of the last step, one per projected layer (objective, iterations).
        self.last_projections: list = []

    def _find_layers(self, capture: bool = True) -> None:
        """The projected layers are those whose ``weight`` or ``S`` is in a param group, found by
        identity among every live layer (nn._registry), whatever route put the parameters there;
        refused: half a layer in a group, a convolution in a "full" group. Layers no longer found
        stop capturing; with ``capture``, each found layer captures exactly while it needs its
        batch (``step`` passes ``False``: its own result says that for the next step)."""
        found = layers_of((p for g in self.param_groups for p in g["params"]), _DENSE, _CONVS)
        _check_layers_in_groups(found, self.param_groups)
        _refuse_full_convolutions(found, self.param_groups)
        _refuse_rank_normed(found)
        found_ids = {id(layer) for layer in found}
        for layer in self._layers:  # layers no longer here (their parameters were replaced)
            if id(layer) not in found_ids:
                self._set_capturing(layer, False)
        self._layers = found
        if capture:
            for layer in self._layers:
                self._set_capturing(layer, self._needs_batch(layer))

    def _finalize_capture(self) -> None:
        # When the optimizer is gone its layers stop capturing (other optimizers' uses remain).
        weakref.finalize(self, _release_capture, self._capturing)

    def _needs_batch(self, layer) -> bool:
        """Whether the layer's next step is a full projected step, which needs its batch."""
        group = next(g for g in self.param_groups if any(p is layer.weight for p in g["params"]))
        return _C.optim.needs_batch(group["projection"], layer.weight, layer.S, isinstance(layer, QuadraticConv2d))

    def _set_capturing(self, layer, capturing: bool) -> None:
        if (id(layer) in self._capturing) == capturing:  # never True for a convolution (needs_batch)
            return
        layer.set_capture(capturing)
        if capturing:
            self._capturing[id(layer)] = weakref.ref(layer)
        else:
            del self._capturing[id(layer)]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``Optimizer.zero_grad``, and forgets the layers' recorded batches (their gradients
        are gone; e.g. a step skipped by ``GradScaler`` must not leak its batch into the next)."""
        super().zero_grad(set_to_none)
        for layer in self._layers:
            if isinstance(layer, QuadraticLayer):
                layer.drop_captured()

    def __getstate__(self) -> dict:
        # The layers travel with the optimizer, so a copy made alone (copy.deepcopy(opt),
        # pickle.dumps(opt)) projects the copies of its parameters instead of treating them as
        # plain ones; copied together with the model, they are the model's copied layers.
        return {**super().__getstate__(), "_layers": self._layers}

    def __setstate__(self, state: dict) -> None:
        layers = state.pop("_layers", [])  # kept alive until found below
        super().__setstate__(state)
        for group in self.param_groups:  # state dicts saved before these options existed
            _set_new_option_defaults(group)
        if not hasattr(self, "_capturing"):  # a copy (deepcopy, pickle), not load_state_dict
            self._layers, self._capturing, self.last_projections = [], {}, []
            self._finalize_capture()
        self._find_layers()
        del layers

    def add_param_group(self, param_group: dict) -> None:
        """``Optimizer.add_param_group``, with the group's options checked as in C++ and the
        quadratic layers among its parameters found (``ValueError`` for half a layer, or a
        convolution with ``projection="full"``); a refused group is not added."""
        super().add_param_group(param_group)
        try:
            _check_options(self.param_groups[-1])
            self._find_layers()
        except ValueError:
            self.param_groups.pop()
            self._find_layers()
            raise

    def load_state_dict(self, state_dict: dict) -> None:
        """``Optimizer.load_state_dict``; a state dict that is not GLRAMSGD's (e.g. torch.optim.SGD's)
        or holds invalid options is a ``ValueError`` naming what is wrong, and changes nothing."""
        for index, saved in enumerate(state_dict.get("param_groups", [])):
            group = dict(saved)
            _set_new_option_defaults(group)
            missing = [key for key in self.defaults if key not in group]
            if missing:
                raise ValueError(f"GLRAMSGD.load_state_dict: param group {index} has no {', '.join(missing)}: "
                                 "not a GLRAMSGD state dict (one saved by another optimizer?)")
            _check_options(group)
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Found again (parameters may have moved to other layers since) and checked for every
        # group before any capture is consumed: a refused step changes nothing.
        self._find_layers(capture=False)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        batches = []
        for layer in self._layers:
            if isinstance(layer, QuadraticConv2d):
                batches.append((layer.weight, layer.S, None, None, True, False))
                continue
            X, G = layer.captured()
            if distributed and id(layer) in self._capturing:
                X, G = _all_gather_batch(layer, X, G)
            batches.append((layer.weight, layer.S, X, G, False, layer.captured_with_create_graph()))
        def momentum_buffer_of(p):
            return self.state[p].get("momentum_buffer") if p in self.state else None  # no empty state entries
        groups = [(group["params"], [momentum_buffer_of(p) for p in group["params"]], _as_floats(group))
                  for group in self.param_groups]
        # Computed, checked and written in C++ (quadnet::optim::glram_sgd_updates, apply_step_updates:
        # as GLRAMSGD::step); a refused step raises before anything is written.
        buffers, projections, needs_batch = _C.optim.glram_sgd_step(groups, batches)
        for p, buffer in buffers:
            self.state[p]["momentum_buffer"] = buffer
        for layer, needs in zip(self._layers, needs_batch):
            if isinstance(layer, QuadraticLayer):
                layer.drop_captured()
            self._set_capturing(layer, needs)
        self.last_projections = [GLRAMResult(r.weight, r.S, r.objective, r.iterations, r.converged)
                                 for r in projections]
        return loss


def _set_new_option_defaults(group: dict) -> None:
    """Options added after the first release: absent from older state dicts, which keep the defaults."""
    for key in ("solver", "projection", "dampening", "nesterov", "maximize"):
        group.setdefault(key, _DEFAULTS[key])


def _refuse_full_convolutions(layers, groups) -> None:
    """QuadraticConv2d parameters in a group with projection="full" are refused: the full
    projected step is not implemented for convolutions, and plain SGD in its place would be a
    silent substitute."""
    in_full_groups = {id(p) for g in groups if g["projection"] == "full" for p in g["params"]}
    for layer in layers:
        if not isinstance(layer, QuadraticConv2d):
            continue
        for p in (layer.weight, layer.S):
            if id(p) in in_full_groups:
                raise ValueError(f"GLRAMSGD: a parameter of shape {tuple(p.shape)} belongs to a QuadraticConv2d, in "
                                 "a param group with projection='full', whose full projected step is not implemented "
                                 "for convolutions; use projection='tangent' (the default)")


def _refuse_rank_normed(layers) -> None:
    """The QuadraticConv2d of a PolynomialConvBlock(rank_norm=True) is refused: its forms act on the
    batch-normalised filter outputs, so the block is not x -> x^T (W^T S_i W) x and has no
    canonical space to step in; plain SGD in its place would be a silent substitute."""
    for layer in layers:
        if getattr(layer, "_rank_normed", False):
            raise ValueError(f"GLRAMSGD: a QuadraticConv2d (weight of shape {tuple(layer.weight.shape)}) belongs to a "
                             "PolynomialConvBlock with rank_norm=True, whose batch norm between the filters W and the "
                             "forms S leaves no canonical matrices A_i = W^T S_i W to project; train that block with "
                             "torch.optim.SGD or Adam, or build it with rank_norm=False")


def _check_options(group: dict) -> None:
    _C.optim.check_options(_as_floats(group))  # ValueError (c10::ValueError), naming the option


def _as_floats(group: dict) -> dict:
    """The group with a tensor ``lr`` (torch.optim accepts one, e.g. for schedulers that update it
    in place) read as a float: the C++ options hold doubles (one host read on CUDA)."""
    lr = group["lr"]
    if not isinstance(lr, torch.Tensor):
        return group
    if lr.numel() != 1:
        raise ValueError(f"GLRAMSGD: a tensor lr must have one element, got shape {tuple(lr.shape)}")
    return {**group, "lr": float(lr)}


def _release_capture(capturing: dict) -> None:
    for ref in capturing.values():
        layer = ref()
        if layer is not None:
            layer.set_capture(False)


def _check_layers_in_groups(layers, param_groups) -> None:
    """A projected layer needs its weight and S in one group: half of it would get plain SGD."""
    for group in param_groups:
        in_group = {id(p) for p in group["params"]}
        for layer in layers:
            if (id(layer.weight) in in_group) != (id(layer.S) in in_group):
                raise ValueError(f"GLRAMSGD: a {type(layer).__name__}'s weight and S must be in the same param group "
                                 f"(found only its {'weight' if id(layer.weight) in in_group else 'S'} in a "
                                 f"group for {layer!r})")


def _all_gather_batch(layer: QuadraticLayer, X: Optional[torch.Tensor], G: Optional[torch.Tensor]):
    """Concatenates every rank's (X, G) in rank order; G scaled by 1/world_size (DDP's mean)."""
    world = dist.get_world_size()
    like = layer.weight
    if X is None:
        X = like.new_zeros(0, layer.in_features)
        G = like.new_zeros(0, layer.out_features)
    size = torch.tensor([X.shape[0]], device=like.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    if longest == 0:
        return None, None
    pad = longest - X.shape[0]
    X = torch.cat([X, X.new_zeros(pad, X.shape[1])])
    G = torch.cat([G, G.new_zeros(pad, G.shape[1])])
    xs, gs = [torch.empty_like(X) for _ in range(world)], [torch.empty_like(G) for _ in range(world)]
    dist.all_gather(xs, X.contiguous())
    dist.all_gather(gs, G.contiguous())
    X = torch.cat([x[:n] for x, n in zip(xs, sizes)])
    G = torch.cat([g[:n] for g, n in zip(gs, sizes)]) / world
    return X, G
