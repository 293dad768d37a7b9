"""State dicts in the format the C++ library reads (``quadnet::serialize::load_state_dict``), and
loading exported programs that call quadnet's ops."""
import torch

__all__ = ["save_state_dict", "load_state_dict", "load_exported"]


def save_state_dict(module: torch.nn.Module, path) -> None:
    """Saves ``module.state_dict()`` as a plain ``{name: tensor}`` dict.

    C++ reads it with ``quadnet::serialize::load_state_dict(module, path)``; parameter names
    are the same in the C++ and Python modules.
    """
    torch.save({name: t.detach() for name, t in module.state_dict().items()}, path)


def load_state_dict(module: torch.nn.Module, path) -> None:
    """Loads a file written by :func:`save_state_dict` or by C++'s ``save_state_dict`` (strict)."""
    module.load_state_dict(torch.load(path), strict=True)


def load_exported(path, **kwargs) -> "torch.export.ExportedProgram":
    """``torch.export.load(path, **kwargs)`` for a program that calls ``torch.ops.quadnet.*``.

    The ops exist once quadnet is imported (its extension registers them), so this works where
    a bare ``torch.export.load`` in a fresh interpreter fails ("We failed to resolve
    torch.ops.quadnet.quadratic_form.default to an operator"): ``import quadnet`` first, or call
    this. The same holds for ``torch._inductor.aoti_load_package``; C++ apps link quadnet.
    """
    return torch.export.load(path, **kwargs)
