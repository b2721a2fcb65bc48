"""certify: certified robustness of neural networks (bound propagation, convex certificates,
randomized smoothing) on one network IR."""
__version__ = "0.1.0"
