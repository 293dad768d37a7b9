"""Convolutional quadratic layers: the quadratic_features / quadratic_conv2d ops (gradients, an
unfold reference, the tiled CPU kernels against the ATen formula, errors), the modules
(QuadraticConv2d, DiagonalQuadraticConv2d, PolynomialConvBlock) and their PyTorch 2 / TorchScript
use."""
import copy

import pytest
import torch
import torch.nn.functional as F
from quadnet_testing import CONV_CASES, DEVICES, FEATURE_CASES, conv_inputs, feature_inputs, pair
from torch.autograd import gradcheck, gradgradcheck

import quadnet
from quadnet.nn import DiagonalQuadraticConv2d, PolynomialConvBlock, QuadraticConv2d
from quadnet.ops import quadratic_conv2d, quadratic_features

F64 = {"dtype": torch.float64}


def sym(S):
    return (S + S.transpose(-1, -2)) / 2


def unfold_reference(x, weight, S, stride=1, padding=0, dilation=1):
    """Independent reference: every patch u(p) (F.unfold) in the dense form u^T A_i u,
    A_i = W^T sym(S_i) W with W = weight.flatten(1)."""
    batched = x.dim() == 4
    xb = x if batched else x.unsqueeze(0)
    patches = F.unfold(xb, weight.shape[2:], dilation=dilation, padding=padding, stride=stride)  # (N, d, L)
    W = weight.flatten(1)
    A = W.t() @ sym(S) @ W
    y = torch.einsum("ndl,ide,nel->nil", patches, A, patches)
    span = pair(dilation)[0] * (weight.shape[2] - 1) + 1
    h_out = (xb.shape[2] + 2 * pair(padding)[0] - span) // pair(stride)[0] + 1
    y = y.reshape(xb.shape[0], S.shape[0], h_out, -1)
    return y if batched else y[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_unfold_reference(case, device):
    shape, rank, out, kernel, stride, padding, dilation = case
    x, weight, S = conv_inputs(shape, rank, out, kernel, device, requires_grad=False)
    y = quadratic_conv2d(x, weight, S, stride, padding, dilation)
    ref = unfold_reference(x, weight, S, stride, padding, dilation)
    conv_shape = F.conv2d(x, weight, None, stride, padding, dilation).shape
    assert y.shape == ref.shape == conv_shape[:-3] + (out,) + ref.shape[-2:]
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gradcheck_and_gradgradcheck(case, device):
    shape, rank, out, kernel, stride, padding, dilation = case
    inputs = conv_inputs(shape, rank, out, kernel, device)

    def f(x, weight, S):
        return quadratic_conv2d(x, weight, S, stride, padding, dilation)
    assert gradcheck(f, inputs)
    assert gradgradcheck(f, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", FEATURE_CASES)
def test_features_gradcheck_and_reference(case, device):
    lead, r, n = case
    h, S = feature_inputs(lead, r, n, device)
    y = quadratic_features(h, S)
    assert y.shape == (*lead, n)
    torch.testing.assert_close(y, torch.einsum("...a,iab,...b->...i", h, sym(S), h), rtol=1e-12, atol=1e-12)
    assert gradcheck(quadratic_features, (h, S))
    assert gradgradcheck(quadratic_features, (h, S))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("r, n", [(16, 64), (5, 3), (1, 2)])
def test_tiled_cpu_kernels_match_the_formula(dtype, tol, r, n):
    """The CPU kernels (tiles over threads) against the einsum formula and its autograd, on
    enough vectors for many tiles, with a non-contiguous h and gradient."""
    B = 3001
    h = torch.randn(B, 2 * r, dtype=dtype)[:, ::2]  # (B, r), not contiguous
    S = torch.randn(n, r, r, dtype=dtype)
    G = torch.randn(B, 2 * n, dtype=dtype)[:, 1::2]
    assert not (h.is_contiguous() or G.is_contiguous())
    hd, Sd = h.double().requires_grad_(), S.double().requires_grad_()
    ref = torch.einsum("ba,iac,bc->bi", hd, sym(Sd), hd)
    dh_ref, dS_ref = torch.autograd.grad(ref, (hd, Sd), G.double())
    y = torch.ops.quadnet.quadratic_features(h, S)
    dh, dS = torch.ops.quadnet._quadratic_features_backward(G, h, S)
    scale = ref.abs().max()
    torch.testing.assert_close(y.double() / scale, ref / scale, rtol=0, atol=tol)
    torch.testing.assert_close(dh.double() / dh_ref.abs().max(), dh_ref / dh_ref.abs().max(), rtol=0, atol=tol)
    torch.testing.assert_close(dS.double() / dS_ref.abs().max(), dS_ref / dS_ref.abs().max(), rtol=0, atol=tol)
    torch.testing.assert_close(dS, dS.transpose(1, 2), rtol=0, atol=0)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_tiled_kernels_do_not_depend_on_the_thread_count(threads):
    h, S, G = torch.randn(5000, 8, **F64), torch.randn(7, 8, 8, **F64), torch.randn(5000, 7, **F64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = torch.ops.quadnet._quadratic_features_backward(G, h, S)
        torch.set_num_threads(threads)
        got = torch.ops.quadnet._quadratic_features_backward(G, h, S)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)  # per vector: same operations
    torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-12)  # summed per thread


def test_float32_noncontiguous_input_and_filters():
    x = torch.randn(2, 8, 9, 3).permute(0, 3, 1, 2)  # (2, 3, 8, 9) channels-last
    weight = torch.randn(3, 3, 3, 4).permute(3, 0, 1, 2)  # (4, 3, 3, 3), not contiguous
    S = torch.randn(4, 4, 5).permute(2, 0, 1)
    y = quadratic_conv2d(x, weight, S, padding=1)
    assert y.dtype == torch.float32 and y.shape == (2, 5, 8, 9)
    ref = unfold_reference(x.double(), weight.double(), S.double(), padding=1)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-3)


