"""Optimizers (``torch.optim`` API) over quadnet's C++ update rules."""
from .glram_sgd import GLRAMSGD

__all__ = ["GLRAMSGD"]
