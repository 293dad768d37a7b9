"""Modules (read like ``torch.nn``; parameters named as in the C++ modules): quadratic layers,
deep polynomial networks, overparameterized linear layers."""
from .overparam import OverparamLinear, collapse, overparameterize
from .polynomial import DeepPolynomialNet, PolynomialBlock
from .quadratic import DiagonalQuadraticLayer, QuadraticLayer, to_diagonal

__all__ = ["QuadraticLayer", "DiagonalQuadraticLayer", "to_diagonal", "PolynomialBlock", "DeepPolynomialNet",
           "OverparamLinear", "overparameterize", "collapse"]
