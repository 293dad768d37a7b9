"""Modules (read like ``torch.nn``; parameters named as in the C++ modules): quadratic layers
(dense and convolutional), deep polynomial networks, overparameterized linear layers."""
from ._parameters import num_free_parameters
from .conv import DiagonalQuadraticConv2d, PolynomialConvBlock, QuadraticConv2d
from .overparam import OverparamLinear, collapse, overparameterize
from .polynomial import DeepPolynomialNet, PolynomialBlock
from .quadratic import DiagonalQuadraticLayer, QuadraticLayer, to_diagonal

__all__ = ["QuadraticLayer", "DiagonalQuadraticLayer", "to_diagonal", "QuadraticConv2d", "DiagonalQuadraticConv2d",
           "PolynomialConvBlock", "PolynomialBlock", "DeepPolynomialNet",
           "OverparamLinear", "overparameterize", "collapse", "num_free_parameters"]
