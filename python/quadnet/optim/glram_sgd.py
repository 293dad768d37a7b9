"""GLRAMSGD: projected SGD of quadratic layers in their canonical space (docs/glram.rst)."""
import weakref
from typing import Callable, Iterable, Optional, Union

import torch
import torch.distributed as dist
from torch.optim import Optimizer

from .. import _C
from ..linalg import DEFAULT_MAX_ITER, DEFAULT_SOLVER, DEFAULT_TOL, GLRAMResult
from ..nn.conv import quadratic_conv_of
from ..nn.quadratic import QuadraticLayer, quadratic_layer_of

__all__ = ["GLRAMSGD"]


class GLRAMSGD(Optimizer):
    r"""Projected SGD for :class:`~quadnet.nn.QuadraticLayer`\ s, SGD for everything else.

    For every quadratic layer whose ``weight`` and ``S`` are in a param group, a step moves the
    canonical matrices and projects back (warm-started GLRAM; exact for one output)::

        A_i ← (1 − lr·weight_decay) W^T S_i W − lr · X^T diag(G[:, i]) X,   (W, S) ← GLRAM(A, rank)

    computed without any ``d×d`` matrix (:func:`quadnet.linalg.projected_step`). ``X`` (the
    layer's batch input) and ``G = ∂ℓ/∂y`` are recorded by the layer during forward/backward
    while the optimizer exists, so the usual loop works unchanged:
    ``opt.zero_grad(); loss.backward(); opt.step()``. A layer whose output got no gradient
    since the last step (or whose parameters have no ``.grad``) is left untouched. All other
    parameters get SGD with the group's ``momentum`` and ``weight_decay`` (their canonical
    space is themselves); momentum does not apply to the projected layers (a canonical
    momentum would need ``n·d²`` state).

    Edited gradients: the step follows a uniform scaling of a layer's ``.grad`` — gradient
    clipping by norm, ``torch.amp.GradScaler`` (scaled losses, ``unscale_``, skipped steps) — by
    scaling ``G`` by the same factor, and raises ``RuntimeError`` for any other edit
    (``clip_grad_value_``, a penalty added to ``.grad``), which it cannot express in the
    canonical space (:doc:`/glram`, "Edited gradients"). The optimizer's ``zero_grad`` forgets the
    recorded batches along with the gradients; zeroing with ``model.zero_grad()`` instead
    leaves them, and the next step raises on the mismatch.

    Under ``torch.distributed`` (e.g. DDP) every rank projects the canonical gradient of the
    *global* batch: ``X`` and ``G`` are all-gathered, and ``G`` is divided by the world size to
    match DDP's gradient averaging, so ranks stay identical and equal a single process on the
    concatenated batch (with a per-rank mean loss and equal per-rank batches).

    A step that would make any parameter NaN/Inf raises ``RuntimeError`` and changes no
    parameter or state. The update rules are the C++ ones (``quadnet::optim``).

    Args:
        params: an ``nn.Module`` (all its parameters), or an iterable of parameters / param
            group dicts, as for ``torch.optim.SGD``. Quadratic layers are found from their
            parameters, so ``GLRAMSGD(model.parameters(), ...)`` works (also after
            ``copy.deepcopy``, pickling, ``load_state_dict(..., assign=True)`` or assigning a
            new ``weight`` / ``S``), and so does giving only the quadratic layers' parameters
            here and the rest to another optimizer. A layer's ``weight`` and ``S`` must be in
            the same param group (``ValueError`` otherwise: half a layer would get plain SGD).
            Parameters of a :class:`~quadnet.nn.QuadraticConv2d` are refused (``ValueError``):
            GLRAMSGD does not project convolutional layers (:doc:`/quadratic_conv`).
        lr: learning rate.
        momentum: momentum of the non-quadratic parameters (default 0).
        weight_decay: L2 penalty, on the canonical ``A_i`` for quadratic layers (default 0).
        tol: GLRAM stopping tolerance (default 1e-6).
        max_iter: GLRAM iterations per step at most (default 100).
        solver: GLRAM solver, ``"rayleigh_ritz"`` (default) or ``"exact"``
            (:func:`quadnet.linalg.glram`).
    """

    def __init__(self, params: Union[torch.nn.Module, Iterable], lr: float, *, momentum: float = 0.0,
                 weight_decay: float = 0.0, tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER,
                 solver: str = DEFAULT_SOLVER):
        layers = []
        if isinstance(params, torch.nn.Module):
            layers = [m for m in params.modules() if isinstance(m, QuadraticLayer)]
            params = params.parameters()
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, tol=tol, max_iter=max_iter, solver=solver)
        _check_options(defaults)
        super().__init__(params, defaults)
        if not layers:  # plain parameters: find the layers they belong to (weight or S)
            found = (quadratic_layer_of(p) for g in self.param_groups for p in g["params"])
            layers = list({id(layer): layer for layer in found if layer is not None}.values())
        self._layers = layers
        _check_layers_in_groups(layers, self.param_groups)
        _refuse_convolutions(self.param_groups)
        for layer in layers:
            layer.set_capture(True)
        # When the optimizer is gone its layers stop capturing (other optimizers' uses remain).
        weakref.finalize(self, _release_capture, [weakref.ref(layer) for layer in layers])
        #: GLRAM results of the last step, one per projected layer (objective, iterations).
        self.last_projections: list = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``Optimizer.zero_grad``, and forgets the layers' recorded batches (their gradients
        are gone; e.g. a step skipped by ``GradScaler`` must not leak its batch into the next)."""
        super().zero_grad(set_to_none)
        for layer in self._layers:
            layer.drop_captured()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # state dicts saved before the option existed
            group.setdefault("solver", DEFAULT_SOLVER)

    def add_param_group(self, param_group: dict) -> None:
        """``Optimizer.add_param_group``, with the group's options checked as in C++."""
        super().add_param_group(param_group)
        try:
            _check_options(self.param_groups[-1])
            _refuse_convolutions(self.param_groups[-1:])
        except ValueError:
            self.param_groups.pop()
            raise

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Checked for every group before any capture is consumed: a refused step changes nothing.
        _check_layers_in_groups(self._layers, self.param_groups)
        batches = []
        for layer in self._layers:
            X, G = layer.captured()
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                X, G = _all_gather_batch(layer, X, G)
            batches.append((layer.weight, layer.S, X, G))
        def momentum_buffer_of(p):
            return self.state[p].get("momentum_buffer") if p in self.state else None  # no empty state entries
        groups = [(group["params"], [momentum_buffer_of(p) for p in group["params"]], group)
                  for group in self.param_groups]
        # The updates are computed (and checked) in C++, the same function as quadnet::optim::GLRAMSGD::step.
        values, buffers, projections = _C.optim.glram_sgd_updates(groups, batches)
        for target, value in values:
            target.copy_(value)
        for p, buffer in buffers:
            self.state[p]["momentum_buffer"] = buffer
        for layer in self._layers:
            layer.drop_captured()
        self.last_projections = [GLRAMResult(r.weight, r.S, r.objective, r.iterations, r.converged)
                                 for r in projections]
        return loss


