"""``certify check MODEL``: run every engine on a few inputs and verify the relations between their
answers that are theorems for these implementations, as a pass/fail table (exit 1 on a failure).

Per margin row ``logit[label] - logit[j]`` over the ball of radius ``--eps``:

* every sound lower bound (IBP, CROWN, alpha-CROWN, LP, MILP) <= the smallest margin PGD finds
  (and the centre's own margin); IBP's and CROWN's upper bounds >= the centre's margin;
* alpha-CROWN >= CROWN (alpha starts from CROWN's slopes and keeps the best bound it sees);
* LP >= CROWN (the triangle LP over CROWN's pre-activation bounds is the tightest linear
  relaxation CROWN's own bound is one dual point of; up to the LP's outward padding of those
  bounds, ``LP_TOL``);
* every lower bound <= the MILP's exact minimum (the margin at its optimal point, re-evaluated),
  and the MILP's dual bound within HiGHS's optimality gap of that point;
* no point PGD finds inside the ball of CROWN's certified radius has a margin <= 0;
* smoothing: the counts add up to n0 and n, the prediction is the top selection count, pA's
  lower bound is the Clopper-Pearson Beta quantile of the counts, the radius is
  sigma * Phi^-1(pA) (Gaussian), and it abstains exactly when pA < 1/2.

IBP against CROWN is no theorem (either can be tighter) and is not checked. Rows whose LP or MILP
status is not ``optimal`` are left out of the relations that need an optimum (the table says how
many rows each check compared).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import torch

from certify.errors import CertifyError

TOL = 1e-6        # relative slack of float64 comparisons between sound bounds and evaluated margins
LP_TOL = 1e-4     # LP >= CROWN: the LP pads every pre-activation bound outward by 1e-7 (1 + |bound|)
GAP_TOL = 1e-4    # HiGHS's default relative MIP gap

HELP = """\
Run IBP, CROWN, alpha-CROWN, LP, MILP (L-inf, when it solves within --milp-time), PGD and
randomized smoothing on a few inputs and verify the orderings that must hold between their
answers (every sound lower bound <= MILP exact minimum <= PGD-found margin; alpha >= CROWN;
LP >= CROWN; no attacked point inside a certified ball; smoothing radius consistent with its
own counts). Prints a pass/fail table; exits 1 if any check fails, 0 otherwise.

example: certify check digits-mlp --count 5 --eps 0.05
"""


@dataclass
class Check:
    """One relation: how many rows it compared, the worst slack (>= 0 holds), pass/fail/skip."""

    name: str
    compared: int = 0
    worst: float = math.inf
    failed: int = 0
    note: str = ""

    def add(self, slack: torch.Tensor, tol: torch.Tensor) -> None:
        slack, tol = slack.reshape(-1), tol.reshape(-1)
        if slack.numel():
            self.compared += slack.numel()
            self.worst = min(self.worst, float(slack.min()) + 0.0)   # + 0.0: no '-0' in the table
            self.failed += int((slack < -tol).sum())

    @property
    def result(self) -> str:
        if self.compared == 0:
            return "skip"
        return "FAIL" if self.failed else "pass"


def _leq(a: torch.Tensor, b: torch.Tensor, rel: float = TOL) -> tuple[torch.Tensor, torch.Tensor]:
    """(slack b - a, tolerance) of the relation a <= b."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return b - a, rel * (1 + torch.maximum(a.abs(), b.abs()).nan_to_num(posinf=0.0))


