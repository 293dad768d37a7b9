"""Property-based tests (hypothesis): every op and glram / projected_step on drawn shapes
(empty batches, rank = in_features, one output, several batch dims), dtypes and memory layouts
(non-contiguous, transposed, expanded), against the dense reference formulas; invalid
combinations raise the documented error (naming the op and the argument), never crash or
return a wrong shape.

Budget: each test's max_examples keeps the file within ~10 s on 2 cores (tiny tensors). Under CI
(the CI environment variable) hypothesis derandomises; locally each run explores new examples.
"""
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from quadnet_testing import DEVICES

import quadnet
from quadnet import ops
from quadnet.linalg import glram, projected_step

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [torch.float32, torch.float64]
# Relative tolerance of each dtype against a float64 reference (sums of up to ~100 products).
RTOL = {torch.float32: 2e-4, torch.float64: 1e-10}
LAYOUTS = ["contiguous", "transposed", "strided", "expanded"]


def laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` in another memory layout (no copy visible to the op)."""
    if t.dim() == 0 or layout == "contiguous":
        return t
    if layout == "transposed":  # stored with the last dim outermost
        return t.movedim(-1, 0).contiguous().movedim(0, -1)
    if layout == "strided":  # every other element of a twice larger buffer
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        big[..., ::2] = t
        return big[..., ::2]
    if layout == "expanded":  # a leading dim of stride 0 when there is one of size 1
        if t.dim() >= 2 and t.shape[0] == 1:
            return t[:1].expand(t.shape)
        return t
    raise ValueError(layout)


def close(actual, expected, dtype):
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected, rtol=RTOL[dtype], atol=RTOL[dtype] * max(scale, 1.0))


def sym(S):
    return (S + S.transpose(-1, -2)) / 2


@st.composite
def layer_shapes(draw, max_d=10):
    d = draw(st.integers(1, max_d))
    r = draw(st.one_of(st.just(d), st.integers(1, d)))  # rank = in_features is an edge worth weight
    n = draw(st.one_of(st.just(1), st.integers(1, 5)))
    batch = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    return batch, d, r, n


def randn(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


# ---- the ops against their dense formulas ----

def on_drawn_layers(max_examples):
    """Runs a test(device, shape, dtype, layout, seed) on every device with drawn layer shapes,
    dtypes, memory layouts and seeds."""
    def decorate(test):
        test = given(shape=layer_shapes(), dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
                     seed=st.integers(0, 2**31 - 1))(test)
        test = settings(max_examples=max_examples, **SETTINGS)(test)
        return pytest.mark.parametrize("device", DEVICES)(test)
    return decorate


@on_drawn_layers(max_examples=200)
def test_quadratic_form_matches_dense_formula(device, shape, dtype, layout, seed):
    batch, d, r, n = shape
    x64, W64, S64 = randn((*batch, d), torch.float64, device, seed), randn((r, d), torch.float64, device, seed + 1), \
        randn((n, r, r), torch.float64, device, seed + 2)
    x, W, S = (laid_out(t.to(dtype), layout) for t in (x64, W64, S64))
    x.requires_grad_(), W.requires_grad_(), S.requires_grad_()
    y = ops.quadratic_form(x, W, S)
    assert y.shape == (*batch, n) and y.dtype == dtype and y.device == x.device

    x64, W64, S64 = (t.detach().clone().requires_grad_() for t in (x64, W64, S64))
    reference = torch.einsum("...i,nij,...j->...n", x64, W64.t() @ sym(S64) @ W64, x64)  # x^T A_i x
    close(y.detach(), reference.detach(), dtype)

    G = randn(y.shape, torch.float64, device, seed + 3)
    grads = torch.autograd.grad(y, (x, W, S), G.to(dtype))
    expected = torch.autograd.grad(reference, (x64, W64, S64), G)
    for got, want in zip(grads, expected):
        assert got.shape == want.shape and got.dtype == dtype
        close(got, want, dtype)
    close(grads[2], sym(grads[2]).double(), dtype)  # ∂ℓ/∂S is symmetric


@on_drawn_layers(max_examples=150)
def test_diagonal_quadratic_form_matches_dense_formula(device, shape, dtype, layout, seed):
    batch, d, r, n = shape
    x, W, alpha = randn((*batch, d), dtype, device, seed), randn((r, d), dtype, device, seed + 1), \
        randn((n, r), dtype, device, seed + 2)
    y = ops.diagonal_quadratic_form(*(laid_out(t, layout) for t in (x, W, alpha)))
    assert y.shape == (*batch, n) and y.dtype == dtype
    A = W.double().t() @ torch.diag_embed(alpha.double()) @ W.double()
    close(y, torch.einsum("...i,nij,...j->...n", x.double(), A, x.double()), dtype)


@on_drawn_layers(max_examples=150)
def test_canonical_forms_match_dense_formulas(device, shape, dtype, layout, seed):
    _, d, r, n = shape
    W, S, alpha = randn((r, d), dtype, device, seed), randn((n, r, r), dtype, device, seed + 1), \
        randn((n, r), dtype, device, seed + 2)
    A = ops.canonical_form(laid_out(W, layout), laid_out(S, layout))
    assert A.shape == (n, d, d) and A.dtype == dtype
    close(A, W.double().t() @ sym(S.double()) @ W.double(), dtype)
    close(A, A.transpose(1, 2).double(), dtype)
    D = ops.diagonal_canonical_form(laid_out(W, layout), laid_out(alpha, layout))
    assert D.shape == (n, d, d)
    close(D, torch.einsum("ri,nr,rj->nij", W.double(), alpha.double(), W.double()), dtype)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=150, **SETTINGS)
@given(B=st.integers(0, 8), d=st.integers(1, 10), n=st.integers(1, 5), dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31 - 1))
def test_canonical_gradient_matches_dense_formula(device, B, d, n, dtype, layout, seed):
    X, G = randn((B, d), dtype, device, seed), randn((B, n), dtype, device, seed + 1)
    C = ops.canonical_gradient(laid_out(X, layout), laid_out(G, layout))
    assert C.shape == (n, d, d) and C.dtype == dtype
    close(C, torch.einsum("bi,bn,bj->nij", X.double(), G.double(), X.double()), dtype)


# ---- invalid combinations: the documented error, never a crash ----

CORRUPTIONS = ["x_features", "S_rank", "S_not_square", "S_dims", "weight_dims", "x_scalar", "dtype_mix",
               "integer_dtype"]


def corrupt(kind, x, W, S):
    d, r = W.shape[1], W.shape[0]
    if kind == "x_features":
        return torch.randn(*x.shape[:-1], d + 1, dtype=x.dtype), W, S, "x"
    if kind == "S_rank":
        return x, W, torch.randn(S.shape[0], r + 1, r + 1, dtype=S.dtype), "S"
    if kind == "S_not_square":
        return x, W, torch.randn(S.shape[0], r, r + 1, dtype=S.dtype), "S"
    if kind == "S_dims":
        return x, W, torch.randn(r, r, dtype=S.dtype), "S"
    if kind == "weight_dims":
        return x, W.reshape(-1), S, "weight"
    if kind == "x_scalar":
        return torch.tensor(1.0, dtype=x.dtype), W, S, "x"
    if kind == "dtype_mix":  # float32 and float64 are never mixed silently
        other = torch.float32 if x.dtype == torch.float64 else torch.float64
        return x, W.to(other), S, "weight"
    if kind == "integer_dtype":
        return x, W, S.to(torch.int64), "S"
    raise ValueError(kind)


@settings(max_examples=200, **SETTINGS)
@given(shape=layer_shapes(max_d=6), dtype=st.sampled_from(DTYPES), kind=st.sampled_from(CORRUPTIONS),
       seed=st.integers(0, 2**31 - 1))
def test_invalid_quadratic_form_arguments_raise_a_named_error(shape, dtype, kind, seed):
    batch, d, r, n = shape
    x, W, S = randn((*batch, d), dtype, "cpu", seed), randn((r, d), dtype, "cpu", seed + 1), \
        randn((n, r, r), dtype, "cpu", seed + 2)
    x, W, S, argument = corrupt(kind, x, W, S)
    with pytest.raises(RuntimeError, match=rf"quadratic_form: .*\b{argument}\b"):
        ops.quadratic_form(x, W, S)
    layer = quadnet.nn.QuadraticLayer(d, n, r, dtype=dtype)
    before = [p.detach().clone() for p in layer.parameters()]
    if kind in ("x_features", "x_scalar"):
        with pytest.raises(RuntimeError, match=r"quadratic_form: .*\bx\b"):
            layer(x)
        assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))


OTHER_OP_CORRUPTIONS = {
    # op: (valid arguments from (x, W, S, alpha, X, G), [(argument, corrupted arguments), ...])
    "diagonal_quadratic_form": lambda x, W, S, alpha, X, G: [
        ("alpha", (x, W, torch.randn(alpha.shape[0], W.shape[0] + 1, dtype=alpha.dtype))),
        ("alpha", (x, W, alpha.to(_other(alpha.dtype)))),
        ("x", (torch.randn(*x.shape[:-1], W.shape[1] + 2, dtype=x.dtype), W, alpha))],
    "canonical_form": lambda x, W, S, alpha, X, G: [
        ("S", (W, torch.randn(S.shape[0], W.shape[0] + 1, W.shape[0] + 1, dtype=S.dtype))),
        ("S", (W, S.to(_other(S.dtype)))),
        ("weight", (W.reshape(-1), S))],
    "diagonal_canonical_form": lambda x, W, S, alpha, X, G: [
        ("alpha", (W, torch.randn(alpha.shape[0], W.shape[0] + 1, dtype=alpha.dtype))),
        ("alpha", (W, alpha.to(_other(alpha.dtype))))],
    "canonical_gradient": lambda x, W, S, alpha, X, G: [
        ("G", (X, torch.randn(X.shape[0] + 1, G.shape[1], dtype=G.dtype))),
        ("G", (X, G.to(_other(G.dtype)))),
        ("G", (X, G.reshape(-1))),
        ("X", (X.reshape(-1), G)),
        ("X", (X.to(torch.int64), G.to(torch.int64)))],
}


def _other(dtype):
    return torch.float32 if dtype == torch.float64 else torch.float64


@settings(max_examples=100, **SETTINGS)
@given(shape=layer_shapes(max_d=6), B=st.integers(1, 6), dtype=st.sampled_from(DTYPES),
       op=st.sampled_from(sorted(OTHER_OP_CORRUPTIONS)), which=st.integers(0, 4), seed=st.integers(0, 2**31 - 1))
def test_invalid_arguments_of_the_other_ops_raise_a_named_error(shape, B, dtype, op, which, seed):
    batch, d, r, n = shape
    x, W = randn((*batch, d), dtype, "cpu", seed), randn((r, d), dtype, "cpu", seed + 1)
    S, alpha = randn((n, r, r), dtype, "cpu", seed + 2), randn((n, r), dtype, "cpu", seed + 3)
    X, G = randn((B, d), dtype, "cpu", seed + 4), randn((B, n), dtype, "cpu", seed + 5)
    cases = OTHER_OP_CORRUPTIONS[op](x, W, S, alpha, X, G)
    argument, args = cases[which % len(cases)]
    with pytest.raises(RuntimeError, match=rf"{op}: .*\b{argument}\b"):
        getattr(ops, op)(*args)


# ---- GLRAM and the projected step ----

@st.composite
def glram_problems(draw):
    d = draw(st.integers(1, 9))
    r = draw(st.one_of(st.just(d), st.integers(1, d)))
    n = draw(st.one_of(st.just(1), st.integers(1, 4)))
    return n, d, r


@settings(max_examples=150, **SETTINGS)
@given(problem=glram_problems(), dtype=st.sampled_from(DTYPES), warm=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_glram_result_is_a_projection_with_a_monotone_objective(problem, dtype, warm, seed):
    n, d, r = problem
    A64 = sym(randn((n, d, d), torch.float64, "cpu", seed))
    init = randn((r, d), dtype, "cpu", seed + 1) if warm else None
    result = glram(A64.to(dtype), r, init=init)
    W, S = result.weight.double(), result.S.double()
    assert result.weight.shape == (r, d) and result.S.shape == (n, r, r) and result.weight.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(W @ W.t(), torch.eye(r, dtype=torch.float64), rtol=0, atol=tol)
    torch.testing.assert_close(S, sym(S), rtol=0, atol=tol * (1 + S.abs().max().item()))
    A = A64.to(dtype).double()  # the problem as the function saw it
    torch.testing.assert_close(S, W @ A @ W.t(), rtol=tol, atol=tol * (1 + A.abs().max().item()))
    objective = result.objective
    assert objective.shape == (result.iterations + 1,) and objective.dtype == torch.float64
    total = A.square().sum().item()
    assert bool((objective[1:] <= objective[:-1] + 1e-12 * total).all()), objective
    error = (A - W.t() @ S @ W).square().sum().item()
    assert abs(objective[-1].item() - error) <= tol * max(total, 1.0)
    if n == 1:  # exact: the discarded eigenvalues (by |λ|) are the whole error
        eig = torch.linalg.eigvalsh(A[0]).abs().sort(descending=True).values
        assert abs(error - eig[r:].square().sum().item()) <= tol * max(total, 1.0)
        assert result.converged and result.iterations == 0


@settings(max_examples=150, **SETTINGS)
@given(B=st.integers(1, 8), problem=glram_problems(), duplicate=st.booleans(), lr=st.sampled_from([0.01, 0.1, 1.0]),
       seed=st.integers(0, 2**31 - 1))
def test_projected_step_equals_dense_glram(B, problem, duplicate, lr, seed):
    """The factored step (k = r + B ≤ d or not, duplicated samples or not) gives the dense answer."""
    n, d, r = problem
    W = torch.linalg.qr(randn((d, r), torch.float64, "cpu", seed))[0].t().contiguous()
    S = randn((n, r, r), torch.float64, "cpu", seed + 1)
    X = randn((B, d), torch.float64, "cpu", seed + 2)
    if duplicate and B >= 2:
        X[-1] = X[0]
    G = randn((B, n), torch.float64, "cpu", seed + 3)
    A = W.t() @ sym(S) @ W - lr * torch.einsum("bi,bn,bj->nij", X, G, X)
    assume(A.abs().max() > 1e-6)
    factored = projected_step(W, S, X, G, lr)
    dense = glram(A, r, init=W)
    total = A.square().sum().item()
    assert factored.weight.shape == (r, d) and factored.S.shape == (n, r, r)
    torch.testing.assert_close(factored.weight @ factored.weight.t(), torch.eye(r, dtype=torch.float64),
                               rtol=0, atol=1e-9)
    error = (A - factored.weight.t() @ factored.S @ factored.weight).square().sum().item()
    assert abs(factored.objective[-1].item() - error) <= 1e-8 * total
    # Same iterations from the same start: the same objective (GLRAM may stop a step earlier or
    # later on a tie within tol, so compare with the tolerance GLRAM itself stops at).
    assert abs(factored.objective[-1].item() - dense.objective[-1].item()) <= 1e-5 * total


@pytest.mark.parametrize("bad", ["rank_zero", "rank_too_large", "not_symmetric", "nonfinite"])
def test_invalid_glram_arguments_raise_a_named_error(bad):
    A = sym(torch.randn(2, 5, 5, dtype=torch.float64))
    rank, pattern = 2, None
    if bad == "rank_zero":
        rank, pattern = 0, r"glram: rank must be in \[1, 5\]"
    elif bad == "rank_too_large":
        rank, pattern = 6, r"glram: rank must be in \[1, 5\]"
    elif bad == "not_symmetric":
        A[0, 0, 1] += 1.0
        pattern = r"glram: .*symmetric"
    else:
        A[1, 2, 2] = float("nan")
        pattern = r"glram: .*NaN"
    with pytest.raises(RuntimeError, match=pattern):
        glram(A, rank)
