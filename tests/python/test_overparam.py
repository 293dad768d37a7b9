"""Overparameterized linear layers and EndToEndSGD (docs/end_to_end.rst)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from quadnet_testing import DEVICES

import quadnet
from quadnet.nn import OverparamLinear
from quadnet.optim import EndToEndSGD


def reference_direction(W, G, N):
    """Σ_j (W W^T)^{(j−1)/N} G (W^T W)^{(N−j)/N} with numpy eigen-powers; exponent 0 is I."""
    W, G = np.asarray(W, dtype=np.float64), np.asarray(G, dtype=np.float64)

    def power(P, e):
        if e == 0:
            return np.eye(P.shape[0])
        lam, Q = np.linalg.eigh(P)
        lam = np.where(lam > 1e-12 * max(lam.max(), 1e-300), lam, 0.0)  # exact zeros stay zero
        return (Q * lam ** e) @ Q.T
    return sum(power(W @ W.T, (j - 1) / N) @ G @ power(W.T @ W, (N - j) / N) for j in range(1, N + 1))


def balancedness(layer):
    f = [w.detach() for w in layer.factors]
    return max(float((f[j + 1].T @ f[j + 1] - f[j] @ f[j].T).abs().max()) for j in range(len(f) - 1))


# ---- the module ----

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("init", ["balanced", "identity"])
def test_forward_is_linear_in_the_end_to_end_matrix(depth, init, device):
    layer = OverparamLinear(6, 4, depth, width=5, init=init, init_scale=0.5, dtype=torch.float64, device=device)
    W = layer.factors[0]
    for factor in list(layer.factors)[1:]:
        W = factor @ W
    torch.testing.assert_close(layer.end_to_end(), W, rtol=0, atol=0)
    for rows in (1, 3, 200):  # small batches chain the factors, large ones use the product
        x = torch.randn(rows, 6, dtype=torch.float64, device=device)
        torch.testing.assert_close(layer(x), F.linear(x, W, layer.bias), rtol=1e-12, atol=1e-12)
    if init == "identity":
        torch.testing.assert_close(layer.end_to_end(), torch.eye(4, 6, dtype=torch.float64, device=device))


def test_parameters_are_named_like_cpp():
    shapes = {name: tuple(p.shape) for name, p in OverparamLinear(5, 3, 3, width=4).named_parameters()}
    assert shapes == {"factors.0": (4, 5), "factors.1": (4, 4), "factors.2": (3, 4), "bias": (3,)}


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_balanced_inits_are_balanced_and_factor_a_given_matrix_exactly(depth):
    assert balancedness(OverparamLinear(7, 3, depth, init_scale=0.3, dtype=torch.float64)) < 1e-12
    A = torch.randn(3, 7, dtype=torch.float64)
    layer = OverparamLinear(7, 3, depth, width=5, init=A, dtype=torch.float64)
    assert balancedness(layer) < 1e-12
    torch.testing.assert_close(layer.end_to_end(), A, rtol=0, atol=1e-12)
    # rank-deficient matrix in a width below min(in, out): still exact
    low = torch.randn(3, 1, dtype=torch.float64) @ torch.randn(1, 7, dtype=torch.float64)
    torch.testing.assert_close(OverparamLinear(7, 3, depth, width=1, init=low, dtype=torch.float64).end_to_end(),
                               low, rtol=0, atol=1e-12)


def test_collapse_and_overparameterize_preserve_outputs():
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(),
                                torch.nn.Sequential(torch.nn.Linear(6, 5, bias=False), torch.nn.ReLU()),
                                torch.nn.Linear(5, 2)).double()
    x = torch.randn(16, 8, dtype=torch.float64)
    expected = model(x)
    wrapped = quadnet.overparameterize(model, depth=3)
    assert [type(m).__name__ for m in wrapped.modules()].count("OverparamLinear") == 3
    assert not any(isinstance(m, torch.nn.Linear) for m in wrapped.modules())
    torch.testing.assert_close(wrapped(x), expected, rtol=0, atol=1e-12)
    collapsed = quadnet.collapse(wrapped)
    assert [type(m).__name__ for m in collapsed.modules()].count("Linear") == 3
    torch.testing.assert_close(collapsed(x), expected, rtol=0, atol=1e-12)
    single = quadnet.overparameterize(torch.nn.Linear(4, 3).double(), depth=2)
    assert isinstance(single, OverparamLinear)


def test_small_step_gradient_descent_keeps_balance_to_first_order():
    """Gradient flow preserves W_{j+1}^T W_{j+1} − W_j W_j^T; a step of size η changes it by O(η²)."""
    torch.manual_seed(3)
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    drift = []
    for lr in (1e-2, 5e-3):
        torch.manual_seed(4)
        layer = OverparamLinear(6, 3, 3, init_scale=0.5, dtype=torch.float64)
        opt = torch.optim.SGD(layer.parameters(), lr=lr)
        opt.zero_grad()
        F.mse_loss(layer(x), y).backward()
        opt.step()
        drift.append(balancedness(layer))
    assert 3.5 < drift[0] / drift[1] < 4.5, drift  # second order in the step


def test_scripted_layer_matches_eager(tmp_path):
    layer = OverparamLinear(5, 3, 3, width=4)
    scripted = torch.jit.script(layer)
    x = torch.randn(7, 5)
    torch.testing.assert_close(scripted(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=0), "depth must be >= 1"),
    (dict(depth=2, init="identity", width=2), r"needs width >= min\(in_features, out_features\) = 3"),
    (dict(depth=2, init="balanced", width=2), r"needs width >= min\(in_features, out_features\) = 3"),
    (dict(depth=2, init="orthogonal"), 'init must be "balanced" or "identity"'),
    (dict(depth=2, init=torch.randn(4, 5)), r"expected init weight of shape \(out_features=3, in_features=5\)"),
    (dict(depth=2, init=torch.randn(3, 5), width=2), r"width=2 is smaller than the rank of the matrix \(3\)"),
])
def test_module_errors(kwargs, message):
    with pytest.raises((ValueError, RuntimeError), match=message):
        OverparamLinear(5, 3, **kwargs)


# ---- the end-to-end rule ----

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4), (1, 6)])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_end_to_end_direction_matches_the_sum_formula(shape, depth, device):
    W, G = torch.randn(*shape, dtype=torch.float64), torch.randn(*shape, dtype=torch.float64)
    got = quadnet._C.optim.end_to_end_direction(W.to(device), G.to(device), depth)
    assert got.device == W.to(device).device
    np.testing.assert_allclose(got.cpu().numpy(), reference_direction(W, G, depth), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("shape", [(4, 5), (6, 4)])
def test_exponent_zero_is_the_full_identity_for_rank_deficient_weights(shape):
    """(W W^T)^0 = I, not U U^T of a thin SVD: a rank-1 W still passes ∇'s off-range part through."""
    W = torch.randn(shape[0], 1, dtype=torch.float64) @ torch.randn(1, shape[1], dtype=torch.float64)
    G = torch.randn(*shape, dtype=torch.float64)
    for depth in (2, 3):
        got = quadnet._C.optim.end_to_end_direction(W, G, depth)
        np.testing.assert_allclose(got.numpy(), reference_direction(W, G, depth), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_single_output_closed_form_equals_general_formula(depth):
    w, g = torch.randn(1, 7, dtype=torch.float64), torch.randn(1, 7, dtype=torch.float64)
    norm, unit = w.norm(), w / w.norm()
    closed = norm ** (2 - 2 / depth) * (g + (depth - 1) * (g * unit).sum() * unit)
    np.testing.assert_allclose(closed.numpy(), reference_direction(w, g, depth), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(quadnet._C.optim.end_to_end_direction(w, g, depth), closed)
    torch.testing.assert_close(quadnet._C.optim.end_to_end_direction(w[0], g[0], depth), closed[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("depth", [2, 3])
def test_end_to_end_sgd_follows_explicit_depth_n_training(depth, device):
    """EndToEndSGD on W_e tracks gradient descent on the factors of a balanced OverparamLinear."""
    torch.manual_seed(5)
    x = torch.randn(128, 6, dtype=torch.float64)
    y = x @ torch.randn(6, 3, dtype=torch.float64) + 0.1 * torch.randn(128, 3, dtype=torch.float64)
    x, y = x.to(device), y.to(device)
    explicit = OverparamLinear(6, 3, depth, init_scale=0.3, dtype=torch.float64).to(device)
    direct = torch.nn.Linear(6, 3).double().to(device)
    plain = torch.nn.Linear(6, 3).double().to(device)
    with torch.no_grad():
        for m in (direct, plain):
            m.weight.copy_(explicit.end_to_end())
            m.bias.copy_(explicit.bias)
    lr, steps = 2e-3, 300
    opts = [torch.optim.SGD(explicit.parameters(), lr=lr), EndToEndSGD(direct.parameters(), lr=lr, depth=depth),
            torch.optim.SGD(plain.parameters(), lr=lr)]
    for _ in range(steps):
        for model, opt in zip((explicit, direct, plain), opts):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    W_explicit = explicit.end_to_end().detach()
    moved = float((W_explicit - explicit.end_to_end().detach().new_tensor(0)).norm())
    assert moved > 0.5  # the weights did travel
    deviation = float((direct.weight.detach() - W_explicit).norm() / W_explicit.norm())
    assert deviation < 1e-2, deviation
    # ... and the comparison has power: plain SGD (depth 1) goes elsewhere.
    assert float((plain.weight.detach() - W_explicit).norm() / W_explicit.norm()) > 10 * deviation


def test_end_to_end_sgd_api_groups_state_dict_closure_and_errors():
    model = torch.nn.Linear(5, 2)
    opt = EndToEndSGD([{"params": [model.weight]}, {"params": [model.bias], "depth": 1}], lr=0.1, depth=3)
    assert [g["depth"] for g in opt.param_groups] == [3, 1]
    x, y = torch.randn(8, 5), torch.randn(8, 2)

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss
    before = float(closure())
    for _ in range(20):
        opt.step(closure)
    assert float(closure()) < before
    state = opt.state_dict()
    other = EndToEndSGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=1.0, depth=2)
    other.load_state_dict(state)
    assert [(g["lr"], g["depth"]) for g in other.param_groups] == [(0.1, 3), (0.1, 1)]

    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        EndToEndSGD(model.parameters(), lr=0.1, depth=0)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\) is neither a matrix nor a bias"):
        EndToEndSGD([torch.nn.Parameter(torch.randn(2, 3, 4))], lr=0.1, depth=2)
    with pytest.raises(RuntimeError, match="end_to_end_direction: the end-to-end rule applies to matrices"):
        quadnet._C.optim.end_to_end_direction(torch.randn(2, 3, 4), torch.randn(2, 3, 4), 2)


def test_end_to_end_sgd_refuses_a_diverging_step_and_changes_nothing():
    model = torch.nn.Linear(4, 3)
    opt = EndToEndSGD(model.parameters(), lr=1e308, depth=2)
    F.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 3) * 1e3).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        opt.step()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
