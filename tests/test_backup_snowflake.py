"""Snowflake's native backups: the statements clinipipe runs, golden against the documented
grammar (reference/snowflake-syntax.md; fakesnow cannot run backup DDL), and the set names
matching the ones template 07 creates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakesnow
import pytest

from clinipipe.backup import audit, service
from clinipipe.backup.manifest import BackupError, load_chain
from clinipipe.spec import LoadedSpec, load_spec
from clinipipe.sql.render import render
from clinipipe.targets import dialect_of
from clinipipe.targets.core import TargetError
from clinipipe.targets.duckdb import DuckDBTarget
from clinipipe.targets.snowflake import SnowflakeTarget
from clinipipe.targets.snowflake import backup as bs
from tests.helpers import example_text, snowflake_text, write_spec

SF = dialect_of("snowflake")


def test_backup_statements_follow_the_documented_grammar() -> None:
    assert bs.add_backup_sql(SF, "CLINIPIPE", "raw") == (
        'ALTER BACKUP SET "CLINIPIPE"."_CLINIPIPE"."RAW_BACKUPS" ADD BACKUP'
    )
    assert bs.show_backups_sql(SF, "CLINIPIPE", "raw") == (
        'SHOW BACKUPS IN BACKUP SET "CLINIPIPE"."_CLINIPIPE"."RAW_BACKUPS"'
    )
    assert bs.legal_hold_sql(SF, "CLINIPIPE", "raw", "a1b2-c3", True) == (
        'ALTER BACKUP SET "CLINIPIPE"."_CLINIPIPE"."RAW_BACKUPS" MODIFY BACKUP IDENTIFIER '
        "'a1b2-c3' ADD LEGAL HOLD"
    )
    assert bs.legal_hold_sql(SF, "CLINIPIPE", "raw", "it's", False).endswith(
        "IDENTIFIER 'it''s' REMOVE LEGAL HOLD"
    )
    assert bs.delete_backup_sql(SF, "CLINIPIPE", "research", "x") == (
        'ALTER BACKUP SET "CLINIPIPE"."_CLINIPIPE"."RESEARCH_BACKUPS" DELETE BACKUP '
        "IDENTIFIER 'x'"
    )


def test_set_names_are_the_ones_template_07_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    loaded = load_spec(write_spec(tmp_path, snowflake_text()))
    sql = "\n".join(s.sql for f in render(loaded, SF) if f.name.startswith("07")
                    for s in f.statements)  # fmt: skip
    for schema in loaded.spec.backup.schemas:
        name = bs.backup_set_name(SF, loaded.spec.target.database, schema)  # type: ignore[union-attr]
        assert f"CREATE BACKUP SET IF NOT EXISTS {name}" in sql


# --- the service on a native target: create, hold, delete and restore reach the warehouse ------

RAW_SET = '"CLINIPIPE"."_CLINIPIPE"."RAW_BACKUPS"'
SHOW_BACKUPS = [  # (created_on, backup identifier, ...) as SHOW BACKUPS lists them
    ("2026-12-01 02:00:00.000 +0000", "old-0001", "RAW_BACKUPS"),
    ("2026-12-04 09:30:00.000 +0000", "new-0002", "RAW_BACKUPS"),
]


class BackupStatements:
    """Stands in for Snowflake's backup DDL (fakesnow cannot run it): records each statement
    and answers SHOW BACKUPS; everything else goes to fakesnow."""

    def __init__(self, target: SnowflakeTarget, rows: list[tuple[Any, ...]]) -> None:
        self.run: list[str] = []
        self._query = target.query
        self._rows = rows

    def __call__(self, sql: str) -> list[tuple[Any, ...]]:
        if sql.startswith(("ALTER BACKUP SET", "SHOW BACKUPS")):
            self.run.append(sql)
            return list(self._rows) if sql.startswith("SHOW") else []
        return self._query(sql)


@pytest.fixture
def snowflake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LoadedSpec, SnowflakeTarget]]:
    """A Snowflake target (fakesnow) with its audit log deployed; backup store in tmp_path."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", "not-a-real-password")
    locked = snowflake_text().replace("retention_lock: false", "retention_lock: true")  # opt-in
    loaded = load_spec(write_spec(tmp_path, locked))
    audit_table = next(s.sql for f in render(loaded, SF) if f.name.startswith("06")
                       for s in f.statements if "audit_log" in s.sql.lower())  # fmt: skip
    with fakesnow.patch(), SnowflakeTarget(loaded) as target:
        target.query('CREATE DATABASE IF NOT EXISTS "CLINIPIPE"')
        target.query('CREATE SCHEMA IF NOT EXISTS "CLINIPIPE"."_CLINIPIPE"')
        target.query(audit_table)
        yield loaded, target


