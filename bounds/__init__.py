"""Engine 1: linear-relaxation bound propagation on the certify IR.

``ibp`` (interval arithmetic), ``crown`` (backward linear relaxation, Zhang et al. 2018),
``alpha`` (optimized slopes, Xu et al. 2021), ``compute_bounds`` / ``intermediate_bounds``
on a ``certify.spec`` input set, and ``radius`` (certified radius by bisection). Every
function is batched over inputs and returns sound ``Bounds(lower, upper)``; past a given
``deadline`` a computation raises ``BoundTimeout`` instead.
"""
from bounds.api import METHODS, alpha, compute_bounds, crown, ibp, intermediate_bounds, method_name
from bounds.crown import BoundTimeout
from bounds.radius import radius
from bounds.result import Bounds

__all__ = ["Bounds", "BoundTimeout", "ibp", "crown", "alpha", "compute_bounds", "intermediate_bounds", "radius",
           "method_name", "METHODS"]