def test_only_symmetric_part_matters_and_gradient_is_symmetric():
    x, weight, S = conv_inputs((2, 3, 6, 6), 4, 3, 3, requires_grad=False)
    S.requires_grad_(True)
    y = quadratic_conv2d(x, weight, S)
    torch.testing.assert_close(y, quadratic_conv2d(x, weight, S.transpose(1, 2)))
    (grad,) = torch.autograd.grad(y.square().sum(), S)
    torch.testing.assert_close(grad, grad.transpose(1, 2), rtol=0, atol=0)


def test_features_is_the_dense_form_without_weight():
    x, W, S = torch.randn(7, 5, **F64), torch.randn(3, 5, **F64), torch.randn(4, 3, 3, **F64)
    torch.testing.assert_close(quadratic_features(x @ W.t(), S), quadnet.ops.quadratic_form(x, W, S))


def test_diagonal_conv_matches_reference():
    x, weight = torch.randn(2, 3, 6, 5, **F64), torch.randn(4, 3, 3, 3, **F64)
    alpha = torch.randn(2, 4, **F64)
    y = quadnet.ops.diagonal_quadratic_conv2d(x, weight, alpha, padding=1)
    torch.testing.assert_close(y, unfold_reference(x, weight, torch.diag_embed(alpha), padding=1))
    assert gradcheck(lambda x, w, a: quadnet.ops.diagonal_quadratic_conv2d(x, w, a, 2, 1),
                     (x.requires_grad_(), weight.requires_grad_(), alpha.requires_grad_()))


@pytest.mark.parametrize("args, kwargs, message", [
    ((torch.randn(3, 6), torch.randn(2, 3, 3, 3), torch.randn(4, 2, 2)), {},
     r"quadratic_conv2d: expected x of shape \(batch, in_channels, height, width\)"),
    ((torch.randn(1, 3, 6, 6), torch.randn(2, 9), torch.randn(4, 2, 2)), {},
     r"expected weight of shape \(rank, in_channels, kernel_height, kernel_width\)"),
    ((torch.randn(1, 4, 6, 6), torch.randn(2, 3, 3, 3), torch.randn(4, 2, 2)), {},
     r"x of shape \[1, 4, 6, 6\] has 4 channels but weight of shape \[2, 3, 3, 3\] expects 3"),
    ((torch.randn(1, 3, 6, 6), torch.randn(2, 3, 3, 3), torch.randn(4, 3, 3)), {},
     r"expected S of shape \(out_channels, rank, rank\) with rank = weight.size\(0\) = 2, got shape \[4, 3, 3\]"),
    ((torch.randn(1, 3, 6, 6), torch.randn(2, 3, 3, 3), torch.randn(4, 2, 2)), {"stride": 0},
     r"expected stride >= 1, got \[0, 0\]"),
    ((torch.randn(1, 3, 6, 6), torch.randn(2, 3, 3, 3), torch.randn(4, 2, 2)), {"padding": (-1, 0)},
     r"expected padding >= 0"),
    ((torch.randn(1, 3, 6, 6, dtype=torch.float64), torch.randn(2, 3, 3, 3), torch.randn(4, 2, 2)), {},
     r"weight to have the dtype of x"),
])
def test_conv_bad_input_names_the_argument(args, kwargs, message):
    with pytest.raises(RuntimeError, match=message):
        quadratic_conv2d(*args, **kwargs)


