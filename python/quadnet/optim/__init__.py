"""Optimizers (``torch.optim`` API) over quadnet's C++ update rules."""
from .end_to_end_sgd import EndToEndSGD
from .glram_sgd import GLRAMSGD

__all__ = ["GLRAMSGD", "EndToEndSGD"]
