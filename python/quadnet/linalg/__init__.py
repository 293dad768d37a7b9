"""GLRAM projections from canonical matrices back onto the quadratic model (:doc:`/glram`).

Thin adapters over the C++ implementation (``quadnet::linalg``).
"""
from typing import NamedTuple, Optional

from torch import Tensor

from .. import _C

__all__ = ["GLRAMResult", "glram", "projected_step", "tangent_step", "tangent_step_unavailable"]

#: Defaults of C++ ``quadnet::linalg::GLRAMOptions`` (their one definition), read from the extension.
DEFAULT_TOL: float = _C.linalg.DEFAULTS["tol"]
DEFAULT_MAX_ITER: int = _C.linalg.DEFAULTS["max_iter"]
DEFAULT_SOLVER: str = _C.linalg.DEFAULTS["solver"]


class GLRAMResult(NamedTuple):
    """Result of a GLRAM projection.

    Attributes:
        weight: ``(rank, d)`` with orthonormal rows.
        S: ``(n, rank, rank)``, symmetric; ``S_i = weight A_i weight^T``.
        objective: float64 ``(iterations + 1,)``: ``Σ_i ||A_i − W^T S_i W||_F^2`` after the
            initial subspace and after every iteration (never increases).
        iterations: alternating iterations run (0 for the exact single-output solution).
        converged: whether ``tol`` was reached (always ``True`` for one output).
    """
    weight: Tensor
    S: Tensor
    objective: Tensor
    iterations: int
    converged: bool


def _wrap(result) -> GLRAMResult:
    return GLRAMResult(result.weight, result.S, result.objective, result.iterations, result.converged)


def glram(A: Tensor, rank: int, *, tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER,
          init: Optional[Tensor] = None, solver: str = DEFAULT_SOLVER) -> GLRAMResult:
    r"""Projects symmetric ``A (n, d, d)`` onto ``{W^T S_i W}``: minimises ``Σ_i ||A_i − W^T S_i W||_F^2``.

    One output (``n = 1``) is solved exactly (the ``rank`` eigenvectors with largest ``|λ|``).
    Several outputs: alternating maximisation (GLRAM), a local optimum with a monotone objective.

    Args:
        A: ``(n, d, d)`` symmetric (checked), finite.
        rank: ``r`` in ``[1, d]``.
        tol: stop when an iteration lowers the error by less than ``tol · Σ_i ||A_i||_F^2``.
        max_iter: most iterations.
        init: ``(rank, d)`` warm start (e.g. the current weight); ``None`` for the classic start
            (top eigenvectors of ``Σ_i A_i A_i``).
        solver: ``"rayleigh_ritz"`` (default): each iteration keeps the best ``rank``-dim
            subspace of ``[V, M V]`` (a ``2·rank``-sized eigen-solve), a block grown by
            ``M² V, M³ V, …`` on large moves until the step is the exact one; ``"exact"``: the
            full GLRAM iteration (a ``d×d`` eigen-solve). Same fixed points, monotone objective
            and (measured) result (:doc:`/glram`, "Solvers"). One output is solved exactly
            either way.
    """
    return _wrap(_C.linalg.glram(A, rank, tol, max_iter, init, solver))


def projected_step(weight: Tensor, S: Tensor, X: Tensor, G: Tensor, lr: float, *,
                   tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER,
                   solver: str = DEFAULT_SOLVER) -> GLRAMResult:
    r"""Projected SGD step in the canonical space, without forming any ``d×d`` matrix.

    Returns the GLRAM projection of ``A_i = W^T sym(S_i) W − lr · X^T diag(G[:, i]) X``,
    warm-started from ``weight`` (the classic start if ``weight`` has rank ``< r``, e.g. zero).
    ``solver="rayleigh_ritz"`` (default) applies ``A_i`` through its factors (``k``-sized ones in
    the coordinates of ``span[W^T | X^T]`` when ``k = rank + batch < d``); ``solver="exact"`` runs the
    full GLRAM iteration on ``k×k`` cores from a thin QR of ``[W^T | X^T]``, as does one output with either
    solver. Dense when ``k ≥ d``, except with ``"rayleigh_ritz"`` when ``B² ≤ n·d²`` (its ``B×B``
    Gram matrix is then no larger than the ``n`` canonical matrices). ``tol`` and ``max_iter`` as
    in :func:`glram`.

    Shapes: ``weight (r, d)``, ``S (n, r, r)``, ``X (B, d)`` (the layer's inputs),
    ``G (B, n)`` (``∂ℓ/∂y``).
    """
    return _wrap(_C.linalg.projected_step(weight, S, X, G, float(lr), tol, max_iter, solver))


def tangent_step(weight: Tensor, S: Tensor, weight_grad: Tensor, S_grad: Tensor, lr: float, *,
                 tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER,
                 solver: str = DEFAULT_SOLVER) -> GLRAMResult:
    r"""The tangent-space projected step ``Π(A − lr·P_T(G))``, from the layer's gradients alone.

    ``P_T(G)`` is the orthogonal projection onto the model's tangent space at ``A_i = W^T S_i W``
    of the canonical gradient ``G_i = X^T diag(g_i) X``; it is computed from ``weight_grad``
    (``= 2 Σ_i S_i W G_i``) and ``S_grad`` (``= W G_i W^T``) — no batch — in the frame where the
    weight's rows are orthonormal (``W^T = QR``, ``S_i ← R S_i R^T``, the same function)::

        dS_i = sym(S_grad_i),   dW^T = (I − W^T W) (weight_grad^T / 2) (Σ_j S_j²)^{-1}

    ``A − lr·ξ`` lies in the ``2r``-dimensional span of ``[W^T | dW^T]``, where GLRAM projects it
    back exactly as :func:`glram` would (warm-started from ``weight``; ``tol``, ``max_iter``,
    ``solver`` as there). Agrees with :func:`projected_step` to ``O(lr²)``; the move in the
    canonical space is at most ``2·lr·||G||_F``. Raises ``RuntimeError`` where
    :func:`tangent_step_unavailable` gives a reason (:doc:`/glram`, "Tangent step").

    Shapes: ``weight (r, d)`` and ``weight_grad`` alike, ``S (n, r, r)`` and ``S_grad`` alike.
    Cost ``O(d·r² + n·r³)``, independent of the batch.
    """
    return _wrap(_C.linalg.tangent_step(weight, S, weight_grad, S_grad, float(lr), tol, max_iter, solver))


def tangent_step_unavailable(weight: Tensor, S: Tensor) -> str:
    """Why :func:`tangent_step` does not apply at ``(weight, S)`` — dependent weight rows, or
    ``Σ_i S_i²`` singular (e.g. a zero or rank-deficient ``S``) — or ``""`` when it does. At such a
    point only :func:`projected_step` (which needs the batch) is defined."""
    return _C.linalg.tangent_step_unavailable(weight, S)