@pytest.mark.parametrize("args, message", [
    ((torch.randn(5, 3), torch.randn(4, 2, 2)), r"quadratic_features: h has 3 features in its last dim but S of shape"),
    ((torch.randn(5, 2), torch.randn(4, 2, 3)), r"expected S of shape \(out_features, rank, rank\)"),
    ((torch.tensor(1.0), torch.randn(4, 2, 2)), r"expected h of shape \(\.\.\., rank\)"),
    ((torch.randn(5, 2), torch.randn(4, 2, 2, dtype=torch.float64)), r"S to have the dtype of h"),
])
def test_features_bad_input_names_the_argument(args, message):
    with pytest.raises(RuntimeError, match=message):
        quadratic_features(*args)


def test_backward_op_checks_its_arguments():
    expected = r"_quadratic_features_backward: expected grad of shape \(batch=5, out_features=4\)"
    with pytest.raises(RuntimeError, match=expected):
        torch.ops.quadnet._quadratic_features_backward(torch.randn(5, 3), torch.randn(5, 2), torch.randn(4, 2, 2))


# ---- modules ----

def test_module_forward_canonical_and_parameters():
    layer = QuadraticConv2d(3, 5, 3, rank=4, stride=2, padding=1, **F64)
    assert layer.weight.shape == (4, 3, 3, 3) and layer.S.shape == (5, 4, 4) and layer.bias.shape == (5,)
    torch.testing.assert_close(layer.S, layer.S.transpose(1, 2))  # symmetric at init
    x = torch.randn(2, 3, 9, 8, **F64)
    ref = unfold_reference(x, layer.weight, layer.S, 2, 1) + layer.bias.view(-1, 1, 1)
    torch.testing.assert_close(layer(x), ref)
    A = layer.canonical()
    assert A.shape == (5, 27, 27)
    patches = F.unfold(x, 3, padding=1, stride=2)
    torch.testing.assert_close(torch.einsum("ndl,ide,nel->nil", patches, A, patches).reshape(2, 5, 5, 4)
                               + layer.bias.view(-1, 1, 1), layer(x))
    assert layer.num_parameters() == 4 * 27 + 5 * 10 + 5
    assert "3, 5, kernel_size=(3, 3), rank=4, stride=(2, 2), padding=(1, 1)" in repr(layer)
    no_bias = QuadraticConv2d(3, 5, (1, 3), rank=2, bias=False)
    assert no_bias.bias is None and no_bias.num_parameters() == 2 * 9 + 5 * 3


def test_init_matches_conv2d_fan_in():
    """weight ~ nn.Conv2d's kaiming-uniform (bound 1/√fan_in, fan_in = C·kh·kw), bias the same."""
    layer = QuadraticConv2d(8, 6, 3, rank=72)
    bound = 1 / (8 * 9) ** 0.5
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
    assert layer.bias.abs().max() <= bound
    assert layer.S.abs().max() <= 1 / 72