def test_native_backup_create_hold_delete_run_the_warehouse_statements(
    snowflake: tuple[LoadedSpec, SnowflakeTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded, target = snowflake
    statements = BackupStatements(target, SHOW_BACKUPS)
    monkeypatch.setattr(target, "query", statements)
    assert target.backs_up_natively()

    made = service.create_backup(loaded, target)
    assert statements.run == [f"ALTER BACKUP SET {RAW_SET} ADD BACKUP",
                              f"SHOW BACKUPS IN BACKUP SET {RAW_SET}"]  # fmt: skip
    m = load_chain(service.open_store(loaded)).find(made.backup_id).manifest
    assert m is not None and m.tables == ()
    assert m.native == ({"schema": "raw", "backup_set": RAW_SET, "identifier": "new-0002"},)

    statements.run.clear()
    service.set_hold(loaded, target, made.backup_id, True, "litigation 2026-17")
    assert statements.run == [f"ALTER BACKUP SET {RAW_SET} MODIFY BACKUP IDENTIFIER "
                              "'new-0002' ADD LEGAL HOLD"]  # fmt: skip
    service.set_hold(loaded, target, made.backup_id, True, "a second matter")
    assert len(statements.run) == 1  # held already: Snowflake's hold is not placed twice
    later = service.now_utc() + dt.timedelta(days=3000)  # past retain_until
    with pytest.raises(BackupError, match="legal hold"):
        service.delete_backup(loaded, target, made.backup_id, now=later)
    assert len(statements.run) == 1  # refused before Snowflake was asked

    service.set_hold(loaded, target, made.backup_id, False, "matter closed")
    assert statements.run[1:] == [f"ALTER BACKUP SET {RAW_SET} MODIFY BACKUP IDENTIFIER "
                                  "'new-0002' REMOVE LEGAL HOLD"]  # fmt: skip
    with pytest.raises(BackupError, match="locked retention"):
        service.delete_backup(loaded, target, made.backup_id)
    assert len(statements.run) == 2

    statements.run.clear()
    service.delete_backup(loaded, target, made.backup_id, now=later)
    assert statements.run == [f"ALTER BACKUP SET {RAW_SET} DELETE BACKUP IDENTIFIER 'new-0002'"]
    assert load_chain(service.open_store(loaded)).manifests == []
    actions = [e.action for e in audit.entries(target)]
    assert actions == ["backup create", "backup hold add", "backup hold add",
                       "backup hold remove", "backup delete"]  # fmt: skip


def test_native_delete_refused_by_snowflake_keeps_the_manifest(
    snowflake: tuple[LoadedSpec, SnowflakeTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded, target = snowflake
    statements = BackupStatements(target, SHOW_BACKUPS)
    monkeypatch.setattr(target, "query", statements)
    made = service.create_backup(loaded, target)

    def refuse(sql: str) -> list[tuple[Any, ...]]:
        if "DELETE BACKUP" in sql:
            raise TargetError("Backup 'new-0002' cannot be deleted: retention lock")
        return statements(sql)

    monkeypatch.setattr(target, "query", refuse)
    later = service.now_utc() + dt.timedelta(days=3000)
    with pytest.raises(TargetError, match="retention lock"):
        service.delete_backup(loaded, target, made.backup_id, now=later)
    assert [s.id for s in load_chain(service.open_store(loaded)).manifests] == [made.backup_id]


def test_native_backup_without_identifier_is_never_reported_held(
    snowflake: tuple[LoadedSpec, SnowflakeTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded, target = snowflake
    statements = BackupStatements(target, [])  # SHOW BACKUPS lists nothing readable
    monkeypatch.setattr(target, "query", statements)
    made = service.create_backup(loaded, target)
    with pytest.raises(TargetError, match=r"identifier .* was not recorded"):
        service.set_hold(loaded, target, made.backup_id, True, "litigation")
    assert statements.run[-1].startswith("SHOW BACKUPS")  # no hold statement ran
    assert not any(b.held for b in service.list_backups(loaded))


def test_native_backup_restore_and_tables_are_refused_with_what_to_do(
    snowflake: tuple[LoadedSpec, SnowflakeTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded, target = snowflake
    monkeypatch.setattr(target, "query", BackupStatements(target, SHOW_BACKUPS))
    with pytest.raises(BackupError, match="whole schemas") as info:
        service.create_backup(loaded, target, service.BackupOptions(tables=("labs",)))
    assert info.value.usage
    made = service.create_backup(loaded, target)
    with pytest.raises(TargetError, match="done in Snowflake") as refused:
        service.restore_backup(loaded, target, made.backup_id, "restored")
    assert f"{RAW_SET} new-0002" in str(refused.value)
    with pytest.raises(BackupError, match="needs the warehouse"):
        service.restore_backup(loaded, None, made.backup_id, "restored")
    with pytest.raises(TargetError, match="backs up natively"):
        target.export_tables([], Path("unused"))


def test_duckdb_has_no_native_backups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    with DuckDBTarget(load_spec(write_spec(tmp_path, example_text()))) as target:
        assert not target.backs_up_natively()
        for call in (lambda: target.add_native_backups(["raw"]),
                     lambda: target.delete_native_backups([])):  # fmt: skip
            with pytest.raises(TargetError, match="Parquet"):
                call()
