"""``VerifyOptions``: every setting of ``bounds.bab.verify`` in one place (one line each).

Shares are fractions of a time budget; counts are per obligation unless said otherwise. The
defaults are the settings ``verify`` runs with; none of them changes what a verdict means (every
``sat`` is confirmed in float64, every ``unsat`` rests on sound bounds), only how the time is spent.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from certify.errors import CertifyError


@dataclass(frozen=True)
class VerifyOptions:
    method: str = "auto"          # "auto" (split chosen from the root bound's scores), "input", "relu", "both", or a stage name
    seed: int = 0                 # seed of the attacks' random starts and samples
    falsify_first: bool = True    # attack every region before any proof (False: the searches must find the sats)
    pgd_restarts: int = 10        # restarts of the opening and closing PGD attacks
    opening: float = 0.2          # share of the timeout the opening attack may take (the closing attacks run later)
    attack_max_dims: int = 12     # inputs with at most this many dimensions also get 2000 side-by-side attacks and 50k samples
    use_milp: bool = True         # MILPs beside the searches (ReLU splitting: per obligation; input splitting: small boxes)
    milp_max_binaries: int = 400  # a MILP runs beside ReLU splitting only for regions with at most this many unstable ReLUs
    workers: int | None = None    # ReLU splitting without a MILP beside it: obligations searched at once (None: default_workers)
    default_workers: int = 2      # ``workers`` when not given (at most the core count)
    batch: int | None = None      # domains per bound call (None: each search's own, see relu_batch and input_batches)
    iterations: int | None = None  # alpha/beta steps per bound call (None: relu_iterations / input_iterations)
    relu_batch: int = 256         # ReLU splitting: most domains per bound call (fewer where the memory budget says)
    memory: int | None = None     # bytes the activation-split searches may hold, all workers together (None: bounds.memory.search_budget)
    relu_iterations: int = 10     # ReLU splitting: alpha/beta steps per bound call
    input_batches: tuple = (1024, 512, 128)   # input splitting's three searches (1, 2 and 5 candidate dims): boxes per call
    input_iterations: int = 3     # input splitting's 5-candidate search: alpha steps per bound call
    input_slice: float = 0.5      # input splitting: seconds of the first turn of each search (doubled every round)
    late_attack: float = 0.3      # input splitting: share of an obligation's time after which a large attack runs once
    graph_batch: int = 1024       # input splitting over the general bound engine: boxes per bound call
    graph_candidates: int = 3     # ... and dimensions it tries per split (the best of them is kept)
    activation_batch: int = 128   # activation splitting over the general bound engine: most domains per bound call
    activation_iterations: int = 10   # activation splitting over the general bound engine: alpha/beta steps per call
    root_alpha: float = 0.5       # a search over the general bound engine: its root alpha-CROWN's share of the time left
    quick: float = 0.1            # ReLU splitting: share of the timeout for a first pass over the obligations ...
    tighten: float | None = None  # ... then share of the time left for tightening their regions' bounds (None: by depth; 0: never)
    tighten_shallow: float = 0.25  # ``tighten`` on networks with at most ``deep`` hidden layers
    tighten_deep: float = 0.6     # ``tighten`` on deeper networks, whose loose intermediate bounds compound
    deep: int = 4                 # more hidden layers than this: deep (tighten_deep, float64 alpha/beta steps)

    def with_fields(self, **changes) -> "VerifyOptions":
        """A copy with ``changes`` (field names of this class; a ``CertifyError`` names any other)."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise CertifyError(f"verify: unknown option(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return replace(self, **changes)
