"""The idioms PyTorch users bring to an optimizer: every route a layer's parameters can take to
GLRAMSGD ends in a projection or a clear error (never silent plain SGD), optimizer copies,
foreign state dicts, gradients from more than one backward pass, construction-time errors."""
import copy
import pickle

import pytest
import torch

from quadnet.linalg import projected_step, tangent_step
from quadnet.nn import DiagonalQuadraticLayer, QuadraticConv2d, QuadraticLayer
from quadnet.ops import canonical_form, quadratic_form
from quadnet.optim import GLRAMSGD, EndToEndSGD


def _model():
    return torch.nn.Sequential(QuadraticLayer(6, 3, 2), torch.nn.Linear(3, 2))


def _meta_then_to_empty():
    with torch.device("meta"):
        model = _model()
    model.to_empty(device="cpu")
    model[0].reset_parameters()
    model[1].reset_parameters()
    return model


def _parameters_dict_overwritten():
    model = _model()  # bypasses Module.__setattr__, as some loaders and wrappers do
    model[0]._parameters["weight"] = torch.nn.Parameter(torch.randn(2, 6))
    model[0]._parameters["S"] = torch.nn.Parameter(torch.randn(3, 2, 2))
    return model


def _to_with_swapped_tensors():
    model = _model()
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        return model.to(torch.float64).to(torch.float32)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


ROUTES = {
    "constructed": _model,
    "deepcopy": lambda: copy.deepcopy(_model()),
    "pickle": lambda: pickle.loads(pickle.dumps(_model())),
    "load_state_dict_assign": lambda: _assigned(_model()),
    "parameter_assigned": lambda: _assigned_parameters(_model()),
    "meta_to_empty": _meta_then_to_empty,
    "parameters_dict_overwritten": _parameters_dict_overwritten,
    "module_to": lambda: _model().to(torch.float64).to(torch.float32),
    "module_to_swapped": _to_with_swapped_tensors,
}


def _assigned(model):
    fresh = _model()
    fresh.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    return fresh


def _assigned_parameters(model):
    model[0].weight = torch.nn.Parameter(torch.randn(2, 6))
    model[0].S = torch.nn.Parameter(torch.randn(3, 2, 2))
    return model


HANDOVERS = {
    "module": lambda model: GLRAMSGD(model, lr=0.1),
    "parameters": lambda model: GLRAMSGD(model.parameters(), lr=0.1),
    "param_groups": lambda model: GLRAMSGD([{"params": model[0].parameters()},
                                            {"params": model[1].parameters(), "lr": 0.01}], lr=0.1),
    "add_param_group": lambda model: _added_later(model),
}


def _added_later(model):
    opt = GLRAMSGD(model[1].parameters(), lr=0.1)
    opt.add_param_group({"params": list(model[0].parameters())})
    return opt


@pytest.mark.parametrize("handover", HANDOVERS)
@pytest.mark.parametrize("route", ROUTES)
def test_every_route_and_handover_projects_the_layer(route, handover):
    """The layer is found by identity among the live layers, whatever made its Parameters."""
    model = ROUTES[route]()
    opt = HANDOVERS[handover](model)
    model(torch.randn(8, 6)).sum().backward()
    W0, S0, grads = model[0].weight.detach().clone(), model[0].S.detach().clone(), None
    grads = (model[0].weight.grad.clone(), model[0].S.grad.clone())
    opt.step()
    assert len(opt.last_projections) == 1  # projected, not given plain SGD
    expected = tangent_step(W0, S0, *grads, lr=0.1)
    torch.testing.assert_close(model[0].canonical(), canonical_form(expected.weight, expected.S), rtol=0, atol=1e-6)


