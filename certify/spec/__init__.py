"""Specifications: input sets (L-inf / L2 / L1 balls, boxes), output margins (C matrices) and VNN-LIB."""
from certify.spec.output import margin_values, margins, robustness_matrix
from certify.spec.sets import Box, InputSet, L1Ball, L2Ball, LinfBall, ball

__all__ = ["InputSet", "Box", "LinfBall", "L2Ball", "L1Ball", "ball", "robustness_matrix", "margins", "margin_values"]
