"""The audit trail commands (`audit log`, `audit verify`) and the append API every
state-changing command calls (`clinipipe.backup.audit.append`), on a real DuckDB file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from clinipipe.backup import audit
from clinipipe.spec import load_spec
from clinipipe.targets.duckdb import DuckDBTarget
from tests.helpers import cli
from tests.test_backup import make_project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    yield make_project(tmp_path)


def append_some(spec: Path) -> list[audit.AuditEntry]:
    loaded = load_spec(spec)
    with DuckDBTarget(loaded) as target:
        return [
            audit.append(target, "deploy", objects=["raw", "_clinipipe"],
                         counts={"statements": 41}, spec_digest=loaded.digest),
            audit.append(target, "backfill", objects=["raw.labs"], counts={"rows": 3000},
                         spec_digest=loaded.digest),
            audit.append(target, "refresh --full", objects=["derived.census"],
                         outcome="failed", spec_digest=loaded.digest,
                         detail={"error": "warehouse unavailable"}),
        ]  # fmt: skip


def test_append_records_command_objects_counts_outcome_and_spec(project: Path) -> None:
    entries = append_some(project)
    first = entries[0]
    assert first.action == "deploy" and first.object == "raw, _clinipipe" and first.actor
    assert first.detail == {"outcome": "ok", "objects": ["raw", "_clinipipe"],
                            "counts": {"statements": 41},
                            "spec_digest": load_spec(project).digest}  # fmt: skip
    assert entries[2].detail["outcome"] == "failed"
    assert [e.prev_hash for e in entries[1:]] == [e.entry_hash for e in entries[:-1]]
    with DuckDBTarget(load_spec(project)) as target, pytest.raises(ValueError):
        audit.append(target, "deploy", detail={"row": b"\x00"})  # not plain JSON


def test_audit_log_json_since_and_table(project: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:  # fmt: skip
    append_some(project)
    code, out, _ = cli(capsys, "-c", str(project), "audit", "log", "--json")
    listed = json.loads(out)
    assert code == 0 and [e["seq"] for e in listed] == [1, 2, 3]
    assert listed[1]["action"] == "backfill" and listed[1]["detail"]["counts"] == {"rows": 3000}
    code, out, _ = cli(capsys, "-c", str(project), "audit", "log", "--json", "--since", "2")
    assert [e["seq"] for e in json.loads(out)] == [3]
    code, out, _ = cli(capsys, "-c", str(project), "audit", "log", "--json", "--since",
                       "2999-01-01")  # fmt: skip
    assert json.loads(out) == []
    code, out, _ = cli(capsys, "-c", str(project), "audit", "log")
    assert code == 0 and "refresh --full" in out and "failed" in out
    code, _, _err = cli(capsys, "-c", str(project), "audit", "log", "--since", "yesterday")
    assert code == 2


def test_audit_verify_passes_then_breaks_when_edited(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    append_some(project)
    code, out, _ = cli(capsys, "-c", str(project), "audit", "verify")
    assert code == 0 and "3 audit entries" in out and "chain intact" in out
    with duckdb.connect(str(project.parent / "warehouse.duckdb")) as con:
        con.execute("UPDATE _clinipipe.audit_log SET detail = replace(detail, '3000', '2999') "
                    "WHERE seq = 2")  # fmt: skip
    code, out, err = cli(capsys, "-c", str(project), "audit", "verify", "--json")
    report = json.loads(out)
    assert code == 3 and not report["ok"]
    assert [p["key"] for p in report["problems"]] == ["_clinipipe.audit_log seq 2"]
    code, _, err = cli(capsys, "-c", str(project), "audit", "verify")
    assert code == 3 and "audit entry 2" in err


def test_cutting_the_tail_of_the_log_is_caught_by_the_backups(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleting the newest entries leaves a chain that verifies by itself; the audit head a
    backup recorded (and the backup's own entry) no longer match."""
    append_some(project)
    code, out, err = cli(capsys, "-c", str(project), "backup", "create", "--json")
    assert code == 0, err
    assert json.loads(out)["audit_seq"] == 4
    with duckdb.connect(str(project.parent / "warehouse.duckdb")) as con:
        con.execute("DELETE FROM _clinipipe.audit_log WHERE seq >= 3")
    with DuckDBTarget(load_spec(project)) as target:
        assert audit.verify(target).ok  # the chain alone cannot tell
    code, out, _ = cli(capsys, "-c", str(project), "audit", "verify", "--json")
    report = json.loads(out)
    assert code == 3 and "_clinipipe.audit_log seq 3" in {p["key"] for p in report["problems"]}
