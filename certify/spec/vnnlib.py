"""VNN-LIB (the VNN-COMP subset) -> a list of input boxes, each with its violation condition.

Semantics. A ``.vnnlib`` file describes the *counterexample region*: the conjunction of all its
``assert`` formulas over inputs ``X_i`` (the flattened network input, row-major) and outputs
``Y_j``. The property is *violated* (``sat``) iff some input satisfying the formula has an
output satisfying it too; it *holds* (``unsat``) otherwise.

We bring the conjunction of all asserts into disjunctive normal form (``or`` distributes over
``and``), so each DNF term is a conjunction of atoms. A term's input atoms give a box (they must
bound every ``X_i`` from both sides: variable-vs-constant only); its output atoms give a
conjunction ``A @ y <= b``. Terms with the same box are grouped into one ``Region``, whose
violation is the disjunction of its conjunctions. So both shapes seen in VNN-COMP work:
an ``or`` of input boxes (one region per box, each with the shared output condition) and input and output atoms mixed inside one ``or`` (``test_tiny``). Terms whose box
is empty (some lower > upper) cannot be satisfied and are dropped.

Supported: ``declare-const``, ``assert``, ``and``, ``or``, ``<=``, ``>=`` between a variable
and a numeric literal (scientific notation allowed) or two variables of the outputs, ``;``
comments, ``.vnnlib.gz`` files. Anything else is a ``CertifyError`` "FILE:LINE: message".

Shapes: ``Region.lower/upper`` float64 numpy (n_inputs,); each conjunction ``(A, b)`` is float64
(k, n_outputs), (k,). ``conjunction_margins(A, b)`` gives ``(C, d) = (A, -b)``: ``y`` avoids the
conjunction iff some row of ``C @ y + d = A y - b`` is > 0 (the negation of "every row of
A y <= b"), so the property holds on a region iff this is true for every conjunction at every
input of its box.
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from certify.errors import CertifyError

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class Region:
    """One input box and the violation condition on it: OR over conjunctions ``A @ y <= b``."""

    lower: np.ndarray
    upper: np.ndarray
    disjuncts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def violated(self, y: np.ndarray, tol: float = 0.0) -> bool:
        """Does the output ``y`` (n_outputs,) satisfy some conjunction (``A y <= b + tol``)?"""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        return any(bool(np.all(A @ y <= b + tol)) for A, b in self.disjuncts)

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return bool(np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))


@dataclass
class VnnlibProperty:
    """The parsed file: a violation exists iff some region has an input whose output violates."""

    path: str
    n_inputs: int
    n_outputs: int
    regions: list[Region]

    def violated_by(self, x: np.ndarray, y: np.ndarray, tol: float = 0.0) -> bool:
        """Is (x, y) a counterexample: x in some region's box and y violating that region?"""
        return any(r.contains(x, tol) and r.violated(y, tol) for r in self.regions)