def test_half_a_layer_added_later_is_refused_and_not_added():
    model = _model()
    opt = GLRAMSGD(model[1].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="weight and S must be in the same param group .*only its weight"):
        opt.add_param_group({"params": [model[0].weight]})
    assert len(opt.param_groups) == 1 and opt._layers == []
    conv = QuadraticConv2d(2, 3, 3, rank=2)
    with pytest.raises(ValueError, match="QuadraticConv2d.*projection='full'"):
        opt.add_param_group({"params": conv.parameters(), "projection": "full"})
    assert len(opt.param_groups) == 1


def test_a_layer_whose_parameters_were_replaced_after_construction_is_refused():
    """The optimizer holds the old weight and S; the layer has new ones: the old S is now plain
    and the layer's new weight is in no group — half the layer would get plain SGD."""
    model = _model()
    opt = GLRAMSGD(model.parameters(), lr=0.1)
    model[0].S = torch.nn.Parameter(model[0].S.detach().clone())
    model(torch.randn(8, 6)).sum().backward()
    weights = [p.detach().clone() for p in opt.param_groups[0]["params"]]
    with pytest.raises(ValueError, match="weight and S must be in the same param group"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(weights, opt.param_groups[0]["params"]))


def test_two_tangent_optimizers_over_one_layer_both_project():
    model = _model()
    first, second = GLRAMSGD(model, lr=0.1), GLRAMSGD(model, lr=0.1)
    x = torch.randn(8, 6)
    for opt in (first, second):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        assert len(opt.last_projections) == 1


def test_a_second_full_optimizer_stepping_the_same_batch_refuses_clearly():
    """The first full step consumes the captured batch; the second cannot step the layer and
    says why instead of skipping it."""
    model = _model()
    first = GLRAMSGD(model, lr=0.1, projection="full")
    second = GLRAMSGD(model, lr=0.1, projection="full")
    model(torch.randn(8, 6)).sum().backward()
    first.step()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="has gradients but no captured batch.*another optimizer"):
        second.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    second.zero_grad()
    model(torch.randn(8, 6)).sum().backward()
    second.step()  # with a batch of its own, it projects
    assert len(second.last_projections) == 1


# ---- optimizer copies and state dicts ----

def _train(model, opt, batches):
    for x in batches:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _copy_continues_identically(model, opt, copier, features):
    """Trains 3 steps, copies (model, opt) together, trains both 3 more on the same batches and
    checks they stay bit-identical; returns the copied optimizer."""
    batches = [torch.randn(8, features) for _ in range(6)]
    _train(model, opt, batches[:3])
    pair = (model, opt)
    twin_model, twin_opt = copy.deepcopy(pair) if copier == "deepcopy" else pickle.loads(pickle.dumps(pair))
    _train(model, opt, batches[3:])
    _train(twin_model, twin_opt, batches[3:])
    for a, b in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(a, b)
    return twin_opt


@pytest.mark.parametrize("projection", ["tangent", "full"])
@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_a_copy_of_model_and_optimizer_continues_identically(copier, projection):
    model = _model()
    twin_opt = _copy_continues_identically(model, GLRAMSGD(model, lr=0.05, momentum=0.9, projection=projection),
                                           copier, 6)
    assert len(twin_opt.last_projections) == 1