def self_check(net, X: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "inf", domain=None,
               milp_time: float = 10.0, sigma: float = 0.25, samples: int = 2000, seed: int = 0) -> list[Check]:
    """The checks of the module doc on inputs ``X`` (B, *input_shape) with labels ``y`` (B,)."""
    import bounds
    from certify import convex
    from certify.attack import pgd_margin
    from certify.spec.output import margin_values, robustness_matrix
    from certify.spec.sets import ball

    net = net.to(torch.float64)
    X = X.to(torch.float64)
    K = net.output_size
    C = robustness_matrix(y, K, dtype=torch.float64)
    s = ball(X, eps, norm, domain)
    checks: dict[str, Check] = {}

    def check(name: str, rel: tuple[torch.Tensor, torch.Tensor] | None = None, note: str = "") -> Check:
        c = checks.setdefault(name, Check(name))
        if rel is not None:
            c.add(*rel)
        c.note = c.note or note
        return c

    with torch.no_grad():
        clean = margin_values(net(X), C)
    gen = torch.Generator().manual_seed(seed)
    _, attacked = pgd_margin(net, s, C, per_row=True, steps=40, restarts=3, generator=gen)
    attack = torch.minimum(attacked, clean)

    low = {}
    for m in ("ibp", "crown", "alpha"):
        b = bounds.compute_bounds(net, s, C, method=m)
        low[m] = b.lower.detach()
        check(f"{m.upper() if m != 'alpha' else 'alpha-CROWN'} lower <= PGD margin", _leq(low[m], attack))
        if m in ("ibp", "crown"):
            check(f"{m.upper()} upper >= centre margin", _leq(clean, b.upper.detach()))
    check("alpha-CROWN >= CROWN", _leq(low["crown"], low["alpha"]))

    lp_ok = None
    try:
        lp = convex.lp(net, X, eps=eps, norm=norm, C=C, domain=domain)
        lp_ok = torch.tensor([[st == "optimal" for st in row] for row in lp.status])
        low["lp"] = lp.lower
        check("LP lower <= PGD margin", _leq(lp.lower[lp_ok], attack[lp_ok]))
        check("LP >= CROWN", _leq(low["crown"][lp_ok], lp.lower[lp_ok], LP_TOL))
    except CertifyError as e:
        check("LP lower <= PGD margin", note=f"LP not run: {e}")
        check("LP >= CROWN", note="LP not run")

    if norm == "inf":
        try:
            mi = convex.milp(net, X, eps=eps, C=C, domain=domain, mode="full", time_limit=milp_time)
            ok = torch.tensor([[st == "optimal" for st in row] for row in mi.status]) & torch.isfinite(mi.upper)
            check("MILP lower <= PGD margin", _leq(mi.lower[ok], attack[ok]))
            check("MILP point's margin - lower <= gap", _leq(mi.upper[ok] - mi.lower[ok],
                                                             GAP_TOL * (1 + mi.upper[ok].abs()), 0.0))
            for m, v in low.items():
                sel = ok if m != "lp" else ok & lp_ok
                check("every lower bound <= MILP minimum", _leq(v[sel], mi.upper[sel]))
            if not ok.any():
                check("MILP lower <= PGD margin", note=f"no MILP row optimal within {milp_time:g} s")
        except CertifyError as e:
            check("MILP lower <= PGD margin", note=f"MILP not run: {e}")
    else:
        check("MILP lower <= PGD margin", note="MILP: L-inf balls only")

    r, _ = bounds.radius(net, X, y, norm=norm, method="crown", domain=domain)
    pos = r > 0
    if pos.any():
        rs = ball(X[pos], r[pos].to(torch.float64), norm, domain)
        _, v = pgd_margin(net, rs, C[pos], steps=40, restarts=3, generator=gen)
        check("no PGD point with margin <= 0 inside CROWN's certified radius", (v, torch.zeros_like(v)))
    else:
        check("no PGD point with margin <= 0 inside CROWN's certified radius", note="no input certified")

    _smoothing_checks(net, X, K, sigma, samples, seed, check)
    return list(checks.values())