def test_to_diagonal_computes_the_same_function():
    layer = QuadraticConv2d(3, 4, (3, 2), rank=3, stride=(1, 2), padding=(1, 0), dilation=(2, 1), **F64)
    diagonal = quadnet.nn.to_diagonal(layer)
    assert isinstance(diagonal, DiagonalQuadraticConv2d) and diagonal.rank == 6
    assert (diagonal.kernel_size, diagonal.stride, diagonal.padding, diagonal.dilation) == \
        (layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    x = torch.randn(2, 3, 9, 8, **F64)
    torch.testing.assert_close(diagonal(x), layer(x))
    torch.testing.assert_close(diagonal.canonical(), layer.canonical())
    with pytest.raises(TypeError, match="expected a QuadraticLayer or QuadraticConv2d, got Linear"):
        quadnet.nn.to_diagonal(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kwargs, message", [
    ({"in_channels": 0}, "in_channels, out_channels and rank must be positive"),
    ({"kernel_size": 0}, "kernel_size, stride and dilation must be positive"),
    ({"padding": -1}, "padding non-negative"),
    ({"kernel_size": (3, 3, 3)}, r"QuadraticConv2d: kernel_size must be an int or a pair of ints, got \(3, 3, 3\)"),
    ({"stride": "2"}, r"QuadraticConv2d: stride must be an int or a pair of ints, got '2'"),
    ({"stride": "22"}, r"QuadraticConv2d: stride must be an int or a pair of ints, got '22'"),
    ({"padding": (1.5, 1)}, r"QuadraticConv2d: padding must be an int or a pair of ints, got \(1.5, 1\)"),
    ({"dilation": 2.0}, r"QuadraticConv2d: dilation must be an int or a pair of ints, got 2.0"),
])
def test_module_bad_options(kwargs, message):
    args = {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "rank": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        QuadraticConv2d(**args)


def test_functional_conv_rejects_a_geometry_that_is_not_a_pair():
    x, weight, S = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.randn(4, 3, 3)
    with pytest.raises(ValueError, match=r"quadratic_conv2d: padding must be an int or a pair of ints, got \[1\]"):
        quadnet.ops.quadratic_conv2d(x, weight, S, padding=[1])
    with pytest.raises(ValueError, match=r"diagonal_quadratic_conv2d: dilation must be an int or a pair"):
        quadnet.ops.diagonal_quadratic_conv2d(x, weight, torch.randn(4, 3), dilation=(1, 1, 1))


def test_polynomial_conv_block():
    block = PolynomialConvBlock(3, 6, 3, rank=4, padding=1, norm=True, pool=2, **F64)
    x = torch.randn(4, 3, 8, 10, **F64)
    y = block(x)
    assert y.shape == (4, 6, 4, 5)
    block.eval()
    q, s = block.quadratic, block.skip
    stats = block.norm
    scale = (stats.running_var.view(-1, 1, 1) + stats.eps).sqrt()
    z = (q(x) + F.conv2d(x, s.weight) - stats.running_mean.view(-1, 1, 1)) / scale
    torch.testing.assert_close(block(x), F.avg_pool2d(z, 2))
    assert block.num_parameters() == q.num_parameters() + 18 and block.degree == 2
    plain = PolynomialConvBlock(3, 6, 3, rank=4, skip=False)  # no skip: any padding
    assert plain.skip is None and plain.norm is None and plain.pool is None
    assert plain(torch.randn(1, 3, 7, 7)).shape == (1, 6, 5, 5)
    with pytest.raises(ValueError, match=r"1x1 skip needs .* padding = dilation \* \(kernel_size - 1\) / 2"):
        PolynomialConvBlock(3, 6, 3, rank=4, padding=0)
    with pytest.raises(ValueError, match="pool must be >= 1"):
        PolynomialConvBlock(3, 6, 3, rank=4, padding=1, pool=0)


def rank_normed_block_reference(block, x):
    """A PolynomialConvBlock(rank_norm=True) by the formula, without the op or nn.BatchNorm2d: the
    filter outputs h = W ⋆ x (unfolded patches), normalised per rank channel (batch statistics in
    training mode, running ones in eval mode) and scaled and shifted, then ĥ^T sym(S_i) ĥ + b_i,
    plus the 1×1 skip; the output norm and pooling of the block as they are."""
    q, bn = block.quadratic, block.rank_norm
    N, _, H, W = x.shape
    patches = F.unfold(x, q.kernel_size, padding=q.padding)  # (N, C·kh·kw, H·W) with padding keeping H, W
    h = (q.weight.flatten(1) @ patches).view(N, q.rank, H, W)
    if block.training:  # batch statistics; the running ones move by momentum (unbiased variance)
        mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
        with torch.no_grad():
            bn.running_mean.lerp_(mean, bn.momentum)
            bn.running_var.lerp_(h.var((0, 2, 3)), bn.momentum)
    else:
        mean, var = bn.running_mean, bn.running_var
    h = (h - mean.view(-1, 1, 1)) / (var.view(-1, 1, 1) + bn.eps).sqrt() * bn.weight.view(-1, 1, 1) \
        + bn.bias.view(-1, 1, 1)
    S = (q.S + q.S.transpose(1, 2)) / 2
    y = torch.einsum("nahw,oab,nbhw->nohw", h, S, h) + q.bias.view(-1, 1, 1) + F.conv2d(x, block.skip.weight)
    if block.norm is not None:
        y = block.norm(y)
    return block.pool(y) if block.pool is not None else y


def test_rank_normed_block_matches_the_formula_in_both_modes():
    torch.manual_seed(0)
    block = PolynomialConvBlock(3, 5, 3, rank=4, padding=1, norm=True, pool=2, rank_norm=True, **F64)
    assert isinstance(block.rank_norm, torch.nn.BatchNorm2d) and block.rank_norm.num_features == 4
    assert block.rank_norm.affine and "rank_norm=True" in repr(block)
    with torch.no_grad():  # not the init, so a scale or shift left out shows
        block.rank_norm.weight.uniform_(0.5, 1.5)
        block.rank_norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(6, 3, 8, 8, **F64)
    reference = copy.deepcopy(block)  # its output norm updates its own running statistics
    torch.testing.assert_close(block(x), rank_normed_block_reference(reference, x))
    torch.testing.assert_close(block.rank_norm.running_mean, reference.rank_norm.running_mean)
    torch.testing.assert_close(block.rank_norm.running_var, reference.rank_norm.running_var)
    block.eval(), reference.eval()
    x = torch.randn(2, 3, 8, 8, **F64)
    torch.testing.assert_close(block(x), rank_normed_block_reference(reference, x))
    # the norm's scale and shift are parameters of the block (4 + 4), on top of the layer and skip
    assert block.num_parameters() == block.quadratic.num_parameters() + 15 + 8


def test_rank_normed_block_gradcheck():
    torch.manual_seed(0)
    block = PolynomialConvBlock(2, 3, 3, rank=3, padding=1, rank_norm=True, **F64)
    x = torch.randn(3, 2, 5, 5, **F64, requires_grad=True)
    names = [name for name, _ in block.named_parameters()]
    assert names == ["quadratic.weight", "quadratic.S", "quadratic.bias", "rank_norm.weight", "rank_norm.bias",
                     "skip.weight"]

    def f(x, *values):  # the block as a function of its input and parameters (batch statistics)
        return torch.func.functional_call(block, dict(zip(names, values)), (x,))
    inputs = (x, *(p.detach().clone().requires_grad_() for p in block.parameters()))
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_rank_norm_reset_parameters_restores_the_norm():
    block = PolynomialConvBlock(2, 3, 3, rank=3, padding=1, rank_norm=True)
    with torch.no_grad():
        block.rank_norm.weight.fill_(3.0)
        block.rank_norm.bias.fill_(1.0)
    block(torch.randn(4, 2, 5, 5))
    block.reset_parameters()
    assert torch.equal(block.rank_norm.weight, torch.ones(3)) and torch.equal(block.rank_norm.bias, torch.zeros(3))
    assert torch.equal(block.rank_norm.running_mean, torch.zeros(3))


@pytest.mark.parametrize("rank_norm", [False, True])
def test_polynomial_convnet_is_a_polynomial_of_degree_four(rank_norm):
    """Two blocks in eval mode: along a line x0 + t·v the output is a polynomial of degree 4 in t,
    so its fifth finite difference vanishes (and the fourth does not)."""
    net = torch.nn.Sequential(PolynomialConvBlock(1, 3, 3, rank=2, padding=1, norm=True, pool=2, rank_norm=rank_norm),
                              PolynomialConvBlock(3, 2, 3, rank=2, padding=1, norm=True, rank_norm=rank_norm),
                              torch.nn.Flatten(), torch.nn.Linear(2 * 16, 3)).double()
    net.train()
    net(torch.randn(16, 1, 8, 8, **F64))  # running statistics
    net.eval()
    x0, v = torch.randn(1, 1, 8, 8, **F64), torch.randn(1, 1, 8, 8, **F64)
    with torch.no_grad():
        values = torch.stack([net(x0 + t * v) for t in torch.arange(7, **F64)])
    diff = values
    for _ in range(4):
        diff = diff[1:] - diff[:-1]
    assert diff.abs().max() > 1e-6
    fifth = diff[1:] - diff[:-1]
    assert fifth.abs().max() < 1e-8 * values.abs().max()


def test_sequential_script_compile_and_copies(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(PolynomialConvBlock(2, 4, 3, rank=3, padding=1, norm=True, pool=2),
                                PolynomialConvBlock(4, 4, 3, rank=3, padding=1, rank_norm=True),
                                QuadraticConv2d(4, 3, 3, rank=2), DiagonalQuadraticConv2d(3, 2, 1, rank=2),
                                torch.nn.Flatten()).double()
    model(torch.randn(8, 2, 10, 10, **F64))  # running statistics that are not the init's
    model.eval()
    x = torch.randn(5, 2, 10, 10, **F64)
    expected = model(x)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), expected)
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    torch.testing.assert_close(torch.jit.load(str(path))(x), expected)
    torch.testing.assert_close(copy.deepcopy(model)(x), expected)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), expected)


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_matches_eager_with_gradients(dynamic):
    torch._dynamo.reset()
    model = torch.nn.Sequential(PolynomialConvBlock(2, 4, 3, rank=3, padding=1, norm=True),
                                PolynomialConvBlock(4, 4, 3, rank=2, padding=1, norm=True, rank_norm=True),
                                QuadraticConv2d(4, 3, 3, rank=2, stride=2)).double()
    params = list(model.parameters())
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    for batch in (4, 3):
        x = torch.randn(batch, 2, 9, 9, **F64)
        y_eager = model(x)
        grads_eager = torch.autograd.grad(y_eager.square().sum(), params)
        y = compiled(x)
        grads = torch.autograd.grad(y.square().sum(), params)
        torch.testing.assert_close(y, y_eager)
        for g, g_eager in zip(grads, grads_eager):
            torch.testing.assert_close(g, g_eager)
    torch._dynamo.reset()