def test_an_optimizer_copied_alone_projects_its_own_copies():
    """copy.deepcopy(opt) copies its parameters; the layers come along, so the copies are still
    projected (not plain SGD on orphaned copies), and the original model is untouched."""
    model = _model()
    opt = GLRAMSGD(model, lr=0.1)
    twin = copy.deepcopy(opt)
    before = [p.detach().clone() for p in model.parameters()]
    layer = twin._layers[0]
    layer(torch.randn(8, 6)).sum().backward()
    twin.step()
    assert len(twin.last_projections) == 1
    torch.testing.assert_close(layer.weight @ layer.weight.T, torch.eye(2), rtol=0, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_end_to_end_sgd_copy_continues_identically(copier):
    model = torch.nn.Linear(5, 3)
    _copy_continues_identically(model, EndToEndSGD(model.parameters(), lr=0.05, depth=3), copier, 5)


@pytest.mark.parametrize("other", ["SGD", "Adam"])
def test_another_optimizers_state_dict_is_a_value_error_that_changes_nothing(other):
    model = _model()
    opt = GLRAMSGD(model, lr=0.1, momentum=0.9)
    _train(model, opt, [torch.randn(8, 6)])
    state = copy.deepcopy(opt.state_dict())
    foreign = getattr(torch.optim, other)(model.parameters(), lr=0.1).state_dict()
    with pytest.raises(ValueError, match="param group 0 has no .*tol.*not a GLRAMSGD state dict"):
        opt.load_state_dict(foreign)
    after = opt.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for key, value in state["state"].items():
        assert torch.equal(after["state"][key]["momentum_buffer"], value["momentum_buffer"])


def test_a_state_dict_with_an_invalid_option_is_refused_before_loading():
    model = _model()
    opt = GLRAMSGD(model, lr=0.1)
    state = copy.deepcopy(opt.state_dict())
    state["param_groups"][0]["projection"] = "diagonal"
    with pytest.raises(ValueError, match='projection must be "tangent" or "full"'):
        opt.load_state_dict(state)
    assert opt.param_groups[0]["projection"] == "tangent"


# ---- gradients from more than one backward pass ----

def _full_reference(W, S, x, G, lr):
    return projected_step(W, S, x, G, lr)


def test_an_autograd_grad_pass_over_the_inputs_is_not_captured():
    """Adversarial training: a first pass torch.autograd.grad(loss, x) leaves .grad alone, so its
    batch must not enter the full step; the step is that of the perturbed batch alone."""
    layer = QuadraticLayer(6, 3, 2, bias=False).double()
    opt = GLRAMSGD(layer, lr=0.05, projection="full")
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    grad_x, = torch.autograd.grad(layer(x).pow(2).sum(), x)
    x_adv = (x + 0.1 * grad_x.sign()).detach()
    W0, S0 = layer.weight.detach().clone(), layer.S.detach().clone()
    y = layer(x_adv)
    y.pow(2).sum().backward()
    opt.step()
    expected = _full_reference(W0, S0, x_adv, 2 * quadratic_form(x_adv, W0, S0), 0.05)
    torch.testing.assert_close(layer.canonical(), canonical_form(expected.weight, expected.S), rtol=0, atol=1e-9)


def test_backward_with_inputs_excluding_the_layer_is_not_captured():
    """backward(inputs=[x]) passes through the layer's output but leaves its .grad alone."""
    model = torch.nn.Sequential(QuadraticLayer(6, 3, 2), torch.nn.Linear(3, 2))
    opt = GLRAMSGD(model, lr=0.05, projection="full")
    x = torch.randn(8, 6, requires_grad=True)
    model(x).sum().backward(inputs=[x])
    assert x.grad is not None and model[0].captured() == (None, None)
    opt.step()  # the layer has no gradient: untouched, no error
    assert opt.last_projections == []


def _penalised_loss(layer, x):
    x = x.clone().requires_grad_(True)
    y = layer(x).pow(2).sum()
    grad_x, = torch.autograd.grad(y, x, create_graph=True)
    return y + grad_x.pow(2).sum()


def test_a_gradient_penalty_with_the_full_step_names_create_graph():
    layer = QuadraticLayer(6, 3, 2, bias=False)
    opt = GLRAMSGD(layer, lr=0.05, projection="full")
    _penalised_loss(layer, torch.randn(8, 6)).backward()
    before = [p.detach().clone() for p in layer.parameters()]
    with pytest.raises(RuntimeError, match="create_graph=True.*second derivatives.*projection=\"tangent\""):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))


