"""Layer registries: how optimizers given plain parameters find the layers they belong to."""
import weakref
from typing import Iterable

import torch
from torch import Tensor


class LayerRegistry:
    """Every live layer of one kind, so that a parameter's layer is found by identity.

    A layer registers itself when built (``__init__``) and when copied (``__setstate__``:
    ``copy.deepcopy``, pickle, ``torch.load``); entries die with their layer (a weak set).
    :meth:`owners` then asks each layer for its *current* ``weight`` and ``S``, so a parameter
    is found whatever route put it there: assignment, ``load_state_dict(..., assign=True)``,
    ``to_empty``, ``module.to()``, swapped tensors.
    """

    NAMES = ("weight", "S")

    def __init__(self) -> None:
        self._layers: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()

    def register(self, layer: torch.nn.Module) -> None:
        self._layers.add(layer)

    def owners(self) -> dict:
        """``{id(parameter): layer}`` for the ``weight`` and ``S`` of every live layer."""
        found = {}
        for layer in list(self._layers):
            for name in self.NAMES:
                param = getattr(layer, name, None)
                if param is not None:
                    found[id(param)] = layer
        return found


def layers_of(params: Iterable[Tensor], *registries: LayerRegistry) -> list:
    """The layers, of any of ``registries``, that own one of ``params``, in the order of their
    first parameter in ``params`` (each once)."""
    owners = {}
    for registry in registries:
        owners.update(registry.owners())
    found = {}
    for p in params:
        layer = owners.get(id(p))
        if layer is not None:
            found.setdefault(id(layer), layer)
    return list(found.values())
