"""The tangent-space projected step (quadnet.linalg.tangent_step) and GLRAMSGD's projection="tangent"."""
import copy

import pytest
import torch

from quadnet.linalg import projected_step, tangent_step, tangent_step_unavailable
from quadnet.nn import PolynomialConvBlock, QuadraticConv2d, QuadraticLayer
from quadnet.ops import canonical_form, canonical_gradient, quadratic_form
from quadnet.optim import GLRAMSGD

F64 = torch.float64


def random_layer(d=24, r=3, n=3, B=40, last_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=F64))[0].T.contiguous()
    E = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=F64))[0]
    scales = torch.randn(n, r, generator=g, dtype=F64)
    scales[:, -1] *= last_scale
    S = E @ torch.diag_embed(scales) @ E.T
    X = torch.randn(B, d, generator=g, dtype=F64)
    G = 0.01 * torch.randn(B, n, generator=g, dtype=F64)
    Wp, Sp = W.clone().requires_grad_(), S.clone().requires_grad_()
    (quadratic_form(X, Wp, Sp) * G).sum().backward()
    return W, S, X, G, Wp.grad, Sp.grad


def tangent_map(W, S):
    """(dW, dS) -> ξ = W^T dS W + dW^T S W + W^T S dW, as a matrix (n·d², r·d + n·r²)."""
    r, d = W.shape
    n = S.shape[0]

    def xi(p):
        dW, dS = p[:r * d].view(r, d), p[r * d:].view(n, r, r)
        return (W.T @ dS @ W + dW.T @ S @ W + W.T @ S @ dW).reshape(-1)
    return torch.autograd.functional.jacobian(xi, torch.zeros(r * d + n * r * r, dtype=F64))


def test_the_step_is_the_orthogonal_tangent_projection_to_first_order():
    """Independent oracle: G − ξ is orthogonal to every tangent vector (J^T (G − ξ) = 0). (At
    lr ≲ 1e-7 the move's effect on the GLRAM objective is below its rounding.)"""
    W, S, X, G, Wg, Sg = random_layer()
    lr = 1e-5
    result = tangent_step(W, S, Wg, Sg, lr, tol=0.0, max_iter=200, solver="exact")
    xi = (canonical_form(W, S) - canonical_form(result.weight, result.S)) / lr
    residual = (canonical_gradient(X, G) - xi).reshape(-1)
    J = tangent_map(W, S)
    assert (J.T @ residual).norm() < 1e-4 * (J.T @ canonical_gradient(X, G).reshape(-1)).norm()


def test_agrees_with_the_full_step_to_first_order():
    W, S, X, G, Wg, Sg = random_layer()
    A = canonical_form(W, S)
    diffs = []
    for lr in (0.04, 0.02, 0.01):
        t = tangent_step(W, S, Wg, Sg, lr, tol=0.0, max_iter=500, solver="exact")
        f = projected_step(W, S, X, G, lr, tol=0.0, max_iter=500, solver="exact")
        At, Af = canonical_form(t.weight, t.S), canonical_form(f.weight, f.S)
        diffs.append(float((At - Af).norm() / (Af - A).norm()))
    assert diffs[-1] < 1e-2
    for big, small in zip(diffs, diffs[1:]):  # absolute difference O(lr²): ×4 per halving
        assert 1.7 < big / small < 2.3, diffs


def test_result_is_on_the_model_whatever_the_frame():
    W, S, X, G, Wg, Sg = random_layer(seed=1)
    M = torch.triu(torch.randn(3, 3, dtype=F64)) + 3 * torch.eye(3, dtype=F64)
    W2, S2 = M @ W, torch.linalg.inv(M).T @ S @ torch.linalg.inv(M)
    W2p, S2p = W2.clone().requires_grad_(), S2.clone().requires_grad_()
    (quadratic_form(X, W2p, S2p) * G).sum().backward()
    one = tangent_step(W, S, Wg, Sg, 0.05)
    two = tangent_step(W2, S2, W2p.grad, S2p.grad, 0.05)
    torch.testing.assert_close(canonical_form(one.weight, one.S), canonical_form(two.weight, two.S), rtol=0, atol=1e-10)
    for res in (one, two):
        torch.testing.assert_close(res.weight @ res.weight.T, torch.eye(3, dtype=F64), rtol=0, atol=1e-12)
        assert torch.equal(res.S, res.S.mT)


@pytest.mark.parametrize("dtype, scale", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_a_nearly_unused_direction_gives_a_bounded_step(dtype, scale):
    """One direction of every S_i is `scale` times the others (Σ S_i² ill-conditioned by scale²,
    above the float32 threshold 1.4e-10 for scale 1e-4)."""
    W, S, X, G, Wg, Sg = random_layer(last_scale=scale)
    assert tangent_step_unavailable(W.to(dtype), S.to(dtype)) == ""
    A, Gc = canonical_form(W, S), canonical_gradient(X, G)
    for lr in (1.0, 0.1, 0.01):
        res = tangent_step(W.to(dtype), S.to(dtype), Wg.to(dtype), Sg.to(dtype), lr)
        move = (canonical_form(res.weight.double(), res.S.double()) - A).norm()
        assert move <= 2 * lr * Gc.norm() * (1 + 1e-5), (lr, float(move))


def test_points_off_the_model_are_named():
    W, S, X, G, Wg, Sg = random_layer()
    assert "linearly dependent" in tangent_step_unavailable(torch.zeros_like(W), S)
    assert "S is zero" in tangent_step_unavailable(W, torch.zeros_like(S))
    deficient = torch.zeros_like(S)
    deficient[:, 0, 0] = 1.0
    assert "singular" in tangent_step_unavailable(W, deficient)
    with pytest.raises(RuntimeError, match="needs the full projected step"):
        tangent_step(W, deficient, Wg, Sg, 0.1)
    with pytest.raises(RuntimeError, match="weight_grad"):
        tangent_step(W, S, Wg.T, Sg, 0.1)


def _train(model, opt, x, t, steps):
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - t) ** 2).mean().backward()
        opt.step()


