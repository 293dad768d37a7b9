"""Decompositions of quadnet's ops into ATen ops, for the exporters that need ATen only.

``torch.onnx.export(..., dynamo=True)`` decomposes every op it has no ONNX translation for with
the decompositions of ``torch._decomp.decomposition_table``; quadnet registers there, for each op
with a ``CompositeExplicitAutograd`` kernel, that kernel itself (the C++ ATen composition, run on
the exporter's tracing tensors), so the ONNX graph holds the ops' math and no second
implementation exists. The ops whose only kernel is ``CompositeImplicitAutograd`` (the
convolutions, the small ops) decompose by themselves.

torch.compile and ``torch.export``/AOTInductor keep calling quadnet's kernels: Inductor's own
decomposition table does not hold these ops, so it falls back to them. It would do so implicitly,
but an implicit fall-back for an op that has a decomposition is an error in Inductor when the
``CI`` environment variable is set (GitHub Actions and most CI services set it): so quadnet
registers the fall-backs explicitly when ``torch._inductor.lowering`` is imported.
"""
import importlib.abc
import sys
import warnings

import torch
from torch._C import DispatchKey
from torch._decomp import decomposition_table, register_decomposition

INDUCTOR_LOWERING = "torch._inductor.lowering"


def _composite(op):
    def decomposition(*args, **kwargs):
        return op._op_dk(DispatchKey.CompositeExplicitAutograd, *args, **kwargs)
    return decomposition


def _explicit_ops():
    """The ops registered with a CompositeExplicitAutograd kernel (csrc/quadnet/ops/composite_kernels.cpp), read
    from the dispatcher."""
    names = sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("quadnet::")
                   and torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeExplicitAutograd"))
    return [getattr(torch.ops.quadnet, name.split("::")[1]).default for name in names]


def register_inductor_fallbacks(lowering) -> None:
    """Makes Inductor call quadnet's kernels for the explicit ops, with the layout constraint its
    implicit fall-back would use (the op's layout tag, or Inductor's default)."""
    from torch._library.utils import get_layout_constraint_tag
    try:
        for op in _explicit_ops():
            if op not in lowering.lowerings:
                constraint = lowering.tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))
                lowering.make_fallback(op, layout_constraint=constraint, warn=False)
    except (AttributeError, TypeError) as error:  # an Inductor without these internals
        warnings.warn(f"quadnet: could not register Inductor fall-backs for its ops ({error}); torch.compile "
                      "still calls quadnet's kernels, but fails with the CI environment variable set",
                      stacklevel=2)


class _RunAfterExec(importlib.abc.Loader):
    """Wraps a module's loader to run `callback(module)` once the module has executed."""

    def __init__(self, loader, callback):
        self._loader, self._callback = loader, callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._callback(module)

    def __getattr__(self, name):  # get_code, get_source, ... of the wrapped loader
        return getattr(self._loader, name)


class _InductorLoweringFinder(importlib.abc.MetaPathFinder):
    """Finds torch._inductor.lowering with the other finders and hooks its loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname != INDUCTOR_LOWERING:
            return None
        sys.meta_path.remove(self)  # once; and so the search below does not find this finder
        spec = None
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        if spec is not None and spec.loader is not None:
            spec.loader = _RunAfterExec(spec.loader, register_inductor_fallbacks)
        return spec


def register() -> None:
    """Registers the decompositions and the Inductor fall-backs (once; called when quadnet is
    imported)."""
    for op in _explicit_ops():
        if op not in decomposition_table:
            register_decomposition(op)(_composite(op))
    if INDUCTOR_LOWERING in sys.modules:
        register_inductor_fallbacks(sys.modules[INDUCTOR_LOWERING])
    elif not any(isinstance(finder, _InductorLoweringFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _InductorLoweringFinder())
