"""torch.autocast: every op runs in float32 and returns its first input's dtype (torchvision's
policy), so modules mix with autocast's reduced-precision layers in forward and backward."""
import pytest
import torch
from quadnet_testing import DEVICES

import quadnet
from quadnet.nn import (
    DeepPolynomialNet,
    DiagonalQuadraticConv2d,
    DiagonalQuadraticLayer,
    PolynomialConvBlock,
    QuadraticConv2d,
    QuadraticLayer,
)
from quadnet.optim import GLRAMSGD

# (device, autocast dtype): CPU bfloat16; CUDA float16 where there is one.
AUTOCAST = [("cpu", torch.bfloat16)] + [("cuda", torch.float16) for d in DEVICES if d == "cuda"]

OPS = {
    "quadratic_form": (lambda: (torch.randn(8, 6), torch.randn(3, 6), torch.randn(4, 3, 3)), {}),
    "diagonal_quadratic_form": (lambda: (torch.randn(8, 6), torch.randn(3, 6), torch.randn(4, 3)), {}),
    "quadratic_features": (lambda: (torch.randn(8, 3), torch.randn(4, 3, 3)), {}),
    "quadratic_conv2d": (lambda: (torch.randn(2, 3, 6, 6), torch.randn(2, 3, 3, 3), torch.randn(4, 2, 2)),
                         {"padding": [1, 1]}),
    "diagonal_quadratic_conv2d": (lambda: (torch.randn(2, 3, 6, 6), torch.randn(2, 3, 3, 3), torch.randn(4, 2)), {}),
    "canonical_gradient": (lambda: (torch.randn(8, 6), torch.randn(8, 4)), {}),
    "canonical_form": (lambda: (torch.randn(3, 6), torch.randn(4, 3, 3)), {}),
    "diagonal_canonical_form": (lambda: (torch.randn(3, 6), torch.randn(4, 3)), {}),
}


@pytest.mark.parametrize("device, dtype", AUTOCAST)
@pytest.mark.parametrize("name", OPS)
def test_every_op_runs_in_float32_on_a_reduced_precision_first_input(name, device, dtype):
    """The first input in the autocast dtype (as an autocast layer before it leaves it), the others
    float32: the result is the float32 op on the cast inputs, rounded to the first input's dtype —
    exactly; the gradients reach every input in its own dtype."""
    make, kwargs = OPS[name]
    args = [a.to(device) for a in make()]
    args[0] = args[0].to(dtype)
    op = getattr(torch.ops.quadnet, name)
    expected = op(*[a.float() for a in args], **kwargs).to(dtype)
    leaves = [a.clone().requires_grad_(True) for a in args]
    with torch.autocast(device, dtype=dtype):
        out = op(*leaves, **kwargs)
    assert out.dtype == dtype
    assert torch.equal(out, expected)
    out.float().sum().backward()
    assert all(leaf.grad is not None and leaf.grad.dtype == leaf.dtype for leaf in leaves)


def _modules():
    return {
        "QuadraticLayer": (torch.nn.Sequential(torch.nn.Linear(12, 12), QuadraticLayer(12, 4, 3)), (64, 12)),
        "DiagonalQuadraticLayer": (torch.nn.Sequential(torch.nn.Linear(12, 12), DiagonalQuadraticLayer(12, 4, 3)),
                                   (64, 12)),
        "QuadraticConv2d": (torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), QuadraticConv2d(3, 4, 3, rank=2, padding=1)),
                            (4, 2, 8, 8)),
        "DiagonalQuadraticConv2d": (torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1),
                                                        DiagonalQuadraticConv2d(3, 4, 3, rank=2)), (4, 2, 8, 8)),
        "PolynomialConvBlock": (torch.nn.Sequential(PolynomialConvBlock(2, 4, 3, rank=3, padding=1, pool=2),
                                                    PolynomialConvBlock(4, 3, 3, rank=3, padding=1)), (4, 2, 8, 8)),
        "DeepPolynomialNet": (DeepPolynomialNet([12, 8, 4], ranks=[4, 3]), (64, 12)),
    }


@pytest.mark.parametrize("device, dtype", AUTOCAST)
@pytest.mark.parametrize("name", list(_modules()))
def test_modules_forward_and_backward_within_reduced_precision_of_float32(name, device, dtype):
    model, shape = _modules()[name]
    model = model.to(device)
    x = torch.randn(*shape, device=device)
    reference = model(x)
    weights = torch.randn_like(reference)
    (reference * weights).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with torch.autocast(device, dtype=dtype):
        out = model(x)
    (out.float() * weights).sum().backward()
    tolerance = 4e-2  # a few bfloat16 eps (2^-7) after a few layers; float16 is tighter still
    assert (out.float() - reference).norm() <= tolerance * reference.norm()
    for n, p in model.named_parameters():
        assert p.grad.dtype == p.dtype, n
        assert (p.grad - expected[n]).norm() <= tolerance * expected[n].norm(), n


@pytest.mark.parametrize("device, dtype", AUTOCAST)
@pytest.mark.parametrize("projection", ["tangent", "full"])
def test_glram_sgd_steps_after_an_autocast_backward(projection, device, dtype):
    """The layer's input comes from an autocast Linear (reduced precision): the tangent step uses
    the float32 .grad; the full step its captured batch, cast to the layer's dtype, whose
    gradients are those the float32 op computed — no "edited gradients" error."""
    model = torch.nn.Sequential(torch.nn.Linear(12, 12), QuadraticLayer(12, 4, 3)).to(device)
    opt = GLRAMSGD(model, lr=0.01, projection=projection)
    with torch.autocast(device, dtype=dtype):
        out = model(torch.randn(64, 12, device=device))
    out.float().pow(2).mean().backward()
    opt.step()
    assert len(opt.last_projections) == 1
    W = model[1].weight
    torch.testing.assert_close(W @ W.T, torch.eye(3, device=device), rtol=0, atol=1e-5)


def test_autocast_kernels_are_registered_for_cpu_and_cuda():
    for name in OPS:
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"quadnet::{name}", key), (name, key)
    assert quadnet.ops is not None
