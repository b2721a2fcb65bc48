"""Result records: JSON round trip, resume after an interrupted write, no silent overwrite."""
import pytest

from certify.errors import CertifyError
from certify.report import Record, ResultWriter, read_records


def _rec(i, verdict="certified"):
    return Record(idx=i, label=i % 3, predict=i % 3, engine="bounds", method="crown", verdict=verdict,
                  norm="inf", eps=0.01, radius=None, seconds=0.1, evidence={"lower": [0.5, 0.2]})


def test_round_trip_and_resume(tmp_path):
    p = tmp_path / "r.jsonl"
    with ResultWriter(str(p), resume=False) as w:
        for i in range(3):
            w.write(_rec(i))
    with open(p, "a") as f:
        f.write('{"idx": 3, "label"')  # torn line from a killed run
    w = ResultWriter(str(p), resume=True)
    assert sorted(w.done) == [0, 1, 2]
    w.write(_rec(3, "not_certified"))
    w.close()
    recs = read_records(str(p))
    assert [r.idx for r in recs] == [0, 1, 2, 3]
    assert recs[0].certified and not recs[3].certified and recs[3].correct
    assert recs[1].evidence["lower"] == [0.5, 0.2]


def test_refuses_to_overwrite_and_rejects_bad_verdicts(tmp_path):
    p = tmp_path / "r.jsonl"
    with ResultWriter(str(p), resume=False) as w:
        w.write(_rec(0))
    with pytest.raises(CertifyError, match="exists"):
        ResultWriter(str(p), resume=False)
    ResultWriter(str(p), resume=False, overwrite=True).close()
    assert read_records(str(p)) == []
    with pytest.raises(ValueError):
        _rec(0, "safe")