def _refuse_convolutions(groups) -> None:
    """QuadraticConv2d parameters are refused: GLRAMSGD does not project them, and plain SGD in
    their place would be a silent substitute (docs/quadratic_conv.rst, "Projection")."""
    for group in groups:
        for p in group["params"]:
            if quadratic_conv_of(p) is not None:
                raise ValueError(f"GLRAMSGD: a parameter of shape {tuple(p.shape)} belongs to a QuadraticConv2d, "
                                 "which GLRAMSGD does not project (its canonical space is the patch space; see the "
                                 "docs); give that layer's parameters to another optimizer (e.g. torch.optim.Adam)")


def _check_options(group: dict) -> None:
    try:
        _C.optim.check_options(group)
    except RuntimeError as error:
        raise ValueError(str(error).splitlines()[0]) from None


def _release_capture(layers) -> None:
    for ref in layers:
        layer = ref()
        if layer is not None:
            layer.set_capture(False)


def _check_layers_in_groups(layers, param_groups) -> None:
    """A projected layer needs its weight and S in one group: half of it would get plain SGD."""
    for group in param_groups:
        in_group = {id(p) for p in group["params"]}
        for layer in layers:
            if (id(layer.weight) in in_group) != (id(layer.S) in in_group):
                raise ValueError("GLRAMSGD: a QuadraticLayer's weight and S must be in the same param group "
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
