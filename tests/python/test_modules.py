"""QuadraticLayer / DiagonalQuadraticLayer as torch.nn modules."""
import pytest
import torch
import torch.nn.functional as F
from quadnet_testing import DEVICES

import quadnet
from quadnet.nn import DiagonalQuadraticLayer, QuadraticLayer


def test_parameters_and_init():
    layer = QuadraticLayer(6, 4, rank=3)
    assert dict((k, tuple(v.shape)) for k, v in layer.named_parameters()) == {
        "weight": (3, 6), "S": (4, 3, 3), "bias": (4,)}
    torch.testing.assert_close(layer.S, layer.S.transpose(1, 2), rtol=0, atol=0)
    assert layer.num_parameters() == 3 * 6 + 4 * 3 * 4 // 2 + 4
    assert QuadraticLayer(6, 4, rank=3, bias=False).num_parameters() == 3 * 6 + 4 * 6
    assert QuadraticLayer(6, 4, rank=3, bias=False).bias is None
    assert repr(layer) == "QuadraticLayer(in_features=6, out_features=4, rank=3, bias=True)"
    before = layer.weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight)


def test_num_free_parameters_of_any_model():
    """The count every num_parameters() returns, for any model: each S_i (r x r) counts r(r+1)/2."""
    model = torch.nn.Sequential(QuadraticLayer(6, 4, rank=3), torch.nn.Linear(4, 2), DiagonalQuadraticLayer(2, 2, 2))
    expected = (3 * 6 + 4 * 6 + 4) + (4 * 2 + 2) + (2 * 2 + 2 * 2 + 2)
    assert quadnet.nn.num_free_parameters(model) == expected
    assert quadnet.nn.num_free_parameters(model) == sum(p.numel() for p in model.parameters()) - 4 * 3
    with torch.device("meta"):  # shapes only
        assert quadnet.nn.num_free_parameters(QuadraticLayer(6, 4, rank=3)) == 3 * 6 + 4 * 6 + 4
    # only a parameter named S, and only a square form
    assert quadnet._C.nn.num_free_parameters("SS", [4, 3, 3]) == 36
    assert quadnet._C.nn.num_free_parameters("S", [4, 3, 2]) == 24


@pytest.mark.parametrize("device", DEVICES)
def test_forward_matches_canonical_bilinear(device):
    layer = QuadraticLayer(7, 3, rank=2).double().to(device)
    x = torch.randn(2, 5, 7, dtype=torch.float64, device=device)
    A = layer.canonical()
    assert A.shape == (3, 7, 7)
    torch.testing.assert_close(layer(x), F.bilinear(x, x, A, layer.bias))
    # rank ≤ r
    assert int(torch.linalg.matrix_rank(A[0])) <= 2


@pytest.mark.parametrize("device", DEVICES)
def test_diagonal_layer(device):
    layer = DiagonalQuadraticLayer(5, 2, rank=4).double().to(device)
    x = torch.randn(9, 5, dtype=torch.float64, device=device)
    torch.testing.assert_close(layer(x), F.bilinear(x, x, layer.canonical(), layer.bias))
    assert layer.num_parameters() == 4 * (5 + 2) + 2
    assert [k for k, _ in layer.named_parameters()] == ["weight", "alpha", "bias"]


def test_sequential_state_dict_dtype_and_script():
    model = torch.nn.Sequential(QuadraticLayer(8, 6, 3), QuadraticLayer(6, 4, 2, bias=False),
                                DiagonalQuadraticLayer(4, 2, 3))
    x = torch.randn(10, 8)
    y = model(x)
    clone = torch.nn.Sequential(QuadraticLayer(8, 6, 3), QuadraticLayer(6, 4, 2, bias=False),
                                DiagonalQuadraticLayer(4, 2, 3))
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone(x), y, rtol=0, atol=0)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), y, rtol=0, atol=0)
    model64 = model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model64.parameters())
    torch.testing.assert_close(model64(x.double()).float(), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_training_step_updates_all_parameters(device):
    layer = QuadraticLayer(5, 3, rank=2, device=device)
    before = {k: v.detach().clone() for k, v in layer.named_parameters()}
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    loss = F.cross_entropy(layer(torch.randn(16, 5, device=device)), torch.randint(0, 3, (16,), device=device))
    loss.backward()
    opt.step()
    for name, p in layer.named_parameters():
        assert not torch.equal(before[name], p), name
    torch.testing.assert_close(layer.S, layer.S.transpose(1, 2))  # symmetric gradient keeps S symmetric


@pytest.mark.parametrize("cls", [QuadraticLayer, DiagonalQuadraticLayer])
def test_invalid_sizes(cls):
    with pytest.raises(ValueError, match="rank must be positive"):
        cls(4, 3, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rank", [1, 2, 5])
def test_to_diagonal_has_identical_outputs(rank, device):
    layer = QuadraticLayer(7, 3, rank).double().to(device)
    with torch.no_grad():
        layer.S.copy_(torch.randn(3, rank, rank, dtype=torch.float64))  # not symmetric: only sym part counts
    diagonal = quadnet.nn.to_diagonal(layer)
    assert isinstance(diagonal, DiagonalQuadraticLayer) and diagonal.rank == rank * (rank + 1) // 2
    assert diagonal.weight.device == layer.weight.device
    x = torch.randn(2, 9, 7, dtype=torch.float64, device=device)
    torch.testing.assert_close(diagonal(x), layer(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES + ["meta"])
def test_to_diagonal_keeps_device_and_dtype(device):
    """As the C++ to_diagonal (the meta device stands in for an accelerator where there is none)."""
    for layer in (quadnet.nn.QuadraticLayer(6, 3, 2), quadnet.nn.QuadraticConv2d(2, 3, 3, rank=2)):
        layer = layer.to(device=device, dtype=torch.float64)
        diagonal = quadnet.nn.to_diagonal(layer)
        assert diagonal.weight.device == layer.weight.device and diagonal.alpha.dtype == torch.float64
