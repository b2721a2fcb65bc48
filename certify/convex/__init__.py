"""Convex certificates (layer 2): LP (triangle relaxation, HiGHS), SDP (Raghunathan et al. 2018;
cvxpy or a first-order dual solver) and exact MILP (Tjeng et al. 2019, HiGHS), on feed-forward
ReLU networks of the certify IR. Pre-activation bounds come from ``bounds`` (CROWN or alpha).

Each of ``lp``, ``sdp``, ``milp`` takes ``(net_or_module, x, eps=..., norm=..., C=None, d=None,
domain=None)`` (``domain=(lo, hi)`` clips the ball to that box; None: the whole ball) and returns
a ``ConvexResult`` with ``.lower`` (B, rows) certified lower bounds of ``C @ y + d``, per-row
``.status``, ``.seconds`` and ``.verdict``.
"""
from certify.solvers.linearize import PiecewiseLinear, linearize
from certify.convex.lp import lp
from certify.convex.milp import milp
from certify.convex.radius import certified_radius
from certify.convex.result import ConvexResult
from certify.convex.sdp import sdp

__all__ = ["lp", "sdp", "milp", "certified_radius", "ConvexResult", "linearize", "PiecewiseLinear"]
