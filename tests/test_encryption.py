"""Encryption at rest on DuckDB (issue 16, item 2): with `target.encryption_key_env` the
warehouse file and its WAL, the serving generation files and the backup objects hold no
readable PHI (searched in their raw bytes for planted values; the same search finds them in an
unencrypted warehouse), open only with the key, fail clearly without it, and an encrypted
warehouse reopens after a kill -9 that left everything in its WAL."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from clinipipe.backup import service
from clinipipe.spec import load_spec
from clinipipe.targets.duckdb import DuckDBTarget
from clinipipe.targets.serving_files import (
    ServingError,
    ServingReader,
    generation_name,
    serving_root,
    write_current,
    write_generation,
)
from tests.helpers import cli, deploy_target_templates, execute
from tests.test_exactness import run_then_kill

KEY_VAR = "CLINIPIPE_DUCKDB_KEY"
KEY = "correct horse battery staple 4711"
NAME = "Zebulonia Quaxworthington"
SSN = "987-65-4329"
PLANTED = (NAME.encode(), SSN.encode(), b"Quaxworthington")


def spec_text(pipeline: str, encrypted: bool, store: str = "backups") -> str:
    key = f"  encryption_key_env: {KEY_VAR}\n" if encrypted else ""
    return (
        f"version: 1\nname: {pipeline}\nsource:\n  dsn: ${{CLINIPIPE_SOURCE_DSN}}\n"
        "  publication: enc_pub\n  slot: enc_slot\n  tables:\n"
        "    - name: patients\n      primary_key: [id]\n"
        f"target:\n  type: duckdb\n  path: warehouse.duckdb\n{key}"
        f"backup:\n  store: {store}\n"
    )


def make_project(folder: Path, dsn: str, monkeypatch: pytest.MonkeyPatch, encrypted: bool) -> Path:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    monkeypatch.setenv(KEY_VAR, KEY)
    monkeypatch.chdir(folder)
    spec = folder / "clinipipe.yaml"
    spec.write_text(spec_text("enc", encrypted))
    return spec


def plant(dsn: str) -> None:
    execute(
        dsn,
        "CREATE TABLE patients (id int PRIMARY KEY, name text, ssn text, note text)",
        "INSERT INTO patients SELECT g, 'patient ' || g, lpad(g::text, 9, '0'), 'routine visit' "
        "FROM generate_series(1, 2000) g",
        f"INSERT INTO patients VALUES (5001, '{NAME}', '{SSN}', 'seen by {NAME}')",
    )


def raw_bytes(folder: Path, pattern: str) -> bytes:
    """Every byte of the files matching `pattern` in `folder` (recursively), concatenated."""
    files = sorted(p for p in folder.rglob(pattern) if p.is_file())
    assert files, pattern
    return b"".join(p.read_bytes() for p in files)


def warehouse_rows(spec: Path) -> list[tuple[object, ...]]:
    with DuckDBTarget(load_spec(spec), read_only=True) as target:
        return target.query("SELECT id, name, ssn FROM raw.patients ORDER BY id")


# --- the warehouse file and its WAL -------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [True, False])
def test_encrypted_warehouse_holds_no_planted_phi_and_opens_only_with_the_key(
    tmp_path: Path,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    encrypted: bool,
) -> None:
    plant(pg_dsn)
    spec = make_project(tmp_path, pg_dsn, monkeypatch, encrypted)
    for args in (("deploy",), ("backfill",)):
        code, _, err = cli(capsys, "-q", "-c", str(spec), *args)
        assert code == 0, err
    execute(pg_dsn, f"INSERT INTO patients VALUES (5002, '{NAME} Jr', '{SSN}', 'cdc')")
    code, _, err = cli(capsys, "-q", "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 0, err
    data = raw_bytes(tmp_path, "warehouse.duckdb*")  # the file and its WAL, if any
    found = [p for p in PLANTED if p in data]
    if not encrypted:  # the search works: a plain warehouse shows the planted values
        assert found, "control: planted values not found in an unencrypted warehouse"
        return
    assert found == [], found
    rows = warehouse_rows(spec)
    assert (5001, NAME, SSN) in rows and (5002, f"{NAME} Jr", SSN) in rows and len(rows) == 2002
    # Without the key: DuckDB itself refuses, and clinipipe says which variable is missing.
    with pytest.raises(duckdb.Error, match="without a key"):
        duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    monkeypatch.delenv(KEY_VAR)
    code, out, err = cli(capsys, "-q", "-c", str(spec), "backfill")
    assert code == 2, err
    assert KEY_VAR in err and KEY not in err + out
    # A wrong key: exit 1, naming the variable, never the key.
    monkeypatch.setenv(KEY_VAR, "not the key")
    code, out, err = cli(capsys, "-q", "-c", str(spec), "backfill")
    assert code == 1, err
    assert "wrong encryption key" in err.lower() and KEY_VAR in err
    assert "not the key" not in err + out
    # The spec names a key but the file is a plain one: a clear refusal.
    plain = tmp_path / "plain"
    plain.mkdir()
    duckdb.connect(str(plain / "warehouse.duckdb")).close()
    (plain / "clinipipe.yaml").write_text(spec_text("enc", True))
    monkeypatch.setenv(KEY_VAR, KEY)
    code, _, err = cli(capsys, "-q", "-c", str(plain / "clinipipe.yaml"), "backfill")
    assert code == 1 and "not encrypted" in err, err


def test_encrypted_warehouse_reopens_after_a_kill_9_with_everything_in_its_wal(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant(pg_dsn)
    spec = make_project(tmp_path, pg_dsn, monkeypatch, True)
    run_then_kill(spec, "deploy")
    run_then_kill(spec, "backfill")  # killed where it would close: the rows are in the WAL only
    wal = tmp_path / "warehouse.duckdb.wal"
    assert wal.exists() and wal.stat().st_size > 0
    assert [p for p in PLANTED if p in wal.read_bytes()] == []
    rows = warehouse_rows(spec)  # replays the encrypted WAL
    assert len(rows) == 2001 and (5001, NAME, SSN) in rows


# --- serving generation files -------------------------------------------------------------------


def test_serving_files_of_an_encrypted_warehouse_are_encrypted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_project(tmp_path, "postgresql://clinipipe@127.0.0.1:1/none", monkeypatch, True)
    with DuckDBTarget(load_spec(spec)) as target:
        target.execute_atomically([
            "CREATE SCHEMA raw",
            "CREATE TABLE raw.patients AS SELECT i AS id, 'p' || i AS name FROM range(500) r(i)",
            f"INSERT INTO raw.patients VALUES (9001, '{NAME}')",
        ])  # fmt: skip
        folder = serving_root(target.path) / "patients"
        folder.mkdir(parents=True)
        path = folder / generation_name(1)
        rows = write_generation(target, path, "patients", "SELECT * FROM raw.patients", ["id"])
        assert rows == 501
    write_current(folder, path.name)
    assert [p for p in PLANTED if p in raw_bytes(folder, "0*")] == []
    sql = "SELECT name FROM patients WHERE id = 9001"
    with ServingReader(tmp_path / "warehouse.duckdb", encryption_key=KEY) as reader:
        assert reader.query("patients", sql) == [(NAME,)]
    with ServingReader(tmp_path / "warehouse.duckdb") as reader, pytest.raises(duckdb.Error):
        reader.query("patients", sql)
    with ServingReader(tmp_path / "warehouse.duckdb", encryption_key="wrong") as reader:
        with pytest.raises(ServingError, match="encrypted") as raised:
            reader.query("patients", sql)
        assert "wrong" not in str(raised.value).replace("Wrong", "")


# --- backups ------------------------------------------------------------------------------------


def test_backups_of_an_encrypted_warehouse_are_encrypted_and_restore_only_with_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_project(tmp_path, "postgresql://clinipipe@127.0.0.1:1/none", monkeypatch, True)
    loaded = load_spec(spec)
    with DuckDBTarget(loaded) as target:
        deploy_target_templates(target, loaded)  # the control tables (audit log) backups need
        target.execute_atomically([
            "CREATE TABLE raw.patients AS SELECT i AS id, 'patient ' || i AS name, "
            "lpad(i::VARCHAR, 9, '0') AS ssn FROM range(3000) r(i)",
            f"INSERT INTO raw.patients VALUES (9001, '{NAME}', '{SSN}')",
        ])  # fmt: skip
    code, out, err = cli(capsys, "-c", str(spec), "backup", "create", "--json", "--schemas", "raw")
    assert code == 0, err
    made = json.loads(out)
    store = tmp_path / "backups"
    objects = [p for p in (store / "objects").rglob("*") if p.is_file()]
    assert objects
    for obj in objects:  # every object: encrypted Parquet (footer too), no planted value
        data = obj.read_bytes()
        assert data[:4] == b"PARE" and data[-4:] == b"PARE", obj
        assert [p for p in PLANTED if p in data] == [], obj
    everything = raw_bytes(store, "*")
    assert KEY.encode() not in everything and [p for p in PLANTED if p in everything] == []
    assert b"+parquet-aes-gcm:" in everything  # the manifest names the key id, not the key

    code, out, err = cli(capsys, "-c", str(spec), "backup", "verify", "--read-data", "--json")
    assert code == 0, out + err
    code, _, err = cli(capsys, "-c", str(spec), "backup", "restore", made["backup_id"],
                       "--to", "restored")  # fmt: skip
    assert code == 0, err
    with DuckDBTarget(load_spec(spec), read_only=True) as target:
        live = target.query("SELECT * FROM raw.patients ORDER BY id")
        assert target.query("SELECT * FROM restored.patients ORDER BY id") == live
        assert (9001, NAME, SSN) in live

    # Another (plain) warehouse over the same store: restore and --read-data refuse clearly.
    other = tmp_path / "other"
    other.mkdir()
    (other / "clinipipe.yaml").write_text(spec_text("enc", False, store=str(store)))
    code, out, err = cli(capsys, "-c", str(other / "clinipipe.yaml"), "backup", "verify",
                         "--read-data", "--json")  # fmt: skip
    assert code == 3, out + err
    assert "encrypted" in out and KEY not in out
    loaded = load_spec(other / "clinipipe.yaml")
    with DuckDBTarget(loaded) as target:
        with pytest.raises(Exception, match="encrypted") as raised:
            service.restore_backup(loaded, target, made["backup_id"], "restored")
        assert "encryption_key_env" in str(raised.value)
        assert not target.table_exists("restored", "patients")
    # The right spec with another key: the key id it needs is named.
    monkeypatch.setenv(KEY_VAR, "another key")
    code, out, err = cli(capsys, "-c", str(spec), "backup", "verify", "--read-data", "--json")
    assert code == 3 and "key id" in out, out + err


def test_targets_of_one_encrypted_warehouse_share_it_within_a_process(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB attaches an encrypted file once per process; `cdc start`'s loop and its PHI
    scanner (another thread) each open the warehouse. Both targets work at once, from their own
    threads, close in any order, and what they wrote is in the file afterwards."""
    import threading

    spec = make_project(tmp_path, pg_dsn, monkeypatch, encrypted=True)
    loaded = load_spec(spec)
    with DuckDBTarget(loaded) as first:
        first.execute_atomically(["CREATE TABLE shared (n INTEGER)"])
        second = DuckDBTarget(loaded)
        second.__enter__()
        errors: list[BaseException] = []

        def write(target: DuckDBTarget, base: int) -> None:
            try:
                for i in range(50):
                    target.execute_atomically([f"INSERT INTO shared VALUES ({base + i})"])
                    target.query("SELECT count(*) FROM shared")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(t, b))
                   for t, b in ((first, 0), (second, 1000))]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
    assert second.query("SELECT count(*) FROM shared") == [(100,)]  # first closed, second works
    second.__exit__(None, None, None)
    with DuckDBTarget(loaded) as reopened:
        assert reopened.query("SELECT count(*), sum(n) FROM shared") == [(100, 52450)]
    with pytest.raises(duckdb.Error):  # still encrypted: no key, no table
        duckdb.connect(str(tmp_path / "warehouse.duckdb")).execute("SELECT 1 FROM shared")
