"""Modules: quadratic layers and deep polynomial networks (read like ``torch.nn``; parameters named as in C++)."""
from .polynomial import DeepPolynomialNet, PolynomialBlock
from .quadratic import DiagonalQuadraticLayer, QuadraticLayer, to_diagonal

__all__ = ["QuadraticLayer", "DiagonalQuadraticLayer", "to_diagonal", "PolynomialBlock", "DeepPolynomialNet"]