def test_a_gradient_penalty_with_the_tangent_step_steps_along_grad():
    layer = QuadraticLayer(6, 3, 2, bias=False)
    opt = GLRAMSGD(layer, lr=0.05)
    _penalised_loss(layer, torch.randn(8, 6)).backward()
    expected = tangent_step(layer.weight.detach(), layer.S.detach(), layer.weight.grad, layer.S.grad, lr=0.05)
    opt.step()
    torch.testing.assert_close(layer.canonical(), canonical_form(expected.weight, expected.S), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_takes_the_full_step(dtype):
    """bfloat16/float16 gradients are accurate to a few eps: not an "edited gradients" error."""
    torch.manual_seed(1)
    layer = QuadraticLayer(32, 4, 5, bias=False).to(dtype)
    opt = GLRAMSGD(layer, lr=0.01, projection="full")
    x = torch.randn(64, 32).to(dtype)
    W0, S0 = layer.weight.detach().double(), layer.S.detach().double()
    layer(x).float().pow(2).mean().backward()
    opt.step()
    G = 2 * quadratic_form(x.double(), W0, S0) / (64 * 4)
    expected = projected_step(W0, S0, x.double(), G, 0.01)
    reference = canonical_form(expected.weight, expected.S)
    error = (layer.canonical().double() - reference).norm() / reference.norm()
    assert error < 0.05


def test_an_edit_in_half_precision_is_still_caught():
    layer = QuadraticLayer(32, 4, 5, bias=False).to(torch.bfloat16)
    opt = GLRAMSGD(layer, lr=0.01, projection="full")
    layer(torch.randn(64, 32).to(torch.bfloat16)).float().pow(2).mean().backward()
    torch.nn.utils.clip_grad_value_(layer.parameters(), 0.3 * layer.S.grad.abs().max().item())
    with pytest.raises(RuntimeError, match="not a multiple"):
        opt.step()


# ---- construction-time errors ----

@pytest.mark.parametrize("build, error, message", [
    (lambda: QuadraticLayer(6, 3, rank=2.5), TypeError, "QuadraticLayer: rank must be an int, got 2.5"),
    (lambda: QuadraticLayer(6.0, 3, rank=2), TypeError, "QuadraticLayer: in_features must be an int"),
    (lambda: QuadraticLayer(6, 3, rank=0), ValueError, "must be positive"),
    (lambda: QuadraticLayer(2, 3, rank=4), ValueError,
     r"QuadraticLayer: rank must be at most in_features \(2\), got rank=4"),
    (lambda: DiagonalQuadraticLayer(6, 3, rank="2"), TypeError, "DiagonalQuadraticLayer: rank must be an int"),
    (lambda: QuadraticConv2d(2, 3, 3, rank=1.5), TypeError, "QuadraticConv2d: rank must be an int"),
    (lambda: QuadraticConv2d(1, 3, 2, rank=5), ValueError, r"rank must be at most the patch size .*\(4\), got rank=5"),
    (lambda: QuadraticConv2d(2, 3, 3, rank=2, stride=0), ValueError, "stride and dilation must be positive"),
])
def test_construction_errors_name_the_argument(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_ranks_a_diagonal_layer_may_exceed_its_inputs():
    """The diagonal layers hold r(r+1)/2 neurons after to_diagonal: no rank bound there."""
    assert DiagonalQuadraticLayer(2, 3, rank=10).weight.shape == (10, 2)


# ---- torch.optim's conventions: maximize, tensor lr, in-place updates ----

def _mixed_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(QuadraticLayer(6, 3, 2), torch.nn.Linear(3, 2))


def _train_on(model, opt, batches, maximize=False):
    """Steps opt on the mean square of model's outputs, negated to maximize; returns model."""
    for x in batches:
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        (-loss if maximize else loss).backward()
        opt.step()
    return model


@pytest.mark.parametrize("projection", ["tangent", "full"])
def test_maximize_is_minimizing_the_negated_objective(projection):
    batches = [torch.randn(8, 6) for _ in range(4)]
    runs = []
    for maximize in (False, True):
        model = _mixed_model()
        opt = GLRAMSGD(model, lr=0.05, momentum=0.9, weight_decay=0.01, projection=projection, maximize=maximize)
        runs.append(_train_on(model, opt, batches, maximize))
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("options", [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.1),
                                     dict(momentum=0.5, dampening=0.3, maximize=True)])
def test_plain_parameters_follow_torch_sgd_bit_for_bit_in_place(options):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2))
    twin = copy.deepcopy(model)
    ours, theirs = GLRAMSGD(model, lr=0.1, **options), torch.optim.SGD(twin.parameters(), lr=0.1, **options)
    pointers = [p.data_ptr() for p in model.parameters()]
    buffers = None
    for _ in range(3):
        x = torch.randn(8, 5)
        for m, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.step()
        if options.get("momentum"):  # the buffers are updated in place too, as torch.optim.SGD's
            current = [ours.state[p]["momentum_buffer"] for p in model.parameters()]
            assert buffers is None or all(a is b for a, b in zip(current, buffers))
            buffers = current
    assert [p.data_ptr() for p in model.parameters()] == pointers
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_a_tensor_lr_and_a_scheduler_that_updates_it():
    """A tensor lr steps as the float it holds (float32 0.1 is not 0.1: both runs use its value), and
    the scheduler's updates reach the step."""
    runs = []
    for lr in (float(torch.tensor(0.1)), torch.tensor(0.1)):
        model = _mixed_model()
        opt = GLRAMSGD(model, lr=lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        for x in [torch.randn(8, 6) for _ in range(3)]:
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            scheduler.step()
        runs.append(model)
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="a tensor lr must have one element"):
        GLRAMSGD(_mixed_model(), lr=torch.tensor([0.1, 0.2]))


