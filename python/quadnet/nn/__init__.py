"""Modules: quadratic layers (read like ``torch.nn``; parameters named as in C++)."""
from .quadratic import DiagonalQuadraticLayer, QuadraticLayer

__all__ = ["QuadraticLayer", "DiagonalQuadraticLayer"]
