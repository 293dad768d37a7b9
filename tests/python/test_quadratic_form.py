"""The quadratic_form op: gradients, reference agreement, shapes, errors."""
import pytest
import torch
import torch.nn.functional as F
from quadnet_testing import DEVICES, FORM_CASES, form_inputs
from torch.autograd import gradcheck, gradgradcheck

import quadnet
from quadnet.ops import quadratic_form


def dense_reference(x, weight, S):
    """Independent reference: y_i = x^T A_i x via F.bilinear with A_i = W^T sym(S_i) W."""
    A = weight.t() @ ((S + S.transpose(1, 2)) / 2) @ weight
    flat = x.reshape(-1, x.shape[-1])
    return F.bilinear(flat, flat, A).reshape(*x.shape[:-1], S.shape[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", FORM_CASES)
def test_gradcheck(shape, device):
    assert gradcheck(quadratic_form, form_inputs(*shape, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", FORM_CASES)
def test_gradgradcheck(shape, device):
    assert gradgradcheck(quadratic_form, form_inputs(*shape, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", FORM_CASES)
def test_matches_bilinear_reference(shape, device):
    x, weight, S = form_inputs(*shape, requires_grad=False, device=device)
    y = quadratic_form(x, weight, S)
    assert y.shape == (*shape[0], shape[3])
    torch.testing.assert_close(y, dense_reference(x, weight, S), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_and_noncontiguous(device):
    x = torch.randn(8, 3, 20, device=device).transpose(0, 1)  # (3, 8, 20), not contiguous
    weight = torch.randn(20, 6, device=device).t()             # (6, 20), not contiguous
    S = torch.randn(6, 6, 5, device=device).permute(2, 0, 1)   # (5, 6, 6), not contiguous
    assert not (x.is_contiguous() or weight.is_contiguous() or S.is_contiguous())
    y = quadratic_form(x, weight, S)
    assert y.dtype == torch.float32 and y.shape == (3, 8, 5)
    ref = dense_reference(x.double(), weight.double(), S.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-3)


def test_only_symmetric_part_matters_and_gradient_is_symmetric():
    x, weight, S = form_inputs((5,), 4, 3, 2, requires_grad=False)
    S.requires_grad_(True)
    y = quadratic_form(x, weight, S)
    torch.testing.assert_close(y, quadratic_form(x, weight, S.transpose(1, 2)))
    (grad,) = torch.autograd.grad(y.sum(), S)
    torch.testing.assert_close(grad, grad.transpose(1, 2), rtol=0, atol=0)


def test_registered_op_and_functional_agree():
    x, weight, S = form_inputs((4,), 3, 2, 2, requires_grad=False)
    torch.testing.assert_close(torch.ops.quadnet.quadratic_form(x, weight, S), quadratic_form(x, weight, S))


@pytest.mark.parametrize("device", DEVICES)
def test_diagonal_form_matches_reference(device):
    kw = {"dtype": torch.float64, "device": device}
    x, weight = torch.randn(6, 5, **kw), torch.randn(3, 5, **kw)
    alpha = torch.randn(2, 3, **kw, requires_grad=True)
    y = quadnet.ops.diagonal_quadratic_form(x, weight, alpha)
    torch.testing.assert_close(y, dense_reference(x, weight, torch.diag_embed(alpha)))
    assert gradcheck(quadnet.ops.diagonal_quadratic_form, (x.requires_grad_(), weight.requires_grad_(), alpha))


@pytest.mark.parametrize("args, message", [
    ((torch.tensor(1.0), torch.randn(2, 3), torch.randn(4, 2, 2)), r"expected x of shape \(\.\.\., in_features\)"),
    ((torch.randn(5, 4), torch.randn(2, 3), torch.randn(4, 2, 2)), r"x has 4 features .* weight of shape \[2, 3\]"),
    ((torch.randn(5, 3), torch.randn(2, 3, 1), torch.randn(4, 2, 2)),
     r"expected weight of shape \(rank, in_features\)"),
    ((torch.randn(5, 3), torch.randn(2, 3), torch.randn(4, 3, 3)), r"S of shape \[4, 3, 3\] does not match rank 2"),
    ((torch.randn(5, 3), torch.randn(2, 3), torch.randn(4, 2, 5)), r"expected square matrices S"),
    ((torch.randn(5, 3), torch.randn(2, 3), torch.randn(2, 2)), r"expected S of shape \(out_features, rank, rank\)"),
    ((torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 3), torch.randn(4, 2, 2)),
     r"weight to have the dtype of x"),
    ((torch.randn(5, 3), torch.randn(2, 3), torch.randn(4, 2, 2, dtype=torch.float64)),
     r"S to have the dtype of weight"),
    ((torch.ones(5, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), torch.ones(4, 2, 2, dtype=torch.long)),
     r"floating point"),
])
def test_bad_input_names_the_argument(args, message):
    with pytest.raises(RuntimeError, match=message):
        quadratic_form(*args)


def test_gradients_of_backward_op_match_autograd_of_the_forward():
    """_quadratic_form_backward against autograd through the ATen formula (independent)."""
    x, weight, S = form_inputs((7,), 5, 3, 4, requires_grad=False)
    S.requires_grad_(True)
    h = (x @ weight.t()).requires_grad_(True)
    y = torch.einsum("bi,nij,bj->bn", h, (S + S.transpose(1, 2)) / 2, h)
    G = torch.randn_like(y)
    dh_ref, dS_ref = torch.autograd.grad(y, (h, S), G)
    _, h_op, z = torch.ops.quadnet._quadratic_form_forward(x, weight, S.detach())
    dh, dS = torch.ops.quadnet._quadratic_form_backward(G, h_op, z)
    torch.testing.assert_close(dh, dh_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dS, (dS_ref + dS_ref.transpose(1, 2)) / 2, rtol=1e-12, atol=1e-12)


def test_gradient_of_weight_alone():
    """Only the inputs that need gradients get them (x frozen: no ∂x computed or returned)."""
    x, weight, S = form_inputs((6,), 4, 2, 3, requires_grad=False)
    weight.requires_grad_(True)
    y = quadratic_form(x, weight, S)
    (gw,) = torch.autograd.grad(y.sum(), weight)
    ref = torch.autograd.grad(dense_reference(x, weight, S).sum(), weight)[0]
    torch.testing.assert_close(gw, ref)
