"""PyTorch 2.x integration of the ops: opcheck (schema, autograd registration, FakeTensor,
AOT dispatch with dynamic shapes), torch.compile(fullgraph=True) against eager, torch.export."""
import math

import pytest
import torch
from quadnet_testing import (
    CONV_CASES,
    DEVICES,
    FEATURE_CASES,
    FORM_CASES,
    conv_shapes,
    feature_shapes,
    form_shapes,
    pair,
)
from torch.library import opcheck

from quadnet.nn import DeepPolynomialNet, QuadraticLayer

DTYPES = [torch.float32, torch.float64]


def tensors(*shapes, device, dtype, requires_grad):
    return [torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad) for s in shapes]


def form_helper_shapes(batch, d, r, n):
    """_quadratic_form_forward's (x (B, d), weight, S) and _quadratic_form_backward's
    (grad (B, n), H (B, r), Z (B, n, r)) for a quadratic_form case."""
    B = math.prod(batch)
    return [(B, d), (r, d), (n, r, r)], [(B, n), (B, r), (B, n, r)]


def conv_sample(shape, rank, out, kernel, stride, padding, dilation):
    return conv_shapes(shape, rank, out, kernel), tuple(list(pair(v)) for v in (stride, padding, dilation))


# op -> argument shapes (and the op's other arguments, where it has some): each is checked with and
# without inputs that need gradients. The ops the functional tests cover get those tests' own cases
# (quadnet_testing), plus sizes that take the kernels' other routes (many outputs; several tiles of the
# tiled CPU kernels).
OP_SAMPLES = {
    "quadratic_form": [form_shapes(*case) for case in FORM_CASES] + [[(2, 3, 6), (4, 6), (40, 4, 4)]],
    "_quadratic_form_forward": [form_helper_shapes(*case)[0] for case in FORM_CASES],
    "_quadratic_form_backward": [form_helper_shapes(*case)[1] for case in FORM_CASES] + [[(7, 40), (7, 4), (7, 40, 4)]],
    "diagonal_quadratic_form": [[(5, 4), (3, 4), (2, 3)], [(2, 3, 6), (4, 6), (5, 4)]],
    "canonical_form": [[(3, 4), (2, 3, 3)]],
    "diagonal_canonical_form": [[(3, 4), (2, 3)]],
    "canonical_gradient": [[(6, 3), (6, 5)], [(6, 5), (6, 3)]],
    "quadratic_features": [feature_shapes(*case) for case in FEATURE_CASES] + [[(300, 7), (5, 7, 7)]],
    "_quadratic_features_backward": [[(math.prod(lead), n), (math.prod(lead), r), (n, r, r)]
                                     for lead, r, n in FEATURE_CASES] + [[(300, 40), (300, 6), (40, 6, 6)]],
    "quadratic_conv2d": [conv_sample(*case) for case in CONV_CASES],
    "diagonal_quadratic_conv2d": [([(2, 3, 6, 5), (4, 3, 3, 3), (5, 4)], ([2, 2], [1, 0], [1, 1]))],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OP_SAMPLES))
def test_opcheck(name, dtype, device):
    op = getattr(torch.ops.quadnet, name).default
    for sample in OP_SAMPLES[name]:
        shapes, others = sample if isinstance(sample, tuple) else (sample, ())
        for requires_grad in (False, True):
            opcheck(op, (*tensors(*shapes, device=device, dtype=dtype, requires_grad=requires_grad), *others))


def test_every_registered_op_is_opchecked():
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("quadnet::")}
    assert registered == set(OP_SAMPLES)


def test_every_op_is_tagged_pt2_compliant():
    """The tag says the ops follow PT2's rules (what opcheck above tests), as torchvision's do."""
    for name in OP_SAMPLES:
        assert torch.Tag.pt2_compliant_tag in getattr(torch.ops.quadnet, name).default.tags, name


