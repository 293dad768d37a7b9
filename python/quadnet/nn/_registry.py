"""Parameter -> layer registries: how optimizers given plain parameters find their layers."""
import weakref
from typing import Optional

import torch
from torch import Tensor


class ParameterRegistry:
    """Maps the ``weight`` and ``S`` Parameters of one kind of layer to their layer.

    Entries die with their layer (weak values); a stale id (a reused address) is rejected by the
    identity check in :meth:`layer_of`. A layer keeps its entries current by calling
    :meth:`track` from ``__setattr__`` (assignment, ``load_state_dict(..., assign=True)``) and
    :meth:`track_all` from ``__setstate__`` (``copy.deepcopy``, pickle).
    """

    NAMES = ("weight", "S")

    def __init__(self) -> None:
        self._layers: "weakref.WeakValueDictionary[int, torch.nn.Module]" = weakref.WeakValueDictionary()

    def track(self, layer: torch.nn.Module, name: str, value: object) -> None:
        """Records ``value`` as ``layer``'s Parameter ``name`` (ignored for other names and values)."""
        if name in self.NAMES and isinstance(value, torch.nn.Parameter):
            self._layers[id(value)] = layer

    def track_all(self, layer: torch.nn.Module) -> None:
        """Records every registered Parameter of ``layer``."""
        for name in self.NAMES:
            self.track(layer, name, getattr(layer, name))

    def layer_of(self, param: Tensor) -> Optional[torch.nn.Module]:
        """The layer whose ``weight`` or ``S`` is ``param``, or ``None``."""
        layer = self._layers.get(id(param))
        return layer if layer is not None and any(getattr(layer, n) is param for n in self.NAMES) else None
