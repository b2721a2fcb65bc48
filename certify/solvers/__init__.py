"""Solver wrappers and linear encodings shared by the engines (layer 0): the network as affine
maps between ReLU layers (``linearize``), its LP / big-M MILP encodings on a box (``encode``) and
HiGHS with certified dual bounds (``highs``)."""