def test_glram_sgd_default_is_the_tangent_step_and_needs_no_batch():
    torch.manual_seed(0)
    layer = QuadraticLayer(12, 3, rank=4).double()
    opt = GLRAMSGD(layer, lr=0.05)
    assert layer._capture_users == 0  # a fresh random init is on the model: no capture
    x, t = torch.randn(16, 12, dtype=F64), torch.randn(16, 3, dtype=F64)
    opt.zero_grad()
    ((layer(x) - t) ** 2).mean().backward()
    W0, S0 = layer.weight.detach().clone(), layer.S.detach().clone()
    expected = tangent_step(W0, S0, layer.weight.grad, layer.S.grad, 0.05)
    opt.step()
    torch.testing.assert_close(layer.weight.detach(), expected.weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.S.detach(), expected.S, rtol=0, atol=1e-12)


def test_zero_init_takes_the_full_step_then_stops_capturing():
    torch.manual_seed(0)
    layer = QuadraticLayer(10, 2, rank=3)
    with torch.no_grad():
        layer.weight.zero_()
        layer.S.zero_()
    opt = GLRAMSGD(layer, lr=0.1)
    assert layer._capture_users == 1
    _train(layer, opt, torch.randn(32, 10), torch.ones(32, 2), 1)
    assert tangent_step_unavailable(layer.weight, layer.S) == ""
    assert layer._capture_users == 0
    _train(layer, opt, torch.randn(32, 10), torch.ones(32, 2), 2)  # tangent steps from here


def test_any_gradient_edit_acts_as_on_a_plain_parameter():
    """clip_grad_value_ (refused by the full step) is just part of the gradient here."""
    torch.manual_seed(0)
    layer = QuadraticLayer(12, 3, rank=4).double()
    opt = GLRAMSGD(layer, lr=0.05)
    x, t = torch.randn(16, 12, dtype=F64), torch.randn(16, 3, dtype=F64)
    opt.zero_grad()
    ((layer(x) - t) ** 2).mean().backward()
    torch.nn.utils.clip_grad_value_(layer.parameters(), 0.01)
    expected = tangent_step(layer.weight.detach(), layer.S.detach(), layer.weight.grad, layer.S.grad, 0.05)
    opt.step()
    torch.testing.assert_close(layer.weight.detach(), expected.weight, rtol=0, atol=1e-12)


def test_momentum_lives_in_the_tangent_space_and_resumes_identically():
    torch.manual_seed(0)
    x, t = torch.randn(16, 12, dtype=F64), torch.randn(16, 3, dtype=F64)
    base = QuadraticLayer(12, 3, rank=4, bias=False).double()  # only the projected layer has momentum
    plain, heavy = copy.deepcopy(base), copy.deepcopy(base)
    opt_plain, opt_heavy = GLRAMSGD(plain, lr=0.02), GLRAMSGD(heavy, lr=0.02, momentum=0.9, nesterov=True)
    _train(plain, opt_plain, x, t, 3)
    _train(heavy, opt_heavy, x, t, 3)
    assert not torch.allclose(plain.weight, heavy.weight, atol=1e-6)
    dW = opt_heavy.state[heavy.weight]["momentum_buffer"]
    dS = opt_heavy.state[heavy.S]["momentum_buffer"]
    assert dW.shape == heavy.weight.shape and dS.shape == heavy.S.shape
    torch.testing.assert_close(dW @ heavy.weight.detach().T, torch.zeros(4, 4, dtype=F64), rtol=0, atol=1e-10)
    resumed = copy.deepcopy(heavy)
    opt_resumed = GLRAMSGD(resumed, lr=0.5)
    opt_resumed.load_state_dict(copy.deepcopy(opt_heavy.state_dict()))
    _train(heavy, opt_heavy, x, t, 2)
    _train(resumed, opt_resumed, x, t, 2)
    assert torch.equal(heavy.weight, resumed.weight) and torch.equal(heavy.S, resumed.S)


def test_options_are_checked():
    layer = QuadraticLayer(6, 2, rank=2)
    with pytest.raises(ValueError, match="nesterov"):
        GLRAMSGD(layer, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="projection"):
        GLRAMSGD(layer, lr=0.1, projection="tangential")
    with pytest.raises(ValueError, match="dampening"):
        GLRAMSGD(layer, lr=0.1, momentum=0.9, dampening=-1.0)


def test_convolutions_take_the_tangent_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(PolynomialConvBlock(1, 4, 3, rank=3, padding=1), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    x = torch.randn(8, 1, 8, 8)
    model(x)
    opt = GLRAMSGD(model, lr=0.05, momentum=0.9)
    conv = next(m for m in model.modules() if isinstance(m, QuadraticConv2d))
    before = conv.weight.detach().clone()
    _train(model, opt, x, torch.randn(8, 2), 3)
    W = conv.weight.detach().flatten(1)
    assert not torch.equal(conv.weight, before)
    torch.testing.assert_close(W @ W.T, torch.eye(3), rtol=0, atol=1e-5)
    assert opt.state[conv.weight]["momentum_buffer"].shape == conv.weight.shape
    with pytest.raises(ValueError, match="not implemented for convolutions"):
        GLRAMSGD(model, lr=0.05, projection="full")
