"""What produced a result file: its first line, ``{"provenance": {...}}``.

The provenance dict holds ``format``, ``certify_version``, ``command``, ``argv`` (the command
line), ``model`` and ``model_sha256``, ``data`` (and ``data_sha256`` for a data file), ``split``,
``engine``, ``method``, ``norm``, the engine's parameters (``eps`` or ``sigma``, ``n0``, ``n``,
``alpha``, ``seed``; absent ones are None), ``config`` (every flag that can change a result, by
the name a user types: ``{"--eps": 0.02, ...}``) and ``created`` (UTC time).

``differences(old, new)`` names what makes two runs' results incomparable (command, model
contents, data, split, config), so a resumed run never mixes records of two configurations.
"""
from __future__ import annotations

import hashlib
import os
import time

FORMAT = "certify-results-v1"


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make(command: str, argv: list[str], model: str | None, model_sha256: str | None, data: str | None,
         split: str | None, engine: str, method: str | None, norm: str | None, config: dict,
         **params) -> dict:
    """A provenance dict (see the module doc); ``params``: eps, sigma, n0, n, alpha, seed."""
    from certify import __version__
    prov = {"format": FORMAT, "certify_version": __version__, "command": command, "argv": list(argv),
            "model": model, "model_sha256": model_sha256, "data": data, "split": split}
    if data is not None and os.path.isfile(data):
        prov["data_sha256"] = file_sha256(data)
    prov.update(engine=engine, method=method, norm=norm)
    for k in ("eps", "sigma", "n0", "n", "alpha", "seed"):
        prov[k] = params.pop(k, None)
    prov.update(params)
    prov["config"] = dict(config)
    prov["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return prov


def is_header(obj) -> bool:
    """Is a parsed JSON line a provenance header?"""
    return isinstance(obj, dict) and set(obj) == {"provenance"} and isinstance(obj["provenance"], dict)


def _show(v) -> str:
    if isinstance(v, list):
        return " ".join(_show(x) for x in v)
    if isinstance(v, bool) or v is None:
        return {True: "on", False: "off", None: "unset"}[v]
    return f"{v:g}" if isinstance(v, float) else str(v)


def differences(old: dict, new: dict, where: str) -> list[str]:
    """Human-readable differences that make ``new``'s results incomparable with ``old``'s,
    e.g. ``--eps 0.02 != 0.01 in r.jsonl`` (empty: the same configuration)."""
    out = []
    if old.get("command") != new.get("command"):
        out.append(f"command {new.get('command')} != {old.get('command')} in {where}")
    if old.get("model_sha256") != new.get("model_sha256"):
        out.append(f"model {new.get('model')} (sha256 {str(new.get('model_sha256'))[:12]}) != {old.get('model')} "
                   f"(sha256 {str(old.get('model_sha256'))[:12]}) in {where}")
    both = "data_sha256" in old and "data_sha256" in new
    if (old.get("data_sha256") != new.get("data_sha256")) if both else (old.get("data") != new.get("data")):
        out.append(f"--data {new.get('data')} != {old.get('data')} in {where}")
    if old.get("split") != new.get("split"):
        out.append(f"--split {new.get('split')} != {old.get('split')} in {where}")
    a, b = old.get("config") or {}, new.get("config") or {}
    for k in list(b) + [k for k in a if k not in b]:
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            va = _show(a[k]) if k in a else "(not recorded)"
            vb = _show(b[k]) if k in b else "(not given)"
            out.append(f"{k} {vb} != {va} in {where}")
    return out


def label(prov: dict) -> str:
    """A short curve label: model, method and the set's size, e.g. ``digits-mlp crown eps=0.02``."""
    model = os.path.basename(str(prov.get("model") or "model"))
    parts = [model, str(prov.get("method") or prov.get("engine") or "")]
    if prov.get("sigma") is not None:
        parts.append(f"sigma={_show(prov['sigma'])}")
    elif prov.get("eps") is not None:
        parts.append(f"eps={_show(prov['eps'])}")
    elif (prov.get("config") or {}).get("--radius"):
        parts.append("radius")
    return " ".join(p for p in parts if p)
