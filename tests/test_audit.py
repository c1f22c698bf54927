"""The hash-chained audit log (`clinipipe.backup.audit`) on a real DuckDB file, and its
bookkeeping SQL through fakesnow (the Snowflake table comes from template 06)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import duckdb
import fakesnow
import pytest

from clinipipe.backup import audit
from clinipipe.spec import LoadedSpec, load_spec
from clinipipe.sql.render import render
from clinipipe.targets import DeploymentRecord, dialect_of
from clinipipe.targets.base import TargetError
from clinipipe.targets.duckdb import DuckDBTarget
from clinipipe.targets.snowflake import SnowflakeTarget
from tests.helpers import example_text, snowflake_text, write_spec


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DuckDBTarget]:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    loaded = load_spec(write_spec(tmp_path, example_text()))
    files = [f for f in render(loaded, dialect_of("duckdb")) if f.runs_on == "target"]
    with DuckDBTarget(loaded) as opened:
        opened.apply_deployment(files, DeploymentRecord(loaded.digest, "duckdb"))
        yield opened


def test_chain_links_every_entry_and_verifies(target: DuckDBTarget) -> None:
    first = audit.record(target, "redact", "research", {"tables": [{"table": "labs", "rows": 3}]})
    second = audit.record(target, "backup", "raw", {"n": 1, "ok": True, "ratio": 0.5, "x": None})
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == audit.GENESIS_HASH and second.prev_hash == first.entry_hash
    canonical = audit.canonical_record(
        2, second.logged_at, second.actor, "backup", "raw", second.detail
    )
    assert second.entry_hash == hashlib.sha256((first.entry_hash + canonical).encode()).hexdigest()
    listed = audit.entries(target)
    assert [e.as_dict() for e in listed] == [first.as_dict(), second.as_dict()]
    result = audit.verify(target)
    assert result.ok and result.entries == 2 and result.head_hash == second.entry_hash


@pytest.mark.parametrize(
    "tamper, bad_seq",
    [
        ("UPDATE _clinipipe.audit_log SET detail = '{\"n\":2,\"ok\":true}' WHERE seq = 2", 2),
        ("UPDATE _clinipipe.audit_log SET actor = 'mallory' WHERE seq = 1", 1),
        ("DELETE FROM _clinipipe.audit_log WHERE seq = 2", 3),
        ("UPDATE _clinipipe.audit_log SET logged_at = logged_at + INTERVAL 1 SECOND "
         "WHERE seq = 3", 3),
    ],
    ids=["detail", "actor", "deleted", "timestamp"],
)  # fmt: skip
def test_any_change_breaks_the_chain_at_that_entry(
    target: DuckDBTarget, tamper: str, bad_seq: int
) -> None:
    for i in range(3):
        audit.record(target, "redact", "research", {"n": i, "ok": True})
    assert audit.verify(target).ok
    target.con.execute(tamper)
    result = audit.verify(target)
    assert not result.ok and result.first_bad_seq == bad_seq and result.reason


def test_a_stale_writer_cannot_fork_the_chain(target: DuckDBTarget) -> None:
    statements, stale = audit.entry_statements(target, "redact", "research", {"n": 1})
    audit.record(target, "redact", "research", {"n": 2})  # another writer got there first
    target.execute_atomically(statements)  # conditional insert: adds nothing
    assert not audit.head_is(target, stale)
    assert len(audit.entries(target)) == 1 and audit.verify(target).ok


def test_detail_must_be_plain_json(target: DuckDBTarget) -> None:
    with pytest.raises(ValueError, match="not plain JSON"):
        audit.record(target, "redact", "research", {"value": b"bytes"})
    with pytest.raises(ValueError, match="keys must be strings"):
        audit.record(target, "redact", "research", {"t": {1: "x"}})
    assert audit.entries(target) == []


def test_undeployed_target_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    loaded = load_spec(write_spec(tmp_path, example_text()))
    with DuckDBTarget(loaded) as opened, pytest.raises(TargetError) as info:
        audit.record(opened, "redact", "research", {})
    assert "has no audit log" in str(info.value) and "clinipipe deploy" in str(info.value)
    # ... and it made no audit log (or anything else) of its own: only deploy creates one.
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone() == (0,)
        assert con.execute(
            "SELECT schema_name FROM duckdb_schemas() WHERE NOT internal AND "
            "database_name = current_database()"
        ).fetchall() in ([], [("main",)])


def test_chain_through_fakesnow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same statements on the Snowflake dialect (audit_log from template 06)."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "not-a-real-password")
    loaded: LoadedSpec = load_spec(write_spec(tmp_path, snowflake_text()))
    table = next(
        s.sql
        for f in render(loaded, dialect_of("snowflake"))
        if f.name.startswith("06")
        for s in f.statements
        if "audit_log" in s.sql.lower()
    )
    with fakesnow.patch(), SnowflakeTarget(loaded) as target:
        target.query('CREATE DATABASE IF NOT EXISTS "CLINIPIPE"')
        target.query('CREATE SCHEMA IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"')
        target.query(table)
        audit.record(target, "redact", "research", {"tables": ["labs"]})
        audit.record(target, "redact", "research", {"tables": []})
        assert audit.verify(target).ok
        target.query('UPDATE "CLINIPIPE"."_CLINIPIPE"."AUDIT_LOG" SET action = \'x\' WHERE seq = 1')
        assert audit.verify(target).first_bad_seq == 1
