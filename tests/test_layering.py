"""The layering of DESIGN.md, checked on every import statement (module level or inside a
function) of certify/, bounds/, smoothing/ and benchmarks/: imports only go downwards, no engine
imports another engine or a layer-2 package, and only the CLI imports the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Longest matching prefix wins; every product module must match one entry.
LAYERS = {
    "certify": 0,                 # the package itself (version only) and certify.errors
    "certify.errors": 0,
    "certify.ir": 0,
    "certify.frontends": 0,
    "certify.spec": 0,
    "certify.data": 0,
    "certify.attack": 0,
    "certify.solvers": 0,
    "bounds": 1,
    "smoothing": 1,
    "certify.cli": 2,
    "certify.__main__": 2,
    "certify.report": 2,
    "certify.train": 2,
    "certify.models": 2,
    "certify.convex": 2,
    "certify.cluster": 2,
    "certify.vnncomp": 2,
    "certify.api": 2,             # certify.Bounded, the bounded-model object of the Python API
    "benchmarks": 2,
}
ENGINES = ("bounds", "smoothing", "certify.convex")
# The one engine-to-engine import DESIGN allows: the convex engine asks bounds for
# pre-activation bounds.
ALLOWED_ENGINE_IMPORTS = {("certify.convex", "bounds")}
# The one upward import: the package's module __getattr__ imports certify.api when ``certify.Bounded``
# is first asked for (so ``import certify`` stays layer 0 and nothing below imports the API).
ALLOWED_LAZY_EXPORTS = {("certify", "certify.api")}
CLI = ("certify.cli", "certify.__main__")


def _prefix(module: str, names) -> str | None:
    best = None
    for name in names:
        if module == name or module.startswith(name + "."):
            if best is None or len(name) > len(best):
                best = name
    return best


def layer_of(module: str) -> tuple[str, int] | None:
    """(table entry, layer) of a dotted module name, or None for a module outside the product."""
    key = _prefix(module, LAYERS)
    return None if key is None else (key, LAYERS[key])


def engine_of(module: str) -> str | None:
    return _prefix(module, ENGINES)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def product_files() -> list[Path]:
    files = []
    for top in ("certify", "bounds", "smoothing", "benchmarks"):
        files += [p for p in sorted((ROOT / top).rglob("*.py")) if "results" not in p.relative_to(ROOT).parts]
    return files


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``source``, relative ones resolved."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((node.lineno, base))
            # ``from certify import convex`` imports the submodule certify.convex
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names
                    if layer_of(f"{base}.{a.name}") not in (None, layer_of(base))]
    return out


def violations(module: str, source: str, label: str, is_package: bool = False) -> list[str]:
    """Every import of ``source`` (the text of ``module``) that breaks the layering."""
    here = layer_of(module)
    assert here is not None, f"{module} is not in the layer table of tests/test_layering.py (add it per DESIGN.md)"
    engine = engine_of(module)
    bad = []
    for line, target in imported_modules(source, module, is_package):
        there = layer_of(target)
        if there is None:
            continue                      # third-party or standard library
        where = f"{label}:{line} imports {target}"
        if (module, target) in ALLOWED_LAZY_EXPORTS:
            continue
        if there[1] > here[1]:
            bad.append(f"{where}: layer {here[1]} -> layer {there[1]}")
        other = engine_of(target)
        if engine and other and other != engine and (engine, other) not in ALLOWED_ENGINE_IMPORTS:
            bad.append(f"{where}: engine {engine} imports engine {other}")
        if engine and there[1] == 2 and other is None:
            bad.append(f"{where}: engine {engine} imports the layer-2 package {there[0]}")
        if _prefix(target, CLI) and not _prefix(module, CLI):
            bad.append(f"{where}: only the CLI imports the CLI")
    return bad


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_or_cross_engine_import(path):
    assert violations(module_name(path), path.read_text(), str(path.relative_to(ROOT)), path.name == "__init__.py") == []


def test_the_checker_reports_upward_cross_engine_and_cli_imports():
    probe = ("import smoothing\nfrom certify.report import records\nfrom . import ibp\n\n"
             "def f():\n    from certify.cli import common\n")
    found = violations("bounds.probe", probe, "probe")
    assert any("engine bounds imports engine smoothing" in v for v in found)
    assert any("layer 1 -> layer 2" in v and "certify.report" in v for v in found)
    assert any("only the CLI imports the CLI" in v for v in found)
    assert not any("bounds.ibp" in v for v in found)                 # a relative import inside the engine
    assert violations("certify.convex.probe", "import bounds\n", "probe") == []   # allowed: convex asks bounds
    found = violations("certify.convex.probe", "from certify import train\n", "probe")
    assert any("imports the layer-2 package certify.train" in v for v in found)
    assert any("layer 0 -> layer 1" in v for v in violations("certify.ir.probe", "import bounds.crown\n", "probe"))