def conjunction_margins(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(C, d) = (A, -b)``: the conjunction ``A y <= b`` is avoided at ``y`` iff some row of
    ``C @ y + d`` is > 0. To prove it is avoided on a set, show max_row(lower bound) > 0."""
    return np.asarray(A, dtype=np.float64).copy(), -np.asarray(b, dtype=np.float64)


# ---------------------------------------------------------------------------------- parsing
@dataclass
class _Tok:
    text: str
    line: int


def _read_text(path: Path) -> str:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt") as f:
                return f.read()
        return path.read_text()
    except FileNotFoundError:
        raise CertifyError(f"{path}: no such VNN-LIB file") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise CertifyError(f"{path}: cannot read VNN-LIB file ({e})") from None


def _tokenize(text: str) -> list[_Tok]:
    toks = []
    for ln, line in enumerate(text.splitlines(), 1):
        line = line.split(";", 1)[0]
        toks.extend(_Tok(m.group(0), ln) for m in _TOKEN.finditer(line))
    return toks


def _parse_sexprs(toks: list[_Tok], where: str) -> list:
    """Nested lists of ``_Tok``; each list is ``(open_token, [items...])``."""
    out, stack = [], []
    for t in toks:
        if t.text == "(":
            stack.append((t, []))
        elif t.text == ")":
            if not stack:
                raise CertifyError(f"{where}:{t.line}: unbalanced ')'")
            item = stack.pop()
            (stack[-1][1] if stack else out).append(item)
        else:
            if not stack:
                raise CertifyError(f"{where}:{t.line}: unexpected {t.text!r} outside parentheses")
            stack[-1][1].append(t)
    if stack:
        raise CertifyError(f"{where}:{stack[-1][0].line}: '(' is never closed")
    return out


class _Parser:
    def __init__(self, where: str, n_inputs: int, n_outputs: int):
        self.where, self.n_in, self.n_out = where, n_inputs, n_outputs
        self.declared: dict[str, int] = {}  # name -> line

    def err(self, line: int, msg: str) -> CertifyError:
        return CertifyError(f"{self.where}:{line}: {msg}")

    def head(self, sx) -> _Tok:
        open_tok, items = sx
        if not items or not isinstance(items[0], _Tok):
            raise self.err(open_tok.line, "expected an operator after '('")
        return items[0]

    def declare(self, sx) -> None:
        open_tok, items = sx
        if len(items) != 3 or not all(isinstance(i, _Tok) for i in items):
            raise self.err(open_tok.line, "expected (declare-const NAME Real)")
        name, typ = items[1], items[2]
        m = _VAR.match(name.text)
        if not m:
            raise self.err(name.line, f"variable {name.text!r} is not X_i or Y_j")
        idx, limit = int(m.group(2)), self.n_in if m.group(1) == "X" else self.n_out
        if idx >= limit:
            raise self.err(name.line, f"{name.text} is out of range: the network has {limit} "
                                      f"{'inputs' if m.group(1) == 'X' else 'outputs'}")
        if typ.text != "Real":
            raise self.err(typ.line, f"type {typ.text!r} is not supported (only Real)")
        if name.text in self.declared:
            raise self.err(name.line, f"{name.text} is declared twice")
        self.declared[name.text] = name.line

    def operand(self, item, line: int):
        """('X'|'Y', index) for a variable, or a float for a literal."""
        if not isinstance(item, _Tok):
            raise self.err(item[0].line, "expected a variable or a number, got a sub-expression")
        m = _VAR.match(item.text)
        if m:
            if item.text not in self.declared:
                raise self.err(item.line, f"variable {item.text} is not declared")
            return (m.group(1), int(m.group(2)))
        if _NUMBER.match(item.text):
            return float(item.text)
        raise self.err(item.line, f"expected a variable or a number, got {item.text!r}")

    def formula(self, sx) -> list[list[tuple]]:
        """DNF: list of terms, each a list of atoms (kind, lhs, rhs, line) meaning lhs <= rhs."""
        if isinstance(sx, _Tok):
            raise self.err(sx.line, f"expected a formula, got {sx.text!r}")
        op = self.head(sx)
        args = sx[1][1:]
        if op.text in ("<=", ">="):
            if len(args) != 2:
                raise self.err(op.line, f"({op.text} ...) takes 2 operands, got {len(args)}")
            a, b = (self.operand(x, op.line) for x in args)
            if op.text == ">=":
                a, b = b, a
            return [[(a, b, op.line)]]
        if op.text == "and":
            dnf = [[]]
            for a in args:
                sub = self.formula(a)
                dnf = [t + s for t in dnf for s in sub]
                if len(dnf) > 100000:
                    raise self.err(op.line, "formula too large in disjunctive normal form")
            return dnf
        if op.text == "or":
            if not args:
                raise self.err(op.line, "(or) needs at least one operand")
            return [t for a in args for t in self.formula(a)]
        if op.text in ("<", ">", "="):
            raise self.err(op.line, f"operator {op.text!r} is not supported (only <=, >=, and, or)")
        raise self.err(op.line, f"unknown operator {op.text!r}")

    def term_to_region(self, term: list[tuple], assert_line: int):
        lo = np.full(self.n_in, -np.inf)
        hi = np.full(self.n_in, np.inf)
        rows, rhs = [], []
        for a, b, line in term:
            if isinstance(a, float) and isinstance(b, float):
                if not a <= b:  # a false constant atom makes the term unsatisfiable
                    return None
                continue
            kinds = {v[0] for v in (a, b) if isinstance(v, tuple)}
            if kinds == {"X", "Y"}:
                raise self.err(line, "an atom mixes inputs and outputs; not supported")
            if kinds == {"X"}:
                if isinstance(a, tuple) and isinstance(b, tuple):
                    raise self.err(line, "constraints between two inputs are not supported "
                                         "(inputs must be boxes)")
                if isinstance(a, tuple):      # X_i <= c
                    hi[a[1]] = min(hi[a[1]], b)
                else:                         # c <= X_i
                    lo[b[1]] = max(lo[b[1]], a)
                continue
            row, c = np.zeros(self.n_out), 0.0   # row @ y <= c
            if isinstance(a, tuple):
                row[a[1]] += 1.0
            else:
                c -= a
            if isinstance(b, tuple):
                row[b[1]] -= 1.0
            else:
                c += b
            if not row.any():     # Y_i <= Y_i
                if not 0.0 <= c:
                    return None
                continue
            rows.append(row)
            rhs.append(c)
        for i in range(self.n_in):
            if not (np.isfinite(lo[i]) and np.isfinite(hi[i])):
                name = f"X_{i}"
                line = self.declared.get(name, assert_line)
                side = "lower" if not np.isfinite(lo[i]) else "upper"
                raise self.err(line, f"input {name} has no {side} bound; inputs must be bounded boxes")
        if np.any(lo > hi):
            return None
        A = np.array(rows, dtype=np.float64).reshape(len(rows), self.n_out)
        return lo, hi, A, np.array(rhs, dtype=np.float64)


def parse(text: str, n_inputs: int, n_outputs: int, where: str = "<string>") -> VnnlibProperty:
    """Parse VNN-LIB ``text`` for a network with ``n_inputs`` inputs and ``n_outputs`` outputs."""
    if n_inputs < 1 or n_outputs < 1:
        raise CertifyError(f"{where}: n_inputs and n_outputs must be positive")
    p = _Parser(where, n_inputs, n_outputs)
    asserts = []
    for sx in _parse_sexprs(_tokenize(text), where):
        if isinstance(sx, _Tok):
            raise p.err(sx.line, f"unexpected {sx.text!r}")
        h = p.head(sx)
        if h.text == "declare-const":
            p.declare(sx)
        elif h.text == "assert":
            if len(sx[1]) != 2:
                raise p.err(h.line, "(assert ...) takes exactly one formula")
            asserts.append((h.line, sx[1][1]))
        else:
            raise p.err(h.line, f"unknown command {h.text!r} (expected declare-const or assert)")
    if not asserts:
        raise CertifyError(f"{where}: no assert in the file")
    for kind, n, what in (("X", n_inputs, "inputs"), ("Y", n_outputs, "outputs")):
        k = sum(name.startswith(kind) for name in p.declared)
        if k != n:
            raise CertifyError(f"{where}: declares {k} {what} ({kind}_i) but the network has {n} {what}")
    dnf = [[]]
    for _, f in asserts:
        sub = p.formula(f)
        dnf = [t + s for t in dnf for s in sub]
        if len(dnf) > 100000:
            raise p.err(asserts[-1][0], "formula too large in disjunctive normal form")
    regions: dict[tuple, Region] = {}
    for term in dnf:
        r = p.term_to_region(term, asserts[0][0])
        if r is None:
            continue
        lo, hi, A, b = r
        key = (lo.tobytes(), hi.tobytes())
        reg = regions.setdefault(key, Region(lo, hi, []))
        if not any(A.shape == A2.shape and np.array_equal(A, A2) and np.array_equal(b, b2)
                   for A2, b2 in reg.disjuncts):
            reg.disjuncts.append((A, b))
    return VnnlibProperty(where, n_inputs, n_outputs, list(regions.values()))


def load(path, n_inputs: int, n_outputs: int) -> VnnlibProperty:
    """Parse the ``.vnnlib`` (or ``.vnnlib.gz``) file at ``path``; see the module docstring."""
    path = Path(path)
    return parse(_read_text(path), int(n_inputs), int(n_outputs), where=str(path))
