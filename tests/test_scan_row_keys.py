"""Row keys of scanned rows: the same values as ever (plain ``col=value`` or the keyed HMAC
pseudonym), but a scan computes only the keys of the rows holding a finding."""

from __future__ import annotations

import hashlib
import hmac

import pyarrow as pa
import pytest

import clinipipe.phi.scan as phi_scan
from clinipipe.phi import Detector, DetectorSet
from clinipipe.phi.scan import ROW_DIGEST, ScanKeyError, lazy_row_keys, row_keys
from clinipipe.pipeline.scan import TablePlan, scan_table

SSN = Detector(name="ssn", category="SSN", severity="high", confidence=0.9,
               pattern=r"\d{3}-\d{2}-\d{4}", prefilter=r"\d{3}-\d{2}-\d{4}")  # fmt: skip


def _hmac(key: bytes, value: str) -> str:
    return "hmac:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:24]


def test_lazy_keys_equal_the_eager_ones_and_keep_their_values() -> None:
    rows = pa.table({"a": [1, None, 3, 1], "b": ["x", "y", None, "x"]})
    plain = lazy_row_keys(rows, ["a", "b"], pseudonymize=False, hmac_key=None)
    assert list(plain) == ["a=1, b=x", "a=NULL, b=y", "a=3, b=NULL", "a=1, b=x"]
    assert plain[-1] == "a=1, b=x" and plain[1:3] == ["a=NULL, b=y", "a=3, b=NULL"]
    keyed = lazy_row_keys(rows, ["a", "b"], pseudonymize=True, hmac_key=b"k")
    expected = [_hmac(b"k", v) for v in plain]  # the pseudonym findings have always carried
    assert list(keyed) == expected
    assert row_keys(rows, ["a", "b"], pseudonymize=True, hmac_key=b"k") == expected
    assert row_keys(rows.slice(0, 0), ["a"], pseudonymize=True, hmac_key=b"k") == []
    with pytest.raises(IndexError):
        keyed[4]
    with pytest.raises(ScanKeyError, match="set MY_KEY"):
        lazy_row_keys(rows, ["a"], pseudonymize=True, hmac_key=None, hmac_key_env="MY_KEY")


class _Candidates:
    """A warehouse stand-in that returns stage 1's candidate rows."""

    def __init__(self, rows: pa.Table) -> None:
        self.rows = rows

    def phi_scan_candidates(self, query: object) -> pa.Table:
        return self.rows


def test_a_scan_pseudonymizes_only_the_rows_with_a_finding(monkeypatch) -> None:
    n = 5_000
    notes = [f"ref {i:05d}" for i in range(n)]
    notes[17] = "ssn 123-45-6789 typed in"
    notes[4_000] = "again 987-65-4321"
    rows = pa.table({ROW_DIGEST: [f"d{i}" for i in range(n)], "c0": notes})
    hashed: list[str] = []
    real = phi_scan.pseudonym
    monkeypatch.setattr(phi_scan, "pseudonym", lambda k, v: hashed.append(v) or real(k, v))
    plan = TablePlan("research", "notes", ("note",), (), True, True)
    spans: list[str] = []

    def excused(finding: phi_scan.Finding, span: str) -> bool:
        spans.append(span)
        return span.startswith("987")

    findings, candidates = scan_table(
        _Candidates(rows), DetectorSet((SSN,)), plan, sample=None, key=b"k", key_env="K",
        excused=excused,
    )  # fmt: skip
    assert candidates == n
    assert sorted(hashed) == ["row_digest=d17", "row_digest=d4000"]  # not one per candidate
    assert [f.row_key for f in findings] == [_hmac(b"k", "row_digest=d17")]
    assert sorted(spans) == ["123-45-6789", "987-65-4321"]  # each finding's own cell
