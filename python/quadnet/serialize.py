"""State dicts in the format the C++ library reads (``quadnet::serialize::load_state_dict``)."""
import torch

__all__ = ["save_state_dict", "load_state_dict"]


def save_state_dict(module: torch.nn.Module, path) -> None:
    """Saves ``module.state_dict()`` as a plain ``{name: tensor}`` dict.

    C++ reads it with ``quadnet::serialize::load_state_dict(module, path)``; parameter names
    are the same in the C++ and Python modules.
    """
    torch.save({name: t.detach() for name, t in module.state_dict().items()}, path)


def load_state_dict(module: torch.nn.Module, path) -> None:
    """Loads a file written by :func:`save_state_dict` or by C++'s ``save_state_dict`` (strict)."""
    module.load_state_dict(torch.load(path), strict=True)
