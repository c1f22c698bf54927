"""`clinipipe backup` on a local store and a real DuckDB warehouse: round trip, dedupe, restore
refusals, tamper detection (each problem names the exact key), retention and legal holds.

The round trip uses the synthetic hospital backfilled from the embedded PostgreSQL; the other
tests a deployed warehouse with raw tables made in DuckDB (no PostgreSQL needed)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from clinipipe.backup import service
from clinipipe.backup.manifest import BackupError, load_chain
from clinipipe.backup.store import LocalStore, object_key
from clinipipe.spec import load_spec
from clinipipe.targets.duckdb import DuckDBTarget
from tests.helpers import (
    KEYS,
    TABLES,
    assert_target_equals_source,
    cli,
    deploy_target_templates,
    example_text,
    write_spec,
)

RETENTION = "retention_days: 2555\n  retention_lock: true"
EXAMPLE_RETENTION = "retention_days: 2555\n  retention_lock: false"  # opt-in (issue 20)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A deployed DuckDB warehouse with two raw tables (no source needed); the spec path."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    yield make_project(tmp_path)


def make_project(folder: Path, retention: str = RETENTION) -> Path:
    spec = write_spec(folder, example_text(**{EXAMPLE_RETENTION: retention}))
    loaded = load_spec(spec)
    with DuckDBTarget(loaded) as target:
        deploy_target_templates(target, loaded)
        target.con.execute(
            "CREATE TABLE raw.encounters AS SELECT i AS encounter_id, 'visit ' || i AS reason, "
            "TIMESTAMPTZ '2024-01-01 00:00:00+00' + i * INTERVAL 1 MINUTE AS at, "
            "(i % 97)::DECIMAL(8, 2) AS cost FROM range(20000) r(i)"
        )
        target.con.execute(
            "CREATE TABLE raw.labs AS SELECT i AS lab_id, i % 7 AS code, [i, i + 1] AS vals "
            "FROM range(3000) r(i)"
        )
    return spec


def con(spec: Path, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(spec.parent / "warehouse.duckdb"), read_only=read_only)


def create(capsys: pytest.CaptureFixture[str], spec: Path, *args: str) -> dict:
    code, out, err = cli(capsys, "-c", str(spec), "backup", "create", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def verify(capsys: pytest.CaptureFixture[str], spec: Path, *args: str) -> tuple[int, dict]:
    code, out, _err = cli(capsys, "-c", str(spec), "backup", "verify", "--json", *args)
    return code, json.loads(out)


def store_of(spec: Path) -> Path:
    return spec.parent / "backups"


def flip_byte(path: Path, at: int | None = None) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


# --- round trip --------------------------------------------------------------------------------


@pytest.mark.slow
def test_round_trip_restore_equals_the_source(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from clinipipe.pipeline.backfill import BackfillOptions, run_backfill

    run_backfill(load_spec(hospital_project), BackfillOptions())
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")
    made = create(capsys, hospital_project)
    assert {t["name"] for t in made["tables"]} >= {f"raw.{t}" for t in TABLES}
    code, _out, err = cli(capsys, "-c", str(hospital_project), "backup", "restore",
                         made["backup_id"], "--to", "restored")  # fmt: skip
    assert code == 0, err
    folder = tmp_path / "parquet"
    code, _, err = cli(capsys, "-c", str(hospital_project), "backup", "restore",
                       made["backup_id"], "--to", str(folder))  # fmt: skip
    assert code == 0, err
    with con(hospital_project) as c:
        c.execute("SET TimeZone = 'UTC'")
        for table in TABLES:
            order = KEYS[table]
            live = c.execute(f"SELECT * FROM raw.{table} ORDER BY {order}").fetchall()
            back = c.execute(f"SELECT * FROM restored.{table} ORDER BY {order}").fetchall()
            assert back == live and live, table
            types = "SELECT column_name, data_type FROM information_schema.columns WHERE " \
                    "table_schema = ? AND table_name = ? ORDER BY ordinal_position"  # fmt: skip
            assert c.execute(types, ["restored", table]).fetchall() == \
                c.execute(types, ["raw", table]).fetchall()  # fmt: skip
            parquet = folder / f"raw.{table}.parquet"
            files = c.execute(f"SELECT * FROM read_parquet('{parquet}') ORDER BY {order}")
            assert files.fetchall() == live, table


# --- dedupe ------------------------------------------------------------------------------------


def test_second_backup_dedupes_and_a_change_writes_only_its_table(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = create(capsys, project)
    assert first["objects_written"] == 2 and not any(t["reused"] for t in first["tables"])
    second = create(capsys, project)
    assert second["objects_written"] == 0 and all(t["reused"] for t in second["tables"])
    assert second["bytes_written"] < 2000  # the manifest only
    assert second["bytes_written"] < first["bytes_written"] / 20
    with con(project, read_only=False) as c:
        c.execute("UPDATE raw.labs SET code = 99 WHERE lab_id = 5")
    third = create(capsys, project)
    written = {t["name"]: not t["reused"] for t in third["tables"]}
    assert written == {"raw.encounters": False, "raw.labs": True}
    assert third["objects_written"] == 1
    with con(project, read_only=False) as c:  # same values, another layout: not unchanged
        c.execute("ALTER TABLE raw.labs RENAME COLUMN code TO lab_code")
    fourth = create(capsys, project)
    assert fourth["objects_written"] == 1
    assert [t["name"] for t in fourth["tables"] if not t["reused"]] == ["raw.labs"]
    objects = LocalStore(store_of(project)).list("objects/")
    assert len(objects) == 4  # 2 + the changed labs + the renamed labs
    for key in objects:
        assert not os.stat(store_of(project) / key).st_mode & 0o222  # read-only


# --- restore refusals --------------------------------------------------------------------------


def test_restore_never_writes_over_live_tables_unless_replace_yes(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = create(capsys, project)
    with con(project, read_only=False) as c:
        c.execute("DELETE FROM raw.labs WHERE lab_id < 100")
    code, _, err = cli(capsys, "-c", str(project), "backup", "restore", made["backup_id"],
                       "--to", "raw")  # fmt: skip
    assert code == 1 and "raw.encounters exists" in err and "--replace --yes" in err
    code, _, err = cli(capsys, "-c", str(project), "backup", "restore", made["backup_id"],
                       "--to", "raw", "--replace")  # fmt: skip
    assert code == 2 and "--yes" in err
    with con(project) as c:
        assert c.execute("SELECT count(*) FROM raw.labs").fetchone() == (2900,)
    code, _, err = cli(capsys, "-c", str(project), "backup", "restore", made["backup_id"],
                       "--to", "raw", "--replace", "--yes", "--tables", "labs")  # fmt: skip
    assert code == 0, err
    with con(project) as c:
        assert c.execute("SELECT count(*), sum(lab_id) FROM raw.labs").fetchone() == (
            3000, sum(range(3000)))  # fmt: skip
    code, _, err = cli(capsys, "-c", str(project), "backup", "restore", made["backup_id"],
                       "--to", str(project.parent))  # fmt: skip
    assert code == 2 and "not empty" in err


def test_restore_refuses_a_damaged_object_and_restores_nothing(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = create(capsys, project)
    labs = next(t for t in made["tables"] if t["name"] == "raw.labs")
    flip_byte(store_of(project) / object_key(labs["object"]))
    code, _, err = cli(capsys, "-c", str(project), "backup", "restore", made["backup_id"],
                       "--to", "restored")  # fmt: skip
    assert code == 1 and object_key(labs["object"]) in err
    with con(project) as c:
        assert c.execute("SELECT count(*) FROM information_schema.tables WHERE "
                         "table_schema = 'restored'").fetchone() == (0,)  # fmt: skip


# --- tamper detection --------------------------------------------------------------------------


def three_backups(project: Path, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    made = []
    for i in range(3):
        with con(project, read_only=False) as c:
            c.execute(f"UPDATE raw.labs SET code = {100 + i} WHERE lab_id = 1")
        made.append(create(capsys, project))
    code, report = verify(capsys, project, "--read-data")
    assert code == 0 and report["ok"] and report["backups"] == 3, report
    return made


def problem_keys(report: dict) -> set[str]:
    return {p["key"] for p in report["problems"]}


def test_flipped_byte_in_an_object_is_named(project: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:  # fmt: skip
    made = three_backups(project, capsys)
    key = object_key(made[1]["tables"][0]["object"])  # raw.encounters, shared by all three
    flip_byte(store_of(project) / key)
    code, report = verify(capsys, project, "--read-data")
    assert code == 3 and problem_keys(report) == {key}
    (problem,) = report["problems"]
    assert problem["kind"] == "object_damaged" and len(problem["backups"]) == 3
    code, _, err = cli(capsys, "-c", str(project), "backup", "verify", "--read-data")
    assert code == 3 and key in err


def test_flipped_byte_in_a_manifest_is_named(project: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:  # fmt: skip
    three_backups(project, capsys)
    chain = load_chain(LocalStore(store_of(project)))
    middle = sorted(chain.manifests, key=lambda m: m.seq)[1]
    flip_byte(store_of(project) / middle.key, at=40)
    code, report = verify(capsys, project)
    assert code == 3 and problem_keys(report) == {middle.key}
    assert report["problems"][0]["kind"] == "manifest_damaged"


def test_deleted_object_is_named(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = three_backups(project, capsys)
    key = object_key(next(t for t in made[2]["tables"] if t["name"] == "raw.labs")["object"])
    (store_of(project) / key).unlink()
    code, report = verify(capsys, project)  # presence is checked without --read-data too
    assert code == 3 and problem_keys(report) == {key}
    assert report["problems"][0]["kind"] == "object_missing"
    assert report["problems"][0]["backups"] == [made[2]["backup_id"]]


def test_manifest_dropped_from_the_middle_of_the_chain_is_named(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = three_backups(project, capsys)
    middle = store_of(project) / made[1]["manifest"]
    middle.unlink()
    code, report = verify(capsys, project)
    assert code == 3 and made[1]["manifest"] in problem_keys(report)
    assert {p["kind"] for p in report["problems"]} == {"manifest_missing"}
    # the chain alone finds it (backup 3 links to it), without the audit log's help
    from clinipipe.backup.verify import verify_store

    alone = verify_store(LocalStore(store_of(project)))
    assert [(p.kind, p.key) for p in alone.problems] == [("manifest_missing", made[1]["manifest"])]


def test_replaced_manifest_and_vanished_newest_manifest_are_named(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = three_backups(project, capsys)
    store = store_of(project)
    # rewrite backup 2 consistently with itself (new name = hash of the new bytes)
    old = store / made[1]["manifest"]
    doc = json.loads(old.read_bytes())
    doc["tables"][0]["rows"] += 1
    from clinipipe.backup.manifest import canonical, manifest_key, sha256

    data = canonical(doc)
    new_key = manifest_key(2, sha256(data))
    os.chmod(old, 0o644)
    old.unlink()
    (store / new_key).write_bytes(data)
    code, report = verify(capsys, project)
    assert code == 3 and new_key in problem_keys(report)
    # the newest manifest removed: no later link names it, the audit log does
    (store / made[2]["manifest"]).unlink()
    code, report = verify(capsys, project)
    assert code == 3 and made[2]["manifest"] in problem_keys(report)


def test_edited_audit_row_is_named_by_backup_verify_and_audit_verify(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    three_backups(project, capsys)
    code, out, _ = cli(capsys, "-c", str(project), "audit", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"]
    with con(project, read_only=False) as c:
        c.execute("UPDATE _clinipipe.audit_log SET actor = 'mallory' WHERE seq = 2")
    code, out, _ = cli(capsys, "-c", str(project), "audit", "verify", "--json")
    report = json.loads(out)
    assert code == 3 and "_clinipipe.audit_log seq 2" in problem_keys(report)
    # a consistent rewrite (every hash recomputed) still disagrees with the backups
    _rewrite_chain(project)
    code, out, _ = cli(capsys, "-c", str(project), "audit", "verify", "--json")
    report = json.loads(out)
    assert code == 3 and "_clinipipe.audit_log seq 2" in problem_keys(report)
    assert {p["kind"] for p in report["problems"]} == {"audit_mismatch"}
    code, report = verify(capsys, project)
    assert code == 3 and "_clinipipe.audit_log seq 2" in problem_keys(report)


def _rewrite_chain(project: Path) -> None:
    from clinipipe.backup import audit

    with con(project, read_only=False) as c:
        rows = c.execute("SELECT seq, logged_at, actor, action, object, detail FROM "
                         "_clinipipe.audit_log ORDER BY seq").fetchall()  # fmt: skip
        prev = audit.GENESIS_HASH
        for seq, at, actor, action, obj, detail in rows:
            digest = audit.entry_hash(prev, audit.canonical_record(
                seq, at, actor, action, obj, json.loads(detail)))  # fmt: skip
            c.execute("UPDATE _clinipipe.audit_log SET prev_hash = ?, entry_hash = ? "
                      "WHERE seq = ?", [prev, digest, seq])  # fmt: skip
            prev = digest


# --- retention and legal hold ------------------------------------------------------------------


def test_locked_retention_refuses_delete_prune_and_a_shorter_spec(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = create(capsys, project)
    bid = made["backup_id"]
    code, _, err = cli(capsys, "-c", str(project), "backup", "delete", bid, "--yes", "--force")
    assert code == 1 and "locked retention" in err and bid in err
    code, out, _ = cli(capsys, "-c", str(project), "backup", "prune", "--json")
    assert code == 0 and json.loads(out)["deleted"] == []
    assert (store_of(project) / made["manifest"]).exists()
    # a spec asking for a shorter retention, or no lock, is refused
    for change in ("retention_days: 30\n  retention_lock: true",
                   "retention_days: 2555\n  lock: false"):  # fmt: skip
        write_spec(project.parent, example_text(**{EXAMPLE_RETENTION: change}))
        code, _, err = cli(capsys, "-c", str(project), "backup", "create")
        assert code == 1 and "cannot be" in err, err
    assert len(load_chain(LocalStore(store_of(project))).manifests) == 1


def test_prune_deletes_only_what_retention_and_holds_allow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    spec = make_project(tmp_path, "retention_days: 1\n  retention_lock: true")
    made = [create(capsys, spec)]
    with con(spec, read_only=False) as c:
        c.execute("UPDATE raw.labs SET code = 42 WHERE lab_id = 3")
    made.append(create(capsys, spec))
    made.append(create(capsys, spec))
    code, _, err = cli(capsys, "-c", str(spec), "backup", "hold", "add", made[1]["backup_id"],
                       "--reason", "litigation 2026-17")  # fmt: skip
    assert code == 0, err
    loaded = load_spec(spec)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    with DuckDBTarget(loaded) as target:
        with pytest.raises(BackupError, match="legal hold"):
            service.delete_backup(loaded, target, made[1]["backup_id"], now=later)
        result = service.prune(loaded, target, now=later)
    assert result.deleted == [made[0]["backup_id"], made[2]["backup_id"]]
    assert [k["backup_id"] for k in result.kept] == [made[1]["backup_id"]]
    assert "litigation" in result.kept[0]["why"]
    # the first labs object is only in backup 1: gone; the rest is still needed by backup 2
    labs0 = next(t["object"] for t in made[0]["tables"] if t["name"] == "raw.labs")
    assert result.objects_deleted == 1 and not (store_of(spec) / object_key(labs0)).exists()
    code, report = verify(capsys, spec, "--read-data")  # tombstones keep the chain checkable
    assert code == 0, report
    code, _, _ = cli(capsys, "-c", str(spec), "backup", "hold", "remove", made[1]["backup_id"],
                     "--reason", "case closed")  # fmt: skip
    assert code == 0
    with DuckDBTarget(loaded) as target:
        assert service.prune(loaded, target, now=later).deleted == [made[1]["backup_id"]]
        actions = [r[0] for r in target.query("SELECT action FROM _clinipipe.audit_log "
                                              "ORDER BY seq")]  # fmt: skip
    assert actions == ["backup create"] * 3 + [
        "backup hold add",
        "backup prune",
        "backup hold remove",
        "backup prune",
    ]
    assert LocalStore(store_of(spec)).list("objects/") == {}


def test_unlocked_retention_needs_force_to_delete_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    spec = make_project(tmp_path, "retention_days: 30\n  lock: false")
    bid = create(capsys, spec)["backup_id"]
    code, _, err = cli(capsys, "-c", str(spec), "backup", "delete", bid, "--yes")
    assert code == 1 and "--force" in err
    code, _, err = cli(capsys, "-c", str(spec), "backup", "delete", bid, "--yes", "--force")
    assert code == 0, err
    code, out, _ = cli(capsys, "-c", str(spec), "backup", "list", "--json")
    assert json.loads(out) == []


def test_list_json_and_unknown_ids(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = create(capsys, project)
    code, out, _ = cli(capsys, "-c", str(project), "backup", "list", "--json")
    (info,) = json.loads(out)
    assert code == 0 and info["backup_id"] == made["backup_id"] and info["locked"]
    assert info["rows"] == 23000 and info["tables"] == 2 and not info["held"]
    code, _, err = cli(capsys, "-c", str(project), "backup", "verify", "999999")
    assert code == 2 and "no backup" in err
    shutil.rmtree(project.parent / "backups" / "tmp")  # staging is disposable
    assert verify(capsys, project)[0] == 0


# --- while `cdc start` owns the warehouse ------------------------------------------------------


def test_backup_goes_through_the_control_socket_of_a_running_cdc(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in for `cdc start`: this process holds the warehouse open and serves the control
    socket with `service.REQUESTS` (as the CDC loop does between batches); the commands ask it
    instead of opening the file."""
    import threading
    import time
    from types import SimpleNamespace

    from clinipipe.pipeline import control

    loaded = load_spec(project)
    handlers = {
        op: (lambda call, f=f: f(call.loaded, call.target, call.params, call.progress))
        for op, f in service.REQUESTS.items()
    }
    with DuckDBTarget(loaded) as target, control.serving(loaded) as server:
        requests = control.ControlRequests(server, handlers)
        context = SimpleNamespace(loaded=loaded, target=target, stats=None)
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                requests.run(context)
                time.sleep(0.02)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            code, out, err = cli(capsys, "-c", str(project), "backup", "create", "--json")
            assert code == 0, err
            assert "owns the warehouse" in err and json.loads(out)["objects_written"] == 2
            code, out, _ = cli(capsys, "-c", str(project), "audit", "log", "--json")
            assert code == 0 and [e["action"] for e in json.loads(out)] == ["backup create"]
            code, out, err = cli(capsys, "-c", str(project), "backup", "verify", "--json")
            assert code == 0 and json.loads(out)["audit_checked"], err
        finally:
            stop.set()
            thread.join(timeout=10)
    assert requests.served == 3