# The kernels each op has, by dispatch key (the files of csrc/quadnet/ops, one per key): the ops with
# kernels of their own have an explicit composite, Meta and Autograd kernel; quadratic_features and its
# backward also a CPU kernel; the others are implicit compositions. Every op runs its composition under
# vmap; the public ops have Autocast kernels.
OWN_KERNELS = {"quadratic_form", "_quadratic_form_forward", "_quadratic_form_backward", "quadratic_features",
               "_quadratic_features_backward"}
HELPER_OPS = {"_quadratic_form_forward", "_quadratic_form_backward", "_quadratic_features_backward"}
KEYS = ("CompositeExplicitAutograd", "CompositeImplicitAutograd", "CPU", "CUDA", "Meta", "Autograd", "AutocastCPU",
        "AutocastCUDA", "FuncTorchBatched")


def expected_keys(name):
    keys = {"FuncTorchBatched"}
    keys |= {"CompositeExplicitAutograd", "Meta", "Autograd"} if name in OWN_KERNELS else {"CompositeImplicitAutograd"}
    if name in ("quadratic_features", "_quadratic_features_backward"):
        keys.add("CPU")
    if name not in HELPER_OPS:
        keys |= {"AutocastCPU", "AutocastCUDA"}
    return keys


@pytest.mark.parametrize("name", sorted(OP_SAMPLES))
def test_each_op_has_the_kernels_of_its_dispatch_keys(name):
    has = {key for key in KEYS if torch._C._dispatch_has_kernel_for_dispatch_key(f"quadnet::{name}", key)}
    assert has == expected_keys(name)


def test_meta_kernels_give_shapes_and_check_arguments():
    x, w, S = (torch.empty(*s, device="meta") for s in [(2, 5, 4), (3, 4), (6, 3, 3)])
    assert torch.ops.quadnet.quadratic_form(x, w, S).shape == (2, 5, 6)
    with torch.inference_mode():  # no autograd key: quadratic_form's own Meta kernel, not its autograd node
        assert torch.ops.quadnet.quadratic_form(x, w, S).shape == (2, 5, 6)
    y, h, z = torch.ops.quadnet._quadratic_form_forward(x.reshape(10, 4), w, S)
    assert (y.shape, h.shape, z.shape) == ((10, 6), (10, 3), (10, 6, 3))
    with pytest.raises(RuntimeError, match=r"quadratic_form: x has 4 features .* weight of shape \[3, 5\]"):
        torch.ops.quadnet.quadratic_form(x, torch.empty(3, 5, device="meta"), S)


def check_compiled_matches_eager(model, x, dynamic=None):
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    params = [p for p in model.parameters()]
    y_eager = model(x)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), params)
    y = compiled(x)
    grads = torch.autograd.grad(y.square().sum(), params)
    torch.testing.assert_close(y, y_eager)
    for g, g_eager in zip(grads, grads_eager):
        torch.testing.assert_close(g, g_eager)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("device", DEVICES)