def test_export_keeps_the_op_with_dynamic_batch():
    model = torch.nn.Sequential(PolynomialConvBlock(1, 4, 3, rank=3, padding=1, norm=True, pool=2),
                                PolynomialConvBlock(4, 4, 3, rank=3, padding=1, norm=True, rank_norm=True),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 16, 3))
    model(torch.randn(8, 1, 8, 8))  # running statistics that are not the init's
    model.eval()
    x = torch.randn(6, 1, 8, 8)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert "quadnet.quadratic_conv2d.default" in targets and "quadnet.quadratic_features.default" in targets
    with torch.no_grad():
        for rows in (6, 2):
            x = torch.randn(rows, 1, 8, 8)
            torch.testing.assert_close(program.module()(x), model(x))


def test_glram_sgd_full_projection_refuses_convolutional_layers():
    """projection="full" does not project QuadraticConv2d: an error, never plain SGD in its place
    (the default tangent step projects it: test_tangent_step.py)."""
    model = torch.nn.Sequential(QuadraticConv2d(1, 2, 3, rank=2), torch.nn.Flatten())
    weight_before = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"GLRAMSGD: .*QuadraticConv2d.*not implemented for convolutions"):
        quadnet.optim.GLRAMSGD(model, lr=0.1, projection="full")
    with pytest.raises(ValueError, match=r"GLRAMSGD: .*QuadraticConv2d.*not implemented for convolutions"):
        quadnet.optim.GLRAMSGD(model.parameters(), lr=0.1, projection="full")
    copied = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"not implemented for convolutions"):
        quadnet.optim.GLRAMSGD(copied.parameters(), lr=0.1, projection="full")
    opt = quadnet.optim.GLRAMSGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, projection="full")
    with pytest.raises(ValueError, match=r"not implemented for convolutions"):
        opt.add_param_group({"params": list(model.parameters())})
    assert len(opt.param_groups) == 1
    torch.testing.assert_close(model[0].weight, weight_before)


