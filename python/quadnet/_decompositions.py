"""Decompositions of quadnet's ops into ATen ops, for the exporters that need ATen only.

``torch.onnx.export(..., dynamo=True)`` decomposes every op it has no ONNX translation for with
the decompositions of ``torch._decomp.decomposition_table``; quadnet registers there, for each op
with a ``CompositeExplicitAutograd`` kernel, that kernel itself (the C++ ATen composition, run on
the exporter's tracing tensors), so the ONNX graph holds the ops' math and no second
implementation exists. The ops whose only kernel is ``CompositeImplicitAutograd`` (the
convolutions, the small ops) decompose by themselves. torch.compile and
``torch.export``/AOTInductor do not use this table: they keep calling quadnet's kernels.
"""
import torch
from torch._C import DispatchKey
from torch._decomp import decomposition_table, register_decomposition

# the ops with a CompositeExplicitAutograd kernel (ops/register_ops.cpp)
EXPLICIT_OPS = ("quadratic_form", "_quadratic_form_forward", "_quadratic_form_backward", "quadratic_features",
                "_quadratic_features_backward")


def _composite(op):
    def decomposition(*args, **kwargs):
        return op._op_dk(DispatchKey.CompositeExplicitAutograd, *args, **kwargs)
    return decomposition


def register() -> None:
    """Registers the decompositions (once; called when quadnet is imported)."""
    for name in EXPLICIT_OPS:
        op = getattr(torch.ops.quadnet, name).default
        if op not in decomposition_table:
            register_decomposition(op)(_composite(op))
