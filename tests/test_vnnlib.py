"""VNN-LIB parser: every shared file parses, small hand-written files give the expected boxes and
matrices (including input disjunctions and input/output atoms mixed in one ``or``), and
malformed files fail with the right line number."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from certify.errors import CertifyError
from certify.spec import vnnlib

HEADER = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"


def _sizes(path):
    name = path.as_posix()
    if "mnistfc" in name:
        return 784, 10
    if "acasxu" in name or name.endswith("test_prop.vnnlib"):
        return 5, 5
    return 1, 1


def test_every_shared_file_parses(shared_dir):
    files = sorted((shared_dir / "vnncomp").rglob("*.vnnlib"))
    assert len(files) >= 40
    for f in files:
        n_in, n_out = _sizes(f)
        p = vnnlib.load(f, n_in, n_out)
        assert p.regions, f
        for r in p.regions:
            assert r.lower.shape == (n_in,) and np.all(r.lower <= r.upper)
            for A, b in r.disjuncts:
                assert A.shape[1] == n_out and A.shape[0] == b.shape[0] >= 1


def test_acasxu_prop6_two_boxes_share_condition(shared_dir):
    p = vnnlib.load(shared_dir / "vnncomp/acasxu/prop_6.vnnlib", 5, 5)
    assert len(p.regions) == 2
    assert p.regions[0].upper[1] == pytest.approx(0.499999896)
    assert p.regions[1].upper[1] == pytest.approx(-0.11140846)
    for r in p.regions:
        assert len(r.disjuncts) == 4    # Y_0 is not minimal: Y_j <= Y_0 for some j
        A, b = r.disjuncts[0]
        np.testing.assert_array_equal(A, [[-1, 1, 0, 0, 0]])
        np.testing.assert_array_equal(b, [0])


def test_top_level_atoms_and_scientific_notation(tmp_path):
    f = tmp_path / "p.vnnlib"
    f.write_text(HEADER + "; comment (with parens)\n(assert (>= X_0 -1e-1))\n(assert (<= X_0 2.5E+0))"
                 "  ; trailing\n(assert (<= X_1 1))\n(assert (>= X_1 .5))\n(assert (<= Y_0 Y_1))\n(assert (>= Y_0 3))\n")
    p = vnnlib.load(f, 2, 2)
    (r,) = p.regions
    np.testing.assert_array_equal(r.lower, [-0.1, 0.5])
    np.testing.assert_array_equal(r.upper, [2.5, 1.0])
    (A, b), = r.disjuncts
    np.testing.assert_array_equal(A, [[1, -1], [-1, 0]])
    np.testing.assert_array_equal(b, [0, -3])
    C, d = vnnlib.conjunction_margins(A, b)
    # y = (4, 5) violates (Y_0 <= Y_1 and Y_0 >= 3): every margin row <= 0
    assert np.all(C @ np.array([4.0, 5.0]) + d <= 0) and r.violated([4.0, 5.0])
    # y = (2, 5) avoids it: some row > 0
    assert np.any(C @ np.array([2.0, 5.0]) + d > 0) and not r.violated([2.0, 5.0])


def test_mixed_input_output_or_distributes(tmp_path):
    f = tmp_path / "p.vnnlib.gz"
    with gzip.open(f, "wt") as g:
        g.write(HEADER + "(assert (<= X_1 1))\n(assert (>= X_1 0))\n(assert (or\n"
                "  (and (>= X_0 -1) (<= X_0 0) (>= Y_0 100))\n"
                "  (and (>= X_0 0) (<= X_0 1) (>= Y_1 Y_0) (<= Y_1 7))\n"
                "  (and (>= X_0 -1) (<= X_0 0) (<= Y_1 -2))\n))\n")
    p = vnnlib.load(f, 2, 2)
    assert len(p.regions) == 2
    r0, r1 = p.regions
    np.testing.assert_array_equal(r0.lower, [-1, 0])
    np.testing.assert_array_equal(r0.upper, [0, 1])
    assert [A.tolist() for A, _ in r0.disjuncts] == [[[-1, 0]], [[0, 1]]]
    assert [b.tolist() for _, b in r0.disjuncts] == [[-100], [-2]]
    np.testing.assert_array_equal(r1.lower, [0, 0])
    (A, b), = r1.disjuncts
    np.testing.assert_array_equal(A, [[1, -1], [0, 1]])
    np.testing.assert_array_equal(b, [0, 7])
    assert p.violated_by([0.5, 0.5], [1, 3]) and not p.violated_by([-0.5, 0.5], [1, 3])


def test_empty_box_terms_are_dropped(tmp_path):
    f = tmp_path / "p.vnnlib"
    f.write_text(HEADER + "(assert (<= X_1 1))\n(assert (>= X_1 0))\n"
                 "(assert (or (and (>= X_0 2) (<= X_0 1)) (and (>= X_0 0) (<= X_0 1))))\n(assert (>= Y_0 0))\n")
    p = vnnlib.load(f, 2, 2)
    assert len(p.regions) == 1 and p.regions[0].lower[0] == 0


@pytest.mark.parametrize("body, line, words", [
    ("(assert (<= X_0 1)\n", 5, "never closed"),
    ("(assert (<= X_0 1)))\n", 5, "unbalanced"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n(assert (<= Y_7 1))\n",
     9, "not declared"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n\n(assert (< Y_0 1))\n", 8, "not supported"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 abc))\n", 6, "expected a variable or a number"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= Y_0 0))\n", 2, "no lower bound"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n(assert (<= X_0 Y_0))\n",
     9, "mixes inputs and outputs"),
    ("(check-sat)\n", 5, "unknown command"),
    ("(assert (xor (<= X_0 1)))\n", 5, "unknown operator"),
])
def test_malformed_files_name_the_line(tmp_path, body, line, words):
    f = tmp_path / "bad.vnnlib"
    f.write_text(HEADER + body)
    with pytest.raises(CertifyError) as e:
        vnnlib.load(f, 2, 2)
    msg = str(e.value)
    assert msg.startswith(f"{f}:{line}:"), msg
    assert words in msg


def test_out_of_range_and_missing_file(tmp_path):
    f = tmp_path / "p.vnnlib"
    f.write_text("(declare-const X_3 Real)\n")
    with pytest.raises(CertifyError, match=r"p.vnnlib:1: X_3 is out of range"):
        vnnlib.load(f, 2, 2)
    with pytest.raises(CertifyError, match="no such VNN-LIB file"):
        vnnlib.load(tmp_path / "missing.vnnlib", 2, 2)