def test_an_update_that_overflows_near_the_dtype_limit_is_refused_and_changes_nothing():
    """The finiteness bound is inconclusive near float32's largest value: the exact check decides."""
    param = torch.nn.Parameter(torch.full((3,), 3e38))
    opt = GLRAMSGD([param], lr=1e-3)
    param.grad = torch.ones(3)
    opt.step()  # 3e38 − 1e-3: inconclusive bound, exact check passes
    assert torch.isfinite(param).all()
    param.grad = torch.full((3,), -1e38)
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        GLRAMSGD([param], lr=10.0).step()  # 3e38 + 1e39 overflows
    assert torch.equal(param.detach(), torch.full((3,), 3e38))


def test_end_to_end_sgd_maximize_and_tensor_lr():
    torch.manual_seed(0)
    batches = [torch.randn(8, 5) for _ in range(3)]
    runs = []
    for maximize, lr in ((False, 0.05), (True, torch.tensor(0.05))):
        torch.manual_seed(1)
        model = torch.nn.Linear(5, 3)
        opt = EndToEndSGD(model.parameters(), lr=lr, depth=3, maximize=maximize)
        runs.append(_train_on(model, opt, batches, maximize))
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_python_defaults_are_the_cpp_ones():
    """Every option default is defined once, in C++ (GLRAMOptions, GLRAMSGDOptions,
    EndToEndSGDOptions), and the Python signatures read it from the extension."""
    import inspect

    from quadnet import _C, linalg
    cpp_sgd, cpp_glram, cpp_e2e = _C.optim.GLRAMSGD_DEFAULTS, _C.linalg.DEFAULTS, _C.optim.END_TO_END_SGD_DEFAULTS
    assert cpp_glram == {"tol": 1e-6, "max_iter": 100, "solver": "rayleigh_ritz"}
    assert cpp_sgd["projection"] == "tangent" and all(cpp_sgd[k] == v for k, v in cpp_glram.items())
    signature = inspect.signature(GLRAMSGD.__init__).parameters
    for name, value in cpp_sgd.items():
        assert signature[name].default == value, name
    for fn in (linalg.glram, linalg.projected_step, linalg.tangent_step):
        parameters = inspect.signature(fn).parameters
        for name, value in cpp_glram.items():
            assert parameters[name].default == value, (fn.__name__, name)
    parameters = inspect.signature(EndToEndSGD.__init__).parameters
    assert {k: parameters[k].default for k in cpp_e2e} == cpp_e2e
