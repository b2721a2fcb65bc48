"""Specifications: input sets (L-inf / L2 balls, boxes), output margins (C matrices) and VNN-LIB."""
from certify.spec.output import margins, robustness_matrix
from certify.spec.sets import Box, InputSet, L2Ball, LinfBall, ball

__all__ = ["InputSet", "Box", "LinfBall", "L2Ball", "ball", "robustness_matrix", "margins"]
