"""The result record of one smoothing certificate, and the per-input seed that makes runs reproducible."""
from __future__ import annotations

from certify.report.records import Record


def input_seed(seed: int, idx: int) -> int:
    """The per-input seed: reproducible and independent of which inputs ran before."""
    return (int(seed) * 1_000_003 + int(idx)) % (2 ** 63)


def verdict_of(prediction: int, label: int | None, radius: float) -> str:
    """abstain (prediction -1), misclassified, certified (radius > 0) or not_certified."""
    if prediction == -1:
        return "abstain"
    if label is not None and prediction != label:
        return "misclassified"
    return "certified" if radius > 0 else "not_certified"


def make_record(idx: int, label, result, seconds: float) -> Record:
    """The ``Record`` of one ``smoothing`` certify result (its evidence, and the L-inf radius it implies)."""
    ev = result.evidence()
    ev["radius_inf"] = result.radius_in("inf")
    return Record(idx=int(idx), label=None if label is None else int(label), predict=int(result.prediction),
                  engine="smoothing", method=result.noise, verdict=verdict_of(result.prediction, label, result.radius),
                  norm=result.norm, eps=None, radius=float(result.radius), seconds=float(seconds), evidence=ev)
