"""Modules: quadratic layers (read like ``torch.nn``; parameters named as in C++)."""
from .quadratic import DiagonalQuadraticLayer, QuadraticLayer, to_diagonal

__all__ = ["QuadraticLayer", "DiagonalQuadraticLayer", "to_diagonal"]