def test_glram_sgd_refuses_a_rank_normed_block():
    """A PolynomialConvBlock(rank_norm=True) has no canonical space: an error naming it, never plain
    SGD in its place; found from a module, from its parameters and from a copy."""
    model = torch.nn.Sequential(PolynomialConvBlock(1, 2, 3, rank=2, padding=1, rank_norm=True), torch.nn.Flatten())
    weight_before = model[0].quadratic.weight.detach().clone()
    message = r"GLRAMSGD: a QuadraticConv2d .* belongs to a PolynomialConvBlock with rank_norm=True"
    with pytest.raises(ValueError, match=message):
        quadnet.optim.GLRAMSGD(model, lr=0.1)
    copied = copy.deepcopy(model)
    with pytest.raises(ValueError, match=message):
        quadnet.optim.GLRAMSGD(copied.parameters(), lr=0.1)
    opt = quadnet.optim.GLRAMSGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match=message):
        opt.add_param_group({"params": list(model.parameters())})
    assert len(opt.param_groups) == 1
    torch.testing.assert_close(model[0].quadratic.weight, weight_before)
    # without the norm, the same block is projected (the tangent step)
    quadnet.optim.GLRAMSGD(PolynomialConvBlock(1, 2, 3, rank=2, padding=1), lr=0.1)
