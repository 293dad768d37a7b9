"""torch.func on every op and module: grad, vjp, jacrev, hessian, jvp, jacfwd and forward-mode AD
against torch.autograd's own functional API (the ops' hand-written backward), and vmap without
functorch's per-sample fallback against a loop."""
import contextlib

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

from quadnet.nn import DeepPolynomialNet, PolynomialConvBlock, QuadraticConv2d, QuadraticLayer

F64 = dict(dtype=torch.float64)

# op -> (argument shapes, keyword arguments)
OPS = {
    "quadratic_form": ([(5, 4), (3, 4), (2, 3, 3)], {}),
    "diagonal_quadratic_form": ([(5, 4), (3, 4), (2, 3)], {}),
    "quadratic_features": ([(5, 3), (2, 3, 3)], {}),
    "quadratic_conv2d": ([(2, 2, 5, 4), (3, 2, 3, 3), (2, 3, 3)], {"padding": [1, 1]}),
    "diagonal_quadratic_conv2d": ([(2, 2, 5, 4), (3, 2, 3, 3), (2, 3)], {"stride": [2, 1]}),
    "canonical_gradient": ([(6, 3), (6, 2)], {}),
    "canonical_form": ([(3, 4), (2, 3, 3)], {}),
    "diagonal_canonical_form": ([(3, 4), (2, 3)], {}),
}


def _inputs(name):
    shapes, kwargs = OPS[name]
    return [torch.randn(*s, **F64) for s in shapes], kwargs


@contextlib.contextmanager
def no_vmap_fallback():
    """functorch's per-sample loop for ops without a batching rule raises instead of running."""
    torch._C._functorch._set_vmap_fallback_enabled(False)
    try:
        yield
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(True)


@pytest.mark.parametrize("name", OPS)
def test_reverse_mode_transforms_match_autograd(name):
    args, kwargs = _inputs(name)
    op = getattr(torch.ops.quadnet, name)
    weights = torch.randn_like(op(*args, **kwargs))

    def loss(*a):
        return (op(*a, **kwargs) * weights).sum()

    expected = torch.autograd.functional.jacobian(loss, tuple(args))
    argnums = tuple(range(len(args)))
    for got, want in zip(grad(loss, argnums=argnums)(*args), expected):
        torch.testing.assert_close(got, want)
    out, pullback = vjp(lambda *a: op(*a, **kwargs), *args)
    for got, want in zip(pullback(weights), expected):
        torch.testing.assert_close(got, want)
    jacobian = torch.autograd.functional.jacobian(lambda *a: op(*a, **kwargs), tuple(args))
    for got, want in zip(jacrev(lambda *a: op(*a, **kwargs), argnums=argnums)(*args), jacobian):
        torch.testing.assert_close(got, want)
    # hessian (forward-over-reverse) in the first argument
    want = torch.autograd.functional.hessian(lambda a0: loss(a0, *args[1:]), args[0])
    torch.testing.assert_close(hessian(lambda a0: loss(a0, *args[1:]))(args[0]), want)


@pytest.mark.parametrize("name", OPS)
def test_forward_mode_matches_the_jacobian(name):
    args, kwargs = _inputs(name)
    op = getattr(torch.ops.quadnet, name)
    tangents = [torch.randn_like(a) for a in args]
    jacobian = torch.autograd.functional.jacobian(lambda *a: op(*a, **kwargs), tuple(args))
    out = op(*args, **kwargs)
    expected = sum((j.reshape(out.numel(), -1) @ t.reshape(-1)).reshape(out.shape) for j, t in zip(jacobian, tangents))
    _, tangent_out = jvp(lambda *a: op(*a, **kwargs), tuple(args), tuple(tangents))
    torch.testing.assert_close(tangent_out, expected)
    torch.testing.assert_close(jacfwd(lambda a0: op(a0, *args[1:], **kwargs))(args[0]), jacobian[0])
    with fwAD.dual_level():  # plain forward-mode AD, no torch.func
        dual = op(*(fwAD.make_dual(a, t) for a, t in zip(args, tangents)), **kwargs)
        torch.testing.assert_close(fwAD.unpack_dual(dual).tangent, expected)


@pytest.mark.parametrize("name", OPS)
def test_vmap_has_a_batching_rule_and_matches_a_loop(name):
    args, kwargs = _inputs(name)
    op = getattr(torch.ops.quadnet, name)
    stacked = [torch.stack([a + 0.1 * k for k in range(3)]) for a in args]  # 3 samples of every argument
    with no_vmap_fallback():
        got = vmap(lambda *a: op(*a, **kwargs))(*stacked)
    want = torch.stack([op(*(s[k] for s in stacked), **kwargs) for k in range(3)])
    torch.testing.assert_close(got, want)


def test_the_vmap_guard_catches_an_op_without_a_batching_rule():
    """no_vmap_fallback() does refuse the per-sample loop (so the test above can fail)."""
    torch.library.define("quadnet_test::no_rule", "(Tensor x) -> Tensor")
    torch.library.impl("quadnet_test::no_rule", "CompositeExplicitAutograd", lambda x: x * 2)
    with no_vmap_fallback(), pytest.raises(RuntimeError, match="fallback"):
        vmap(torch.ops.quadnet_test.no_rule)(torch.randn(3, 2))


def _per_sample_loop(model, x, target):
    grads = []
    for k in range(x.shape[0]):
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x[k:k + 1]), target[k:k + 1]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    return {n: torch.stack([g[n] for g in grads]) for n in grads[0]}


@pytest.mark.parametrize("make, shape", [
    # without batch norm (in training mode it mixes the samples: no per-sample gradient)
    (lambda: DeepPolynomialNet([6, 5, 3], ranks=[3, 2], quadratic_norm=False).double(), (7, 6)),
    (lambda: torch.nn.Sequential(QuadraticLayer(6, 4, 3), torch.nn.Linear(4, 3)).double(), (7, 6)),
    (lambda: torch.nn.Sequential(PolynomialConvBlock(2, 3, 3, rank=2, padding=1, pool=2),
                                 QuadraticConv2d(3, 3, 2, rank=2), torch.nn.Flatten()).double(), (7, 2, 4, 4)),
])
def test_per_sample_gradients_of_modules_equal_the_per_sample_loop(make, shape):
    model = make()
    x = torch.randn(*shape, **F64)
    with torch.no_grad():
        target = torch.randn_like(model(x))
    params = {n: p.detach() for n, p in model.named_parameters()}

    def sample_loss(p, xk, tk):
        return torch.nn.functional.mse_loss(functional_call(model, p, (xk.unsqueeze(0),)), tk.unsqueeze(0))

    with no_vmap_fallback():
        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, target)
    expected = _per_sample_loop(model, x, target)
    for n in expected:
        torch.testing.assert_close(per_sample[n], expected[n])


def test_input_jacobian_and_hessian_vector_product_of_a_module():
    model = DeepPolynomialNet([5, 4, 2], ranks=[3, 2], quadratic_norm=False).double()  # one sample: no batch norm
    x = torch.randn(5, **F64)
    torch.testing.assert_close(jacrev(model)(x), torch.autograd.functional.jacobian(model, x))
    v = torch.randn(5, **F64)

    def f(z):
        return model(z).pow(2).sum()
    _, hvp = jvp(grad(f), (x,), (v,))
    torch.testing.assert_close(hvp, torch.autograd.functional.hvp(f, x, v)[1])
