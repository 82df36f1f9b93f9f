"""Reverse-mode differentiation of ONNX models, emitting standard ``ai.onnx`` operators."""

from graphopt.autodiff.reverse import UnsupportedOperator, add_gradients, differentiable_initializers
from graphopt.autodiff.rules import RULES, supported

__all__ = ["RULES", "UnsupportedOperator", "add_gradients", "differentiable_initializers", "supported"]
