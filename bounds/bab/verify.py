"""``verify(network, prop, timeout)``: complete verification of a VNN-LIB property.

Order of work: (1) PGD with restarts on every region's violation value (a quick attack finds
most ``sat`` instances; low-dimensional inputs also get face-biased random samples); (2) for every region and every conjunction of its violation, a
branch-and-bound proof that the conjunction cannot hold: input splitting when the input has
few dimensions, ReLU splitting otherwise (``method`` forces one); box centres, bound minimizers
and LP optima are tried as counterexamples throughout, and PGD is repeated with new seeds
between proofs. ``sat`` is reported only for a point confirmed in float64 through the IR;
``unsat`` only when every conjunction of every region was proved by sound bounds (float64) or
by a MILP in a background thread: for ReLU splitting, one per obligation on networks with few
unstable ReLUs; for input splitting, one per small open box, on two threads (``bounds.bab.milp_chain``: HiGHS's
branch-and-bound dual bound, with a margin for its tolerances, as the convex engine's MILP
certificates). ReLU splitting runs a quick pass first; the obligations it leaves get their
region's intermediate bounds tightened by branch and bound (``bounds.bab.tighten``) and are
searched again over them.

Networks that are not affine/ReLU chains (residual adds, max-pooling, sigmoid, ...) get input
splitting over the ``bounds`` engine's CROWN (``bounds.bab.input_split_crown``), whatever ``method`` says;
practical only for low-dimensional inputs, sound always.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from bounds.bab.chain import to_chain
from bounds.bab.falsify import Falsifier
from bounds.bab.input_split_crown import input_split_crown
from bounds.bab.input_split import BoxMilps, input_split_bab
from bounds.bab.milp_chain import ChainMilp, MilpQueue, box_encoding
from bounds.bab.chain_bounds import bound_domains, optimized_pre_bounds
from bounds.bab.relu_split import relu_split_bab
from bounds.bab.tighten import tighten_bounds
from bounds.bab.threads import merge_stats, one_torch_thread, run_in_threads
from certify.errors import CertifyError
from certify.ir import Network
from certify.spec.vnnlib import conjunction_margins

METHODS = ("auto", "input", "relu")


@dataclass
class VerifyResult:
    """``status``: sat / unsat / unknown / timeout; ``counterexample``: (x, y) float64 flat arrays
    (only with sat); ``stats``: domains, bound_calls, lp_calls, method, seconds per phase."""

    status: str
    counterexample: tuple[np.ndarray, np.ndarray] | None = None
    stats: dict = field(default_factory=dict)


LOW_DIM = 12
MILP_MAX_BINARIES = 400   # a MILP runs beside ReLU splitting only for regions with at most this many binaries
QUICK = 0.1     # ReLU splitting: share of the timeout for a first pass over the obligations ...
TIGHTEN = 0.25  # ... then, if some are left, share of the time left for tightening their regions' bounds
TIGHTEN_DEEP = 0.6   # ... on networks with more than DEEP hidden layers, where looseness compounds
DEEP = 4
# the counts and seconds every search adds to (``verify``'s stats, and each worker thread's own)
COUNTERS = {"domains": 0, "bound_calls": 0, "lp_calls": 0, "time_falsify": 0.0, "time_bound": 0.0, "time_lp": 0.0}
WORKERS = 2   # ReLU splitting without a MILP beside it: obligations searched at once, one thread each


def _milp_sized(pre) -> bool:
    """Whether a region with pre-activation bounds ``pre`` gets a MILP beside ReLU splitting: it
    has unstable ReLUs (binaries), at most MILP_MAX_BINARIES of them."""
    return 0 < sum(int(((l < 0) & (u > 0)).sum()) for l, u in pre) <= MILP_MAX_BINARIES


def _box_key(lo: torch.Tensor, hi: torch.Tensor) -> tuple[bytes, bytes]:
    return lo.numpy().tobytes(), hi.numpy().tobytes()


def choose_method(n_inputs: int, n_relus: int) -> str:
    """Input splitting for low-dimensional inputs (<= 12 dims), ReLU splitting otherwise."""
    return "input" if n_inputs <= LOW_DIM or n_relus == 0 else "relu"


@one_torch_thread()
def verify(network: Network, prop, timeout: float = 60.0, method: str = "auto", seed: int = 0,
           batch: int | None = None, iterations: int | None = None, pgd_restarts: int = 10,
           falsify_first: bool = True, use_milp: bool = True, tighten: float | None = None,
           workers: int | None = None, progress=None) -> VerifyResult:
    """Decide ``prop`` (a ``certify.spec.vnnlib.VnnlibProperty``) on ``network`` within ``timeout`` s.

    ``workers``: ReLU splitting with no MILP beside it (no region with at most MILP_MAX_BINARIES
    unstable ReLUs, or ``use_milp=False``) searches that many obligations at once and tightens
    bounds on that many threads, each with one torch thread (default WORKERS, at most the core
    count; ``stats`` seconds then add up over the threads).
    torch runs on one intra-op thread inside (restored after): ``verify`` uses the other cores
    through threads of its own (MILPs, or searches; ``workers``), which more torch threads would
    oversubscribe.
    ``falsify_first=False`` skips the initial attack (tests use it to make BaB find the sats);
    ``use_milp=False`` runs ReLU splitting without the MILP beside it; ``tighten``: the share of
    the time left after ReLU splitting's quick pass that tightens the intermediate bounds by
    branch and bound (``bounds.bab.tighten``; 0: never; default TIGHTEN, or TIGHTEN_DEEP on
    networks with more than DEEP hidden layers, whose loose intermediate bounds compound).
    ``progress(stats)`` is called with the live stats dict at the start and at the end: a caller
    may read it from another thread meanwhile (e.g. for a progress bar)."""
    if method not in METHODS:
        raise CertifyError(f"verify: method must be one of {', '.join(METHODS)}, got {method!r}")
    n_in, n_out = network.input_size, network.output_size
    if (prop.n_inputs, prop.n_outputs) != (n_in, n_out):
        raise CertifyError(f"{prop.path}: property is for {prop.n_inputs} inputs / {prop.n_outputs} outputs, "
                           f"the network has {n_in} / {n_out}")
    t0 = time.monotonic()
    deadline = t0 + timeout
    stats = dict(COUNTERS, method=None, regions=len(prop.regions))
    if progress is not None:
        progress(stats)

    milps = None   # ReLU splitting: the MILP queue beside branch and bound (``bounds.bab.milp_chain``)
    n_workers = 1   # search threads: more only for ReLU splitting without a MILP beside it (below)

    def done(status, ce=None):
        if milps is not None:
            milps.close()
            stats["milp_calls"] = milps.solves
        stats["time_total"] = time.monotonic() - t0
        if progress is not None:
            progress(stats)
        return VerifyResult(status, ce, stats)

    if not prop.regions:
        return done("unsat")
    fal = Falsifier(network, prop, seed)
    boxes = [(torch.as_tensor(r.lower), torch.as_tensor(r.upper)) for r in prop.regions]
    t = time.monotonic()
    for (lo, hi), reg in zip(boxes if falsify_first else [], prop.regions):
        how, ce = "pgd", fal.check_points(torch.stack([(lo + hi) / 2, lo, hi]))
        if ce is None:
            ce, _ = fal.pgd(lo.unsqueeze(0), hi.unsqueeze(0), reg.disjuncts, steps=50, restarts=pgd_restarts,
                            deadline=deadline)
        if ce is None and n_in <= LOW_DIM:
            # small inputs: thousands of attacks side by side, then 50k samples biased to the
            # box's faces (where PGD stalls), cost well under a second
            ce, _ = fal.pgd(lo.unsqueeze(0), hi.unsqueeze(0), reg.disjuncts, steps=100, restarts=1,
                            parallel=2000, deadline=deadline)
            if ce is None:
                how, ce = "sample", fal.sample(lo, hi, reg.disjuncts)
        if ce is not None:
            stats["time_falsify"] += time.monotonic() - t
            stats["found_by"] = how
            return done("sat", ce)
    stats["time_falsify"] += time.monotonic() - t

    t = time.monotonic()
    chain = to_chain(network)
    stats["time_setup"] = time.monotonic() - t
    if chain is None:
        m = "generic-input"
    else:
        n_relus = sum(chain.hidden_sizes)
        m = choose_method(n_in, n_relus) if method == "auto" and n_relus else (method if n_relus else "input")
    stats["method"] = m
    deep = chain is not None and len(chain.hidden_sizes) > DEEP
    # the dtype of ReLU splitting's alpha/beta steps (``bound_domains``; the bound itself is always
    # float64): float32 is faster, float64 on deep networks, where float32 steps lose borderline proofs
    opt_dtype = torch.float64 if deep else torch.float32
    net64 = network.detach().to(torch.float64)
    jobs = []
    for (lo, hi), reg in zip(boxes, prop.regions):
        for A, b in reg.disjuncts:
            if A.shape[0] == 0:   # no output condition: every input of the region violates
                ce = fal.check_points(((lo + hi) / 2).unsqueeze(0))
                return done("sat", ce) if ce is not None else done("unknown")
            C, d = (torch.as_tensor(v) for v in conjunction_margins(A, b))
            jobs.append((lo, hi, C, d))
    roots = {}   # per region box (ReLU splitting): what its obligations share, see below
    relu_states = {}   # per obligation (ReLU splitting): its open domains when a pass timed it out
    last_attacked = set()   # obligations given their last attack (``attempt``)

    def root_bound(j):
        """CROWN's lower bound of obligation j over its region's current root bounds."""
        lo, hi, C, d = jobs[j]
        return float(bound_domains(chain, lo.reshape(1, -1), hi.reshape(1, -1), C.unsqueeze(0), d.unsqueeze(0),
                                   pre=roots[_box_key(lo, hi)]["pre"], recompute=False).lower.max())

    def milp_candidates():
        """A counterexample from the MILP queue's candidates (each checked once in float64)."""
        while milps is not None and milps.candidates:
            k, x = milps.candidates.popitem()
            C, d = jobs[k][2:]
            ce = fal.check_points(torch.as_tensor(x, dtype=torch.float64).reshape(1, -1), [(C, -d)])
            if ce is not None:
                return ce
        return None

    def attempt(j, until, stats=stats, abort=None):
        """Obligation j until ``until`` (the instance's ``deadline`` or earlier): (verdict,
        counterexample, found_by). ``stats``: where its counts go (a worker thread's own dict);
        ``abort``: an Event that ends its search as at a timeout (another worker found a
        counterexample)."""
        lo, hi, C, d = jobs[j]
        dis = [(C, -d)]

        def try_points(xs, dis=dis):
            return fal.check_points(xs.to(torch.float64), dis)

        def timed(search, *args, **kw):
            t = time.monotonic()
            out = search(*args, **kw)
            stats["time_falsify"] += time.monotonic() - t
            return out

        def attack(**kw):
            return timed(fal.pgd, lo.unsqueeze(0), hi.unsqueeze(0), dis, **kw)[0]

        if m == "generic-input":
            verdict, ce = input_split_crown(net64, lo, hi, C, d, until, try_points, stats)
        elif m == "input":
            # three searches take turns in time slices that double after each round, each one
            # continuing where it stopped, so an instance is solved in about 3x the time of the
            # search best suited to it; none is best on every instance: splitting the most
            # sensitive dimension, the better of the 2 most sensitive, and smart branching over 5
            # with alpha steps. Once 30% of the time is gone a large attack and 200k face-biased
            # samples run (violations in thin regions).
            its = 3 if iterations is None else iterations
            # the 2-candidate search hands its small open boxes to MILPs in two background threads
            # (``BoxMilps``), which keep working while the other searches have their turns.
            # When only boxes in those threads are left to it, it gives its turn up at once
            # (``wait=False``, instead of waiting the turn out), and the other searches stop as soon
            # as the threads have news for it (``stop``): it runs then, inside their turn
            box_milps = BoxMilps(chain, lo, hi, C, d) if use_milp else None
            states, M = [{}, {}, {}], 1           # M: the search that parks boxes in ``box_milps``

            def waiting():   # the MILP search has nothing left but parked boxes, and news of them
                return "stack" in states[M] and not states[M]["stack"] and box_milps.settled()

            # the 1- and 2-candidate searches also try the input that causes most of the unstable
            # neurons' ranges (``instability``; the 5-candidate one tries every input already)
            searches = [dict(batch=batch or 1024, iterations=0, candidates=1, instability=True),
                        dict(batch=batch or 512, iterations=0, candidates=2, milp=box_milps, instability=True,
                             wait=False),
                        dict(batch=batch or 128, iterations=its, candidates=5)]
            if box_milps is not None:
                for k, s in enumerate(searches):
                    if k != M:
                        s["stop"] = waiting

            def search(k, until):   # search k, from where it stopped, until ``until``
                return input_split_bab(chain, lo, hi, C, d, until, try_points, stats, state=states[k], **searches[k])

            def run_turn(k, until):
                while True:
                    verdict, ce = search(k, until)
                    if verdict != "timeout" or k == M or box_milps is None or not waiting():
                        return verdict, ce
                    verdict, ce = search(M, until)
                    if verdict != "timeout" or time.monotonic() >= until:
                        return verdict, ce
                    # search k goes on with what is left of its turn

            try:
                start, slice_, turn, attacked = time.monotonic(), 0.5, 0, not falsify_first
                verdict, ce = "timeout", None
                while time.monotonic() < until:
                    k = turn % len(searches)
                    verdict, ce = run_turn(k, min(until, time.monotonic() + slice_))
                    if verdict != "timeout":
                        break
                    slice_ *= 2 if k == len(searches) - 1 else 1
                    turn += 1
                    now = time.monotonic()
                    if not attacked and now - start > 0.3 * (until - start) and now < until:
                        attacked = True
                        ce = attack(steps=300, restarts=1, parallel=10000, deadline=until)
                        if ce is not None:
                            return "sat", ce, "pgd"
                        ce = timed(fal.sample, lo, hi, dis, n=200000)
                        if ce is not None:
                            return "sat", ce, "sample"
            finally:
                if box_milps is not None:
                    box_milps.close()
                    stats["milp_calls"] = stats.get("milp_calls", 0) + box_milps.calls
                    stats["milp_proved"] = stats.get("milp_proved", 0) + box_milps.proved
        else:
            root = roots[_box_key(lo, hi)]

            def try_and_attack(xs):
                # the bound minimizers of the worst open domains are checked, then attacked by a
                # short PGD from there (they lie near the likeliest violations)
                ce = try_points(xs)
                return ce if ce is not None or not falsify_first else attack(steps=20, restarts=1, starts=xs,
                                                                              deadline=until)

            def bab():
                # ends when the MILP queue proves this obligation or has a candidate for any
                stop = None if milps is None else (lambda: j in milps.proved or bool(milps.candidates))
                if abort is not None:
                    stop = abort.is_set if stop is None else (lambda s=stop: abort.is_set() or s())
                return relu_split_bab(chain, lo, hi, C, d, until, try_and_attack, stats, batch=batch or 256,
                                      iterations=iterations or 10, root_pre=root["pre"],
                                      pre_alpha=root["slopes"], stop=stop, state=relu_states.setdefault(j, {}),
                                      opt_dtype=opt_dtype)

            verdict = "timeout"
            while True:
                ce = milp_candidates()
                if ce is not None:
                    return "sat", ce, "milp"
                if milps is not None and j in milps.proved:
                    stats["milp_proved"] = stats.get("milp_proved", 0) + 1
                    return "unsat", None, None
                if verdict == "unknown" or time.monotonic() >= until:
                    break
                verdict, ce = bab()   # stopped early by the queue: its news are read above
                if milps is None or verdict in ("sat", "unsat"):
                    break
            if milps is not None and verdict in ("sat", "unsat"):
                milps.drop(j)
        if verdict == "sat":
            return "sat", ce, "bab"
        if verdict in ("timeout", "unknown"):
            # a last attack on this obligation before giving up, once per obligation (it can time
            # out in several passes), cut short at the instance's deadline
            if time.monotonic() < until and falsify_first and j not in last_attacked and not (
                    abort is not None and abort.is_set()):
                last_attacked.add(j)
                ce = attack(steps=100, restarts=pgd_restarts, deadline=deadline)
                if ce is not None:
                    return "sat", ce, "pgd"
        return verdict, None, None

    # each (region, conjunction) is a proof obligation. First pass ("share"): each gets an equal
    # share of the time left (a violation of a later one is not starved by a hard earlier one);
    # second pass ("rest"): the ones that timed out, in turn, with all the time left (ReLU
    # splitting resumes each where the first pass stopped it).
    status, pending = "unsat", list(range(len(jobs)))
    if m == "relu":
        # every region's pre-activation bounds once (alpha-CROWN, layer by layer) with the slopes
        # that gave them (and, built when first needed, its MILP encoding), then the obligations
        # with the worst root bound first: the likeliest violations are searched first
        t = time.monotonic()
        for lo, hi, C, d in jobs:
            key = _box_key(lo, hi)
            if key not in roots:
                pre, slopes = optimized_pre_bounds(chain, lo.reshape(1, -1).double(), hi.reshape(1, -1).double(),
                                                   keep_alpha=True)
                roots[key] = {"pre": pre, "slopes": slopes}
        pending.sort(key=root_bound)
        stats["time_bound"] += time.monotonic() - t
        if use_milp and any(_milp_sized(root["pre"]) for root in roots.values()):
            # a MILP over the root bounds, one obligation after the other in the same order, runs
            # on the other core beside branch and bound when the region has few unstable ReLUs;
            # whichever decides an obligation first ends it
            def make(j):
                lo, hi, C, d = jobs[j]
                root = roots[_box_key(lo, hi)]
                if not _milp_sized(root["pre"]):
                    return None
                enc = root.get("encoding")   # dropped when the bounds are tightened (main thread)
                if enc is None:
                    enc = root["encoding"] = box_encoding(chain, lo, hi, root["pre"])
                return ChainMilp(chain, enc, C, d)
            milps = MilpQueue(pending, make, deadline)
        else:   # no MILP: the other cores run searches of their own (``run_stage``, ``tighten_regions``)
            n_workers = max(1, min(WORKERS if workers is None else workers, os.cpu_count() or 1))

    def tighten_regions(pending, until):
        """The pending obligations' regions get their intermediate bounds tightened by branch and
        bound (time shared equally) and the obligations are put back in order of their new root
        bounds; a MILP built from then on encodes the tighter bounds."""
        boxes = {_box_key(*jobs[j][:2]): jobs[j][:2] for j in pending}   # (in the order of pending)
        t = time.monotonic()
        for i, (key, (lo, hi)) in enumerate(boxes.items()):
            root = roots[key]
            share = time.monotonic() + (until - time.monotonic()) / (len(boxes) - i)
            root["pre"], root["slopes"] = tighten_bounds(chain, lo, hi, root["pre"], root["slopes"], share, stats,
                                                         workers=n_workers, opt_dtype=opt_dtype)
            root.pop("encoding", None)
        relu_states.clear()   # domains bounded over the old bounds: start over from the tighter ones
        pending.sort(key=root_bound)
        stats["time_tighten"] = stats.get("time_tighten", 0.0) + time.monotonic() - t

    # ReLU splitting on networks with intermediate layers to tighten: a quick pass first (QUICK of
    # the timeout shared equally; most instances end there), then the regions of what is left get
    # their bounds tightened (``tighten_regions``), then the two passes over the tighter bounds.
    stages = ["share", "rest"]
    if tighten is None:
        tighten = TIGHTEN_DEEP if deep else TIGHTEN
    if m == "relu" and tighten > 0 and len(chain.hidden_sizes) > 1:
        stages = ["quick", "tighten"] + stages

    def run_stage(stage, pending):
        """One pass over ``pending`` (see above) on ``n_workers`` threads, each taking the next
        obligation when it is done with one (in "quick" and "share", with its share of the time
        left: n_workers x (time left) / (obligations left)). Returns (obligations left, any unknown,
        (counterexample, found_by) or None)."""
        end = min(deadline, t0 + QUICK * timeout) if stage == "quick" else deadline
        queue, left, out = list(pending), [], {"unknown": False, "sat": None}
        lock, abort = threading.Lock(), threading.Event()

        def work(own):
            while not abort.is_set():
                with lock:
                    if not queue or time.monotonic() > deadline:
                        return
                    n_left, j = len(queue), queue.pop(0)
                now = time.monotonic()
                until = deadline if stage == "rest" else min(end, now + max(0.0, end - now) * n_workers / n_left)
                verdict, ce, how = attempt(j, until, own, abort if n_workers > 1 else None)
                with lock:
                    if verdict == "sat" and out["sat"] is None:
                        out["sat"] = (ce, how)
                        abort.set()
                    elif verdict == "timeout":
                        left.append(j)
                    elif verdict == "unknown":
                        out["unknown"] = True

        if n_workers == 1:
            work(stats)
        else:
            owns = [dict(COUNTERS) for _ in range(n_workers)]

            def guarded(k):
                try:
                    work(owns[k])
                except BaseException:
                    abort.set()   # the other workers stop too; ``run_in_threads`` re-raises it
                    raise

            run_in_threads(guarded, n_workers)
            merge_stats(stats, owns)
        left += queue   # not reached before the deadline
        left.sort(key=pending.index)
        return left, out["unknown"], out["sat"]

    for stage in stages:
        if stage == "tighten":
            tighten_regions(pending, time.monotonic() + tighten * (deadline - time.monotonic()))
            continue
        if time.monotonic() > deadline:
            return done("timeout")
        pending, unknown, sat = run_stage(stage, pending)
        if sat is not None:
            stats["found_by"] = sat[1]
            return done("sat", sat[0])
        if unknown:
            status = "unknown"
        if not pending or (len(jobs) == 1 and stage == "share"):
            break
    if pending:
        return done("timeout")
    return done(status)
