"""Helpers shared by the Python tests (pytest discourages importing conftest).

DEVICES: every device the device-generic tests run the library on — the CPU, and CUDA where
there is one. conftest.py marks every test parametrised with ``device="cuda"`` as ``cuda``, so a
GPU run can select them (``pytest -m cuda``) and a CPU-only run skip nothing by accident.
"""
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---- inputs of the ops' functional tests, which opcheck (test_pt2.py) is fed too ----

def pair(v):
    """conv2d's int-or-pair geometry as a pair."""
    return (v, v) if isinstance(v, int) else tuple(v)


# quadratic_form: (batch shape, d, r, n): r = 1, n = 1, batch dims, 1-D input.
FORM_CASES = [((5,), 4, 3, 2), ((6,), 3, 1, 4), ((4,), 5, 2, 1), ((2, 3), 4, 2, 3), ((), 3, 2, 2),
              ((7,), 6, 4, 2)]


def form_shapes(batch, d, r, n):
    """Shapes of quadratic_form's x (..., d), weight (r, d), S (n, r, r)."""
    return [(*batch, d), (r, d), (n, r, r)]


def form_inputs(batch, d, r, n, dtype=torch.float64, requires_grad=True, device="cpu"):
    kw = {"dtype": dtype, "requires_grad": requires_grad, "device": device}
    return [torch.randn(*shape, **kw) for shape in form_shapes(batch, d, r, n)]


# quadratic_conv2d: (x shape, rank, out_channels, kernel, stride, padding, dilation): unbatched
# input, rank 1, one output, rectangular kernels and geometry.
CONV_CASES = [((2, 3, 7, 6), 4, 5, 3, 1, 1, 1), ((1, 2, 6, 6), 1, 3, 2, 1, 0, 1),
              ((2, 1, 5, 7), 3, 1, (1, 3), 2, (0, 1), 1), ((3, 6, 5), 2, 2, 3, (2, 1), 1, 2),
              ((2, 2, 8, 8), 3, 4, 3, 2, 2, (2, 1))]


def conv_shapes(shape, rank, out, kernel):
    """Shapes of quadratic_conv2d's x, weight (rank, C, kh, kw), S (out, rank, rank)."""
    return [shape, (rank, shape[-3], *pair(kernel)), (out, rank, rank)]


def conv_inputs(shape, rank, out, kernel, device="cpu", dtype=torch.float64, requires_grad=True):
    kw = {"device": device, "dtype": dtype, "requires_grad": requires_grad}
    return [torch.randn(*s, **kw) for s in conv_shapes(shape, rank, out, kernel)]


# quadratic_features: (leading shape of h, r, n): many vectors, r = 1, n = 1, no vectors, one
# unbatched vector.
FEATURE_CASES = [((4, 5), 3, 2), ((9,), 1, 4), ((6,), 4, 1), ((0,), 3, 2), ((), 5, 3), ((3, 2, 2), 6, 40)]


def feature_shapes(lead, r, n):
    """Shapes of quadratic_features' h (..., r) and S (n, r, r)."""
    return [(*lead, r), (n, r, r)]


def feature_inputs(lead, r, n, device="cpu", dtype=torch.float64, requires_grad=True):
    kw = {"device": device, "dtype": dtype, "requires_grad": requires_grad}
    return [torch.randn(*s, **kw) for s in feature_shapes(lead, r, n)]
