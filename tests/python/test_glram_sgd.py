"""GLRAMSGD: the projected optimizer behind a plain torch.optim training loop."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from quadnet_testing import DEVICES

from quadnet.linalg import glram
from quadnet.nn import QuadraticLayer
from quadnet.ops import canonical_form, canonical_gradient, quadratic_form
from quadnet.optim import GLRAMSGD


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", [None, "rayleigh_ritz", "exact"])
def test_one_step_equals_dense_reference(device, solver):
    """One step is the dense GLRAM of the canonical step with the solver asked for (default:
    rayleigh_ritz); the two solvers take different paths, so each must match its own. A small
    step: on large moves the Rayleigh–Ritz block grows and, in a space this small, its path
    becomes the exact one."""
    torch.manual_seed(0)
    layer = QuadraticLayer(12, 3, rank=2, bias=False).double().to(device)
    W0, S0 = layer.weight.detach().clone(), layer.S.detach().clone()
    x = torch.randn(5, 12, dtype=torch.float64, device=device)
    target = torch.randn(5, 3, dtype=torch.float64, device=device)
    chosen = {} if solver is None else {"solver": solver}
    opt = GLRAMSGD(layer, lr=0.005, tol=0.0, max_iter=3, projection="full", **chosen)
    opt.zero_grad()
    (0.5 * ((layer(x) - target) ** 2).sum()).backward()
    opt.step()
    G = quadratic_form(x, W0, S0) - target
    A = canonical_form(W0, S0) - 0.005 * canonical_gradient(x, G)
    dense = glram(A, 2, init=W0, tol=0.0, max_iter=3, solver=solver or "rayleigh_ritz")
    other = glram(A, 2, init=W0, tol=0.0, max_iter=3, solver="exact" if solver != "exact" else "rayleigh_ritz")
    assert not torch.allclose(canonical_form(dense.weight, dense.S), canonical_form(other.weight, other.S),
                              rtol=0, atol=1e-6), "the solvers must be told apart by this problem"
    assert layer.weight.device == x.device and dense.weight.device == x.device
    torch.testing.assert_close(layer.canonical(), canonical_form(dense.weight, dense.S), rtol=0, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_single_output_uses_exact_projection(device):
    layer = QuadraticLayer(8, 1, rank=2, bias=False).double().to(device)
    x = torch.randn(4, 8, dtype=torch.float64, device=device)
    A_before = layer.canonical().detach()
    opt = GLRAMSGD(layer.parameters(), lr=0.1, projection="full")  # plain parameters: layer found from them
    layer(x).sum().backward()
    opt.step()
    A = A_before - 0.1 * canonical_gradient(x, torch.ones(4, 1, dtype=torch.float64, device=device))
    lam, vec = torch.linalg.eigh(A[0])
    keep = lam.abs().argsort(descending=True)[:2]
    best = (vec[:, keep] * lam[keep]) @ vec[:, keep].T
    torch.testing.assert_close(layer.canonical()[0], best, rtol=0, atol=1e-10)
    assert opt.last_projections[0].iterations == 0


def digits():
    from sklearn.datasets import load_digits
    data = load_digits()
    X = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return X, torch.tensor(data.target)


@pytest.mark.parametrize("projection, lr", [("full", 0.05), ("tangent", 0.02)])
def test_digits_training_lowers_loss_and_mixed_model_updates_all(projection, lr):
    """With "tangent" the projected layer gets the momentum too (so a smaller lr: 0.05 reaches
    0.79 there, 0.02 0.84; "full" at 0.05 reaches 0.84 with momentum on the Linear only)."""
    torch.manual_seed(0)
    X, y = digits()
    model = torch.nn.Sequential(QuadraticLayer(64, 16, rank=8), torch.nn.Linear(16, 10))
    opt = GLRAMSGD(model, lr=lr, momentum=0.9, projection=projection)
    before = copy.deepcopy(model.state_dict())
    first = None
    for epoch in range(5):
        for i in range(0, 1500, 100):
            opt.zero_grad()
            loss = F.cross_entropy(model(X[i:i + 100]), y[i:i + 100])
            loss.backward()
            opt.step()
            first = first if first is not None else loss.item()
    with torch.no_grad():
        final = float(F.cross_entropy(model(X[:1500]), y[:1500]))
        accuracy = float((model(X[1500:]).argmax(1) == y[1500:]).float().mean())
    assert final < 0.5 * first
    assert accuracy > 0.8
    for name, value in model.state_dict().items():
        assert not torch.equal(value, before[name]), name
    # The projected layer stays on the model: orthonormal rows, symmetric S.
    W = model[0].weight
    torch.testing.assert_close(W @ W.T, torch.eye(8), rtol=0, atol=1e-5)
    torch.testing.assert_close(model[0].S, model[0].S.transpose(1, 2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_layer_not_in_graph_is_untouched_and_split_optimizers(device):
    used, unused = QuadraticLayer(6, 3, 2).to(device), QuadraticLayer(6, 3, 2).to(device)
    head = torch.nn.Linear(3, 2).to(device)
    quad_opt = GLRAMSGD(list(used.parameters()) + list(unused.parameters()), lr=0.1)
    head_opt = torch.optim.Adam(head.parameters(), lr=0.01)
    snapshot = copy.deepcopy(unused.state_dict())
    w_before, head_before = used.weight.detach().clone(), head.weight.detach().clone()
    head(used(torch.randn(4, 6, device=device))).sum().backward()
    quad_opt.step()
    head_opt.step()
    assert not torch.equal(used.weight, w_before) and not torch.equal(head.weight, head_before)
    for name, value in unused.state_dict().items():
        assert torch.equal(value, snapshot[name])


@pytest.mark.parametrize("device", DEVICES)
def test_nan_safety_leaves_parameters_and_state_untouched(device):
    model = torch.nn.Sequential(QuadraticLayer(5, 3, 2), torch.nn.Linear(3, 2)).to(device)
    opt = GLRAMSGD(model, lr=0.1, momentum=0.9)
    x = torch.randn(4, 5, device=device)
    model(x).sum().backward()
    opt.step()
    params = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    (model(x).sum() * float("nan")).backward()
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        opt.step()
    for name, value in model.state_dict().items():
        assert torch.equal(value, params[name]), name
    for key, value in opt.state_dict()["state"].items():
        assert torch.equal(value["momentum_buffer"], state["state"][key]["momentum_buffer"])
    # Exploding learning rate on a finite gradient: also refused.
    for g in opt.param_groups:
        g["lr"] = 1e300
    opt.zero_grad()
    (model(x).sum() * 1e30).backward()
    with pytest.raises(RuntimeError):
        opt.step()
    for name, value in model.state_dict().items():
        assert torch.equal(value, params[name]), name


def run(model, opt, batches, scheduler=None):
    for x, y in batches:
        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
        if scheduler is not None:
            scheduler.step()


def test_state_dict_resume_is_bit_identical_with_scheduler_and_closure():
    X, y = digits()
    batches = [(X[i:i + 64], y[i:i + 64]) for i in range(0, 640, 64)]

    def make():
        torch.manual_seed(1)
        model = torch.nn.Sequential(QuadraticLayer(64, 12, 6), torch.nn.Linear(12, 10))
        opt = GLRAMSGD(model, lr=0.05, momentum=0.5, weight_decay=1e-4)
        return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

    model_a, opt_a, sched_a = make()
    run(model_a, opt_a, batches, sched_a)

    model_b, opt_b, sched_b = make()
    run(model_b, opt_b, batches[:5], sched_b)
    saved = copy.deepcopy((model_b.state_dict(), opt_b.state_dict(), sched_b.state_dict()))
    model_c, opt_c, sched_c = make()
    model_c.load_state_dict(saved[0])
    opt_c.load_state_dict(saved[1])
    sched_c.load_state_dict(saved[2])
    run(model_c, opt_c, batches[5:], sched_c)
    assert opt_c.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"] < 0.05
    for name, value in model_a.state_dict().items():
        assert torch.equal(value, model_c.state_dict()[name]), name


@pytest.mark.parametrize("route", ["deepcopy", "pickle", "load_state_dict_assign", "parameter_replacement"])
def test_layers_are_found_from_plain_parameters_after_copies_and_replacement(route):
    """GLRAMSGD(model.parameters()) projects the quadratic layer whatever made its Parameters."""
    model = torch.nn.Sequential(QuadraticLayer(6, 3, 2), torch.nn.Linear(3, 2))
    if route == "deepcopy":
        model = copy.deepcopy(model)
    elif route == "pickle":
        model = pickle.loads(pickle.dumps(model))
    elif route == "load_state_dict_assign":
        fresh = torch.nn.Sequential(QuadraticLayer(6, 3, 2), torch.nn.Linear(3, 2))
        fresh.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
        model = fresh
    else:
        model[0].weight = torch.nn.Parameter(torch.randn(2, 6))
        model[0].S = torch.nn.Parameter(torch.randn(3, 2, 2))
    opt = GLRAMSGD(model.parameters(), lr=0.1)
    model(torch.randn(8, 6)).sum().backward()
    opt.step()
    assert len(opt.last_projections) == 1  # projected, not given plain SGD
    W = model[0].weight
    torch.testing.assert_close(W @ W.T, torch.eye(2), rtol=0, atol=1e-5)


def test_half_a_layer_in_a_group_is_an_error_not_plain_sgd():
    layer = QuadraticLayer(6, 3, 2)
    with pytest.raises(ValueError, match="weight and S must be in the same param group .*only its S"):
        GLRAMSGD([layer.S, layer.bias], lr=0.1)
    with pytest.raises(ValueError, match="weight and S must be in the same param group .*only its weight"):
        GLRAMSGD([{"params": [layer.weight]}, {"params": [layer.S]}], lr=0.1)


def test_a_group_edited_to_hold_half_a_layer_refuses_the_step_and_keeps_the_captures():
    first, second = QuadraticLayer(6, 3, 2), QuadraticLayer(3, 2, 2)
    model = torch.nn.Sequential(first, second)
    opt = GLRAMSGD([{"params": first.parameters()}, {"params": second.parameters()}], lr=0.1)
    model(torch.randn(8, 6)).sum().backward()
    params = opt.param_groups[1]["params"]
    params.pop(next(i for i, p in enumerate(params) if p is second.S))
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="weight and S must be in the same param group .*only its weight"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    params.append(second.S)
    opt.step()
    assert len(opt.last_projections) == 2  # neither layer's captured batch was consumed by the refused step


def test_invalid_arguments():
    layer = QuadraticLayer(4, 2, 2)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        GLRAMSGD(layer, lr=-1.0)
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        GLRAMSGD(layer, lr=0.1, momentum=-0.5)
    # a param group's own options are checked too (the C++ check, shared)
    with pytest.raises(ValueError, match="GLRAMSGD: max_iter must be >= 0, got -2"):
        GLRAMSGD([{"params": layer.parameters(), "max_iter": -2}], lr=0.1)
    opt = GLRAMSGD([layer.weight, layer.S], lr=0.1)
    with pytest.raises(ValueError, match='solver must be "rayleigh_ritz" or "exact", got "qr"'):
        opt.add_param_group({"params": [layer.bias], "solver": "qr"})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("dropped", [("solver",), ("solver", "projection", "dampening", "nesterov", "maximize")])
def test_state_dict_from_before_the_newer_options_loads(dropped):
    """A state dict saved before an option existed loads with that option's default (the first
    release had lr, momentum, weight_decay, tol and max_iter only)."""
    layer = QuadraticLayer(4, 2, 2)
    opt = GLRAMSGD(layer, lr=0.1, momentum=0.5, dampening=0.1, solver="exact", projection="full", maximize=True)
    state = opt.state_dict()
    for group in state["param_groups"]:
        for key in dropped:
            del group[key]
    fresh = GLRAMSGD(layer, lr=0.1, momentum=0.5, dampening=0.1, solver="exact", projection="full", maximize=True)
    fresh.load_state_dict(state)
    defaults = {"solver": "rayleigh_ritz", "projection": "tangent", "dampening": 0.0, "nesterov": False,
                "maximize": False}
    assert {key: fresh.param_groups[0][key] for key in dropped} == {key: defaults[key] for key in dropped}
    layer(torch.randn(3, 4)).sum().backward()
    fresh.step()


def test_stacked_quadratic_layers_each_projected_with_backprop_between():
    X, y = digits()

    class Block(torch.nn.Module):  # quadratic layer + linear skip (docs/polynomial.rst)
        def __init__(self, d, n, r):
            super().__init__()
            self.quad, self.skip = QuadraticLayer(d, n, r), torch.nn.Linear(d, n)

        def forward(self, x):
            return self.quad(x) + self.skip(x)

    model = torch.nn.Sequential(Block(64, 20, 6), Block(20, 10, 4))
    opt = GLRAMSGD(model, lr=0.05)  # degree-4 stack: lr 0.1 already diverges (refused step)
    losses = []
    for i in list(range(0, 1500, 100)) * 3:
        opt.zero_grad()
        loss = F.cross_entropy(model(X[i:i + 100]), y[i:i + 100])
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert len(opt.last_projections) == 2  # both layers projected every step
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3])
    for block in model:
        W = block.quad.weight
        torch.testing.assert_close(W @ W.T, torch.eye(W.shape[0]), rtol=0, atol=1e-5)


def test_unknown_solver_is_rejected():
    layer = QuadraticLayer(6, 2, rank=2)
    with pytest.raises(ValueError, match=r'GLRAMSGD: solver must be "rayleigh_ritz" or "exact", got "eigh"'):
        GLRAMSGD(layer, lr=0.1, solver="eigh")


# ---- everyday PyTorch idioms (docs/glram.rst, "Edited gradients" and "Capture") ----

def _layer_and_batch(seed=0, d=12, n=3, r=2, B=6):
    torch.manual_seed(seed)
    layer = QuadraticLayer(d, n, rank=r, bias=False).double()
    x = torch.randn(B, d, dtype=torch.float64)
    target = torch.randn(B, n, dtype=torch.float64)
    return layer, x, target


def _loss(layer, x, target):
    return 0.5 * ((layer(x) - target) ** 2).sum()


def _reference_step(W0, S0, x, G, lr):
    from quadnet.linalg import projected_step
    return projected_step(W0, S0, x, G, lr)


def test_gradient_clipping_scales_the_projected_step():
    """clip_grad_norm_ scales every .grad by c; the projected step must use c·G (before the fix
    it ignored the clipping: W moved as far as without it)."""
    layer, x, target = _layer_and_batch()
    W0, S0 = layer.weight.detach().clone(), layer.S.detach().clone()
    opt = GLRAMSGD(layer, lr=0.05, projection="full")
    opt.zero_grad()
    _loss(layer, x, target).backward()
    norm = float(torch.nn.utils.clip_grad_norm_(layer.parameters(), max_norm=1e-3))
    opt.step()
    G = quadratic_form(x, W0, S0) - target
    clipped = _reference_step(W0, S0, x, G * (1e-3 / (norm + 1e-6)), 0.05)
    unclipped = _reference_step(W0, S0, x, G, 0.05)
    torch.testing.assert_close(layer.canonical(), canonical_form(clipped.weight, clipped.S), rtol=0, atol=1e-9)
    assert not torch.allclose(layer.canonical(), canonical_form(unclipped.weight, unclipped.S), atol=1e-6)


def test_grad_scaler_scaled_unscaled_and_skipped_steps_match_plain_steps():
    """GradScaler scales the loss (so the captured G too), unscales .grad before step, and skips
    steps with overflow; a run through it must equal the plain run that never saw the bad batch."""
    layer, x, target = _layer_and_batch(1)
    plain = copy.deepcopy(layer)
    opt_plain = GLRAMSGD(plain, lr=0.05, projection="full")
    for _ in range(2):
        opt_plain.zero_grad()
        _loss(plain, x, target).backward()
        opt_plain.step()

    opt = GLRAMSGD(layer, lr=0.05, projection="full")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for bad in (False, True, False):
        opt.zero_grad()
        loss = _loss(layer, x, target) * (float("inf") if bad else 1.0)
        scaler.scale(loss).backward()
        scaler.step(opt)  # skipped when the gradients overflow
        scaler.update()
    assert scaler.get_scale() == 512.0  # one overflow halved the scale
    torch.testing.assert_close(layer.canonical(), plain.canonical(), rtol=0, atol=1e-9)


def test_an_edit_that_is_not_a_scaling_raises_and_changes_nothing():
    layer, x, target = _layer_and_batch(2)
    opt = GLRAMSGD(layer, lr=0.05, projection="full")
    opt.zero_grad()
    _loss(layer, x, target).backward()
    torch.nn.utils.clip_grad_value_(layer.parameters(), clip_value=1e-3)
    before = [p.detach().clone() for p in layer.parameters()]
    with pytest.raises(RuntimeError, match=r"GLRAMSGD: the gradients of a QuadraticLayer's weight and S are not "
                                           r"a multiple of those its captured batch implies"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before))
    assert layer.captured()[0] is not None  # the batch is still there for a corrected step


def test_gradients_zeroed_behind_the_optimizers_back_raise():
    """model.zero_grad() clears .grad but not the optimizer's captured batch: the next step
    would mix batches, so it raises instead."""
    layer, x, target = _layer_and_batch(3)
    opt = GLRAMSGD(layer, lr=0.05, projection="full")
    _loss(layer, x, target).backward()
    layer.zero_grad()
    _loss(layer, torch.randn_like(x), target).backward()
    with pytest.raises(RuntimeError, match="not a multiple"):
        opt.step()


def test_forwards_without_backward_keep_nothing():
    """A validation loop without no_grad: 50 forwards with grad enabled record nothing, and the
    step after one forward+backward uses that batch alone."""
    layer, x, target = _layer_and_batch(4)
    W0, S0 = layer.weight.detach().clone(), layer.S.detach().clone()
    opt = GLRAMSGD(layer, lr=0.05, projection="full")
    for _ in range(50):
        layer(torch.randn_like(x)).sum()
    assert layer.captured() == (None, None) and layer._captured == []
    opt.zero_grad()
    _loss(layer, x, target).backward()
    X, _ = layer.captured()
    assert X.shape == x.shape
    opt.step()
    expected = _reference_step(W0, S0, x, quadratic_form(x, W0, S0) - target, 0.05)
    torch.testing.assert_close(layer.canonical(), canonical_form(expected.weight, expected.S), rtol=0, atol=1e-9)


def test_forward_then_zero_grad_then_backward_still_projects():
    layer, x, target = _layer_and_batch(5)
    W0, S0 = layer.weight.detach().clone(), layer.S.detach().clone()
    opt = GLRAMSGD(layer, lr=0.05, projection="full")
    loss = _loss(layer, x, target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    expected = _reference_step(W0, S0, x, quadratic_form(x, W0, S0) - target, 0.05)
    torch.testing.assert_close(layer.canonical(), canonical_form(expected.weight, expected.S), rtol=0, atol=1e-9)


def test_an_optimizer_that_is_gone_stops_capturing_and_copies_do_not_capture():
    import gc
    layer, x, target = _layer_and_batch(6)
    first, second = GLRAMSGD(layer, lr=0.05, projection="full"), GLRAMSGD(layer, lr=0.05, projection="full")
    twin = copy.deepcopy(layer)
    _loss(twin, x, target).backward()
    assert twin.captured() == (None, None)  # the copy has no optimizer of its own
    del first
    gc.collect()
    _loss(layer, x, target).backward()
    assert layer.captured()[0] is not None  # the second optimizer still uses the captures
    second.zero_grad()
    del second
    gc.collect()
    _loss(layer, x, target).backward()
    assert layer.captured() == (None, None) and layer._capture_users == 0


@pytest.mark.parametrize("solver", ["rayleigh_ritz", "exact"])
def test_first_step_from_zero_is_the_top_of_the_negative_canonical_gradient(solver):
    """The original experiment starts from W = 0, S = 0, a saddle where every gradient of W and S
    is zero (SGD cannot move). The projected step still moves: A = −lr·X^T diag(g) X, and its
    projection — one output — is the best rank-r approximation of A, the r eigenvectors of the
    negative canonical gradient with the largest |λ| (Eckart–Young)."""
    torch.manual_seed(7)
    d, r, B, lr = 10, 3, 40, 0.1
    layer = QuadraticLayer(d, 1, rank=r, bias=False).double()
    with torch.no_grad():
        layer.weight.zero_()
        layer.S.zero_()
    x = torch.randn(B, d, dtype=torch.float64)
    target = torch.randn(B, 1, dtype=torch.float64)
    opt = GLRAMSGD(layer, lr=lr, solver=solver)
    sgd_twin = copy.deepcopy(layer)
    opt.zero_grad()
    _loss(layer, x, target).backward()
    assert float(layer.weight.grad.abs().max()) == 0 and float(layer.S.grad.abs().max()) == 0
    opt.step()
    A = -lr * canonical_gradient(x, -target)  # G = y − target = −target at the zero model
    lam, U = torch.linalg.eigh(A[0])
    keep = lam.abs().argsort(descending=True)[:r]
    best = (U[:, keep] * lam[keep]) @ U[:, keep].T
    torch.testing.assert_close(layer.canonical()[0], best, rtol=0, atol=1e-10)
    assert not torch.allclose(layer.canonical(), sgd_twin.canonical())