def test_compile_quadratic_layer(device, fresh_dynamo):
    layer = QuadraticLayer(12, 5, rank=4, device=device, dtype=torch.float64)
    check_compiled_matches_eager(layer, torch.randn(3, 7, 12, device=device, dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_sequential_with_dynamic_batch(device, fresh_dynamo):
    model = torch.nn.Sequential(torch.nn.Linear(10, 8), QuadraticLayer(8, 40, rank=3), torch.nn.Tanh(),
                                torch.nn.Linear(40, 2)).to(device=device, dtype=torch.float64)
    for batch in (16, 9):  # a symbolic batch size: the Meta kernels see SymInts
        check_compiled_matches_eager(model, torch.randn(batch, 10, device=device, dtype=torch.float64),
                                     dynamic=True)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_deep_polynomial_net(device, fresh_dynamo):
    net = DeepPolynomialNet([20, 12, 6, 3], ranks=[5, 4, 2], norm=True).to(device=device, dtype=torch.float64)
    check_compiled_matches_eager(net, torch.randn(32, 20, device=device, dtype=torch.float64))
    for batch in (16, 9):  # the default quadratic_norm and the output norm with a symbolic batch size
        check_compiled_matches_eager(net, torch.randn(batch, 20, device=device, dtype=torch.float64), dynamic=True)
    net.eval()
    x = torch.randn(8, 20, device=device, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(net, fullgraph=True)(x), net(x))


def test_compiled_graph_calls_the_ops(fresh_dynamo):
    """The joint graph holds quadnet's forward and backward ops, not their decomposition."""
    seen = []

    def backend(gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._functorch.aot_autograd import aot_module_simplified

        def record(graph_module, _):
            seen.extend(str(n.target) for n in graph_module.graph.nodes if n.op == "call_function")
            return make_boxed_func(graph_module.forward)
        return aot_module_simplified(gm, example_inputs, fw_compiler=record, bw_compiler=record)

    layer = QuadraticLayer(6, 3, rank=2)
    torch.compile(layer, backend=backend, fullgraph=True)(torch.randn(4, 6)).sum().backward()
    assert "quadnet._quadratic_form_forward.default" in seen
    assert "quadnet._quadratic_form_backward.default" in seen


INDUCTOR_IN_CI_SCRIPT = """
import torch{first}
import quadnet
from quadnet.nn import QuadraticLayer
model = torch.nn.Sequential(QuadraticLayer(8, 40, rank=3), torch.nn.Tanh(), QuadraticLayer(40, 2, rank=4))
x = torch.randn(6, 8)
torch.compile(model)(x).sum().backward()  # the joint graph: _quadratic_form_forward/_backward
with torch.no_grad():
    torch.testing.assert_close(torch.compile(model)(x), model(x))  # quadratic_form, quadratic_features
from torch._inductor.lowering import fallbacks
print(sorted(str(op) for op in fallbacks if "quadnet" in str(op)))
"""


@pytest.mark.parametrize("first", ["", "._inductor.lowering"], ids=["quadnet first", "inductor first"])
def test_inductor_calls_the_ops_where_the_ci_variable_is_set(first):
    """With CI set (GitHub Actions sets it) Inductor refuses an implicit fall-back for an op that
    has a decomposition (quadnet's, for ONNX): quadnet registers its fall-backs explicitly,
    whether Inductor is imported before or after it. Fresh interpreter, caches off, so Inductor
    really lowers the graphs."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, CI="1", TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")
    run = subprocess.run([sys.executable, "-c", INDUCTOR_IN_CI_SCRIPT.format(first=first)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    ops = eval(run.stdout.strip().splitlines()[-1])
    assert set(ops) >= {"quadnet._quadratic_form_forward.default", "quadnet._quadratic_form_backward.default",
                        "quadnet.quadratic_form.default", "quadnet.quadratic_features.default"}, ops


@pytest.mark.parametrize("device", DEVICES)
def test_export_deep_polynomial_net(device):
    net = DeepPolynomialNet([20, 12, 3], ranks=[5, 4], norm=True).to(device).eval()
    x = torch.randn(16, 20, device=device)
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (x,), dynamic_shapes=({0: batch},))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("quadnet.quadratic_form.default") == 2
    with torch.no_grad():
        for rows in (16, 5):
            x = torch.randn(rows, 20, device=device)
            torch.testing.assert_close(program.module()(x), net(x))


def test_a_saved_program_loads_with_quadnet_imported_and_says_so_without(tmp_path):
    """torch.export.load resolves quadnet's ops only once quadnet is imported: in a fresh
    interpreter the bare load fails naming the op, quadnet.load_exported works."""
    import subprocess
    import sys
    net = DeepPolynomialNet([6, 4, 2], ranks=[3, 2]).eval()
    x = torch.randn(5, 6)
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (x,)), path)
    torch.save({"x": x, "y": net(x).detach()}, tmp_path / "io.pt")
    bare = subprocess.run([sys.executable, "-c", f"import torch; torch.export.load({str(path)!r})"],
                          capture_output=True, text=True)
    assert bare.returncode != 0 and "torch.ops.quadnet.quadratic_form" in bare.stderr
    helper = subprocess.run([sys.executable, "-c", (
        "import torch, quadnet\n"
        f"program = quadnet.load_exported({str(path)!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "torch.testing.assert_close(program.module()(io['x']), io['y'])\n")],
        capture_output=True, text=True)
    assert helper.returncode == 0, helper.stderr
