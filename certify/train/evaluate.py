"""Evaluation of a trained model: clean accuracy, PGD-20 accuracy and certified accuracy by the
engine that matches the training objective, one common ``Record`` per test input.

* Bound-trained (and attack-trained / standard) models: ``bounds.crown`` or ``bounds.alpha`` on
  the L-inf ball of radius ``eps`` (clipped to [0, 1]); verdict ``certified`` when every margin
  lower bound is > 0, ``falsified`` when PGD-20 found a checked counterexample, else
  ``not_certified``. PGD-20 accuracy counts inputs whose PGD-20 point is still classified right.
* Noise-trained models (gaussian, smoothadv): ``smoothing.Smooth(...).certify`` (Cohen et al.
  2019) with the training sigma; certified at ``eps`` when the certified L2 radius exceeds it
  (and the prediction is right); PGD-20 runs on the base classifier in the L2 ball of ``eps``.

Records go to a JSON-lines file through ``ResultWriter`` (so an interrupted evaluation resumes);
the summary (accuracies, counts, settings) is returned.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from certify.attack import pgd_margin
from certify.data import PIXEL_RANGE
from certify.report.records import Record, ResultWriter
from certify.spec import ball, margin_values, robustness_matrix

DOMAIN = PIXEL_RANGE        # the balls of the evaluation are clipped to the images' range


def _pgd20(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, K: int):
    """PGD-20 (one random restart besides the start at x) on the smallest margin: (points, margins (B,))."""
    C = robustness_matrix(y, K, dtype=x.dtype)
    s = ball(x, eps, norm, DOMAIN)
    g = torch.Generator().manual_seed(0)
    return pgd_margin(model, s, C, steps=20, restarts=2, generator=g)


def evaluate_bounds(model: nn.Module, net, X: torch.Tensor, y: torch.Tensor, idx: list[int], eps: float,
                    writer: ResultWriter, method: str = "crown", batch_size: int = 100,
                    progress: bool = False) -> None:
    """Certify every input (not yet in ``writer``) with ``bounds.<method>`` at L-inf ``eps``, each
    margin row bounded by the better of that method and IBP (both sound, so their maximum is: IBP
    is often the tighter of the two on IBP-trained networks at large eps, and costs one pass).
    Records name the method ``<method>+ibp``."""
    import bounds
    K = net.output_size
    todo = [k for k, i in enumerate(idx) if i not in writer.done]
    chunks = [todo[a:a + batch_size] for a in range(0, len(todo), batch_size)]
    if progress:
        from certify.report.progress import progress as bar
        chunks = bar(chunks, total=len(chunks), desc=f"certify ({method})")
    for chunk in chunks:
        t0 = time.perf_counter()
        xb, yb = X[chunk], y[chunk]
        with torch.no_grad():
            pred = net(xb).argmax(1)
        xa, adv = _pgd20(model, xb, yb, eps, "inf", K)
        with torch.no_grad():
            adv_check = margin_values(net(xa), robustness_matrix(yb, K, dtype=xb.dtype)).min(1).values
        C = robustness_matrix(yb, K, dtype=xb.dtype)
        fn = bounds.alpha if method == "alpha" else bounds.crown
        with torch.no_grad() if method != "alpha" else torch.enable_grad():
            lb_m = fn(net, xb, eps=eps, norm="inf", C=C, domain=DOMAIN, upper=False).lower.detach()
        with torch.no_grad():
            lb_i = bounds.ibp(net, xb, eps=eps, norm="inf", C=C, domain=DOMAIN).lower
        lb = torch.maximum(lb_m, lb_i).min(1).values
        per = (time.perf_counter() - t0) / len(chunk)
        for j, k in enumerate(chunk):
            correct = bool(pred[j] == yb[j])
            ev = {"margin_lower_bound": float(lb[j]), "pgd20_margin": float(adv_check[j]),
                  f"{method}_margin_lower_bound": float(lb_m[j].min()), "ibp_margin_lower_bound": float(lb_i[j].min()),
                  "domain": list(DOMAIN)}
            if not correct:
                verdict = "misclassified"
            elif lb[j] > 0 and adv_check[j] < 0:
                verdict, ev["note"] = "unknown", "bound and attack disagree"
            elif lb[j] > 0:
                verdict = "certified"
            elif adv_check[j] < 0:
                verdict = "falsified"
            else:
                verdict = "not_certified"
            writer.write(Record(idx=idx[k], label=int(yb[j]), predict=int(pred[j]), engine="bounds", method=f"{method}+ibp",
                                verdict=verdict, norm="inf", eps=float(eps), radius=None, seconds=per, evidence=ev))


def summarize(records, eps: float, method: str, engine: str) -> dict:
    """Clean / PGD-20 / certified accuracy of a list of records."""
    recs = list(records)
    n = max(len(recs), 1)
    clean = sum(r.correct for r in recs)
    pgd_ok = sum(r.correct and r.evidence.get("pgd20_margin", 0.0) > 0 for r in recs)
    cert = sum(r.certified for r in recs)
    return {"n": len(recs), "engine": engine, "method": method, "eps": eps, "clean_acc": clean / n,
            "pgd20_acc": pgd_ok / n, "certified_acc": cert / n,
            "verdicts": {v: sum(r.verdict == v for r in recs) for v in sorted({r.verdict for r in recs})}}


def evaluate_smoothing(model: nn.Module, X: torch.Tensor, y: torch.Tensor, idx: list[int], eps: float,
                       sigma: float, writer: ResultWriter, n0: int = 100, n: int = 10_000, alpha: float = 0.001,
                       progress: bool = False) -> None:
    """Cohen et al.'s CERTIFY (``smoothing.Smooth``, Gaussian noise of the training sigma) per input,
    seeded by the input's index (a resumed run gives the same answers); certified at L2 ``eps``
    when the prediction is right and the certified radius is >= eps."""
    from smoothing import Smooth
    K = int(model(X[:1]).shape[1])
    smooth = Smooth(model, K, "gaussian", sigma, input_shape=tuple(X.shape[1:]))
    todo = [k for k, i in enumerate(idx) if i not in writer.done]
    if progress:
        from certify.report.progress import progress as bar
        todo = bar(todo, total=len(todo), desc="certify (smoothing)")
    for k in todo:
        t0 = time.perf_counter()
        xk, yk = X[k:k + 1], y[k:k + 1]
        _, adv = _pgd20(model, xk, yk, eps, "2", K) if eps > 0 else (None, None)
        with torch.no_grad():
            res = smooth.certify(X[k], n0=n0, n=n, alpha=alpha, seed=idx[k])
            base_margin = float(margin_values(model(xk), robustness_matrix(yk, K, dtype=xk.dtype)).min())
        ev = res.evidence()
        ev["pgd20_margin"] = float(adv[0]) if adv is not None else base_margin
        label = int(yk[0])
        if res.abstained:
            verdict = "abstain"
        elif res.prediction != label:
            verdict = "misclassified"
        elif res.radius >= eps:
            verdict = "certified"
        else:
            verdict = "not_certified"
        writer.write(Record(idx=idx[k], label=label, predict=res.prediction, engine="smoothing", method="cohen",
                            verdict=verdict, norm="2", eps=float(eps), radius=float(res.radius),
                            seconds=time.perf_counter() - t0, evidence=ev))


def certified_at(records, radii) -> dict:
    """Smoothing: fraction of records that are correct with certified radius >= r, per r."""
    recs = list(records)
    n = max(len(recs), 1)
    return {str(r): sum(x.correct and x.verdict != "abstain" and (x.radius or 0.0) >= r for x in recs) / n
            for r in radii}


def evaluate_model(model: nn.Module, args, cfg, net) -> dict:
    """The CLI's evaluation: test split of ``args.data``, records into ``args.out/certify.jsonl``."""
    import os

    from certify.data import load_dataset
    from certify.train.objectives import FAMILY, NORM
    X, y = load_dataset(args.data, "test", args.data_dir)
    idx = list(range(0, len(X), args.eval_skip))[: args.eval_n]
    sel = torch.tensor(idx)
    X, y = X[sel], y[sel]
    eps = args.eval_eps if args.eval_eps is not None else args.eps
    model.eval()
    with ResultWriter(os.path.join(args.out, "certify.jsonl"), resume=True) as w:
        if FAMILY[cfg.objective] == "smoothing":
            evaluate_smoothing(model, X, y, idx, eps, cfg.sigma, w, args.n0, args.n_smooth, args.alpha, progress=True)
            out = summarize(w.records(), eps, "cohen", "smoothing")
            out["sigma"] = cfg.sigma
            out["certified_at"] = certified_at(w.records(), [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0])
        else:
            evaluate_bounds(model, net, X, y, idx, eps, w, args.certify_method, progress=True)
            out = summarize(w.records(), eps, f"{args.certify_method}+ibp", "bounds")
    out["norm"] = NORM[cfg.objective]
    return out
