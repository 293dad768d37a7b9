"""quadnet: quadratic layers, GLRAM projections, projection optimizers, deep polynomial networks
and overparameterized linear layers for PyTorch.

Importing the package loads the C++ extension, which registers the ops as
``torch.ops.quadnet.*`` (usable from TorchScript and from C++ apps linking quadnet).
"""
import torch  # the extension needs libtorch loaded first


def _load_extension():
    """Imports quadnet._C, failing with both torch versions named when they do not match."""
    try:
        from ._build_info import TORCH_VERSION as built_with
    except ImportError:  # built by other means than setup.py: nothing recorded
        built_with = None
    fix = ("Rebuild quadnet against the torch you use: pip install --no-build-isolation -e . in "
           "quadnet's checkout (or scripts/setup.sh there).")
    if built_with is not None and built_with != torch.__version__:
        raise ImportError(f"quadnet's C++ extension was built against torch {built_with}, but torch "
                          f"{torch.__version__} is imported; its ABI differs. {fix}")
    try:
        from . import _C
    except ImportError as error:
        raise ImportError(f"quadnet: cannot load its C++ extension (built against torch "
                          f"{built_with or 'unknown'}, running torch {torch.__version__}): {error}. {fix}") from error
    return _C


_C = _load_extension()  # registers torch.ops.quadnet.*
try:
    from ._build_info import VERSION as __version__  # e.g. 0.1.0+pt213cpu (setup.py)
except ImportError:  # built by other means, or before the version was recorded
    __version__ = "unknown"
# The submodules need the ops registered first (they call torch.ops.quadnet.*).
from . import (  # noqa: E402
    _decompositions,  # noqa: E402
    linalg,
    nn,
    ops,
    optim,
    serialize,
    utils,
)
from .nn import collapse, overparameterize  # noqa: E402
from .serialize import load_exported, load_state_dict, save_state_dict  # noqa: E402

_decompositions.register()  # ATen decompositions for torch.onnx.export

__all__ = ["linalg", "nn", "ops", "optim", "serialize", "utils", "save_state_dict", "load_state_dict", "load_exported",
           "overparameterize", "collapse"]