def _smoothing_checks(net, X, K: int, sigma: float, samples: int, seed: int, check) -> None:
    from scipy.stats import beta, norm as normal

    from smoothing import Smooth
    smooth = Smooth(net, K, noise="gaussian", sigma=sigma, seed=seed, batch=min(samples, 1000) + 100)
    n0, alpha = 100, 0.001
    for i in range(len(X)):
        res = smooth.certify(X[i], n0=n0, n=samples, alpha=alpha, seed=seed + i)
        counts, sel = res.counts, res.counts_selection
        k = int(counts[int(sel.argmax())])
        pa = 0.0 if k == 0 else float(beta.ppf(alpha, k, samples - k + 1))
        ok = torch.tensor([float(counts.sum() == samples and sel.sum() == n0)])
        check("smoothing counts sum to n0 and n", (ok - 1, torch.zeros(1)))
        check("smoothing pA lower = Clopper-Pearson of its counts",
              (-torch.tensor([abs(res.pa_lower - pa)]), torch.tensor([1e-9])))
        if pa >= 0.5:
            want = sigma * float(normal.ppf(pa))
            same = res.prediction == int(sel.argmax())
            check("smoothing radius = sigma Phi^-1(pA), class = top count",
                  (-torch.tensor([abs(res.radius - want) + (0.0 if same else math.inf)]), torch.tensor([1e-9])))
        else:
            check("smoothing abstains exactly when pA < 1/2", (torch.tensor([0.0 if res.abstained else -1.0]),
                                                               torch.zeros(1)))


def format_checks(checks: list[Check]) -> str:
    w = max(len(c.name) for c in checks)
    lines = [f"{'check':<{w}}  {'rows':>5}  {'worst slack':>12}  result"]
    for c in checks:
        worst = f"{c.worst:+.3e}" if c.compared else "-"
        lines.append(f"{c.name:<{w}}  {c.compared:>5}  {worst:>12}  {c.result}"
                     + (f" ({c.failed} violated)" if c.failed else "") + (f"  {c.note}" if c.note and not c.compared
                                                                            else ""))
    return "\n".join(lines)


def register(sub) -> None:
    from certify.cli.argtypes import nonneg_float, positive_float, positive_int
    from certify.cli.common import add_data_args, add_domain_args, add_model_arg

    p = sub.add_parser("check", help="cross-engine self-check of a model on a few inputs (pass/fail table)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p)
    add_data_args(p, default_n=5)
    g = p.add_argument_group("check")
    g.add_argument("--eps", type=nonneg_float, default=0.05, help="ball radius of the bound checks (default: 0.05)")
    g.add_argument("--norm", default="inf", choices=["inf", "2", "1"], help="ball norm: inf, 2 or 1 (default: inf)")
    add_domain_args(g)
    g.add_argument("--milp-time", type=positive_float, default=10.0,
                   help="MILP time limit per margin row in seconds; rows not solved are left out (default: 10)")
    g.add_argument("--sigma", type=positive_float, default=0.25, help="smoothing noise level (default: 0.25)")
    g.add_argument("--samples", type=positive_int, default=2000, help="smoothing samples n (default: 2000)")
    g.add_argument("--seed", type=int, default=0, help="seed of PGD and the smoothing noise (default: 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from certify.cli.common import check_input_shape, check_labels, domain_from, load_data, model_from
    net = model_from(args)
    if len(net.output_shape) != 1 or net.output_size < 2:
        raise CertifyError(f"model {net.name} has output shape {net.output_shape}; certify check needs class "
                           "logits (K,) with K >= 2")
    _, X, y = load_data(args)
    X = check_input_shape(net, X, args.data)
    check_labels(net, y, args.data)
    t0 = time.perf_counter()
    checks = self_check(net, X, y, args.eps, args.norm, domain_from(args), args.milp_time, args.sigma,
                        args.samples, args.seed)
    print(f"{net.name}: {len(y)} inputs, {args.norm}-ball eps {args.eps:g}, {time.perf_counter() - t0:.1f} s")
    print(format_checks(checks))
    failed = [c for c in checks if c.result == "FAIL"]
    if failed:
        print(f"certify check: {len(failed)} check(s) FAILED: an engine gave an unsound or inconsistent answer",
              file=sys.stderr)
        return 1
    return 0
