"""DuckDB backup: consistent snapshots to Parquet (zstd), restores from Parquet, and the
fingerprints that let a backup skip unchanged tables (the table-export model of `Backup`, whose
docstring states the guarantees; DuckDB has no native backups: `cannot.py`). How they hold here:

* One snapshot: a cursor of the target's connection runs ``BEGIN TRANSACTION``, then the
  `reads`, every fingerprint and every ``COPY (SELECT ...) TO 'file.parquet' (FORMAT parquet,
  COMPRESSION zstd)`` on that cursor, then ``ROLLBACK`` (nothing was written to the database).
  DuckDB's MVCC gives the transaction one snapshot: a writer committing meanwhile (another
  cursor) is not seen. While `cdc start` runs, backups reach it through its control socket and
  run between two batches on its connection.
* Fingerprint of a table: ``count(*)``, ``sum(hash(row))`` and ``sum(hash(row, 1))`` over the
  table's columns in order, as HUGEINT (no overflow), and a hash of the column names and
  types. Order-independent, counts duplicates, costs one scan and no writes. Method
  ``duckdb-<version>-rowhash-v1``.
* Restore: one transaction for every table (DDL included; DuckDB's DDL is transactional);
  each column is cast to its backed-up type, so the restored table has exactly the backed-up
  columns and types. Primary keys, defaults and other constraints are not in a backup: a
  restored table has none (a `replace` keeps the live table's).
* Encrypted at rest: when the warehouse is encrypted (`target.encryption_key_env`), every
  object is Parquet modular encryption (AES-GCM, footer and columns) under a 256-bit key
  derived from the warehouse key (PBKDF2-SHA256, its own salt). Only a key id (a hash of the
  derived key) is recorded: in the fingerprint method of each manifest entry
  (``...+parquet-aes-gcm:<key id>``), so unchanged tables are reused only under the same key
  and a restore names the key a backup needs. The key is never written beside the objects.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from clinipipe.secrets import first_line, scrub_values
from clinipipe.targets.capabilities.backup import (
    Backup,
    BackupRefused,
    ExportedTable,
    RestoredTable,
    RestoreFile,
    Snapshot,
    TableProgress,
    TableRef,
)
from clinipipe.targets.core import TargetError
from clinipipe.targets.duckdb.core import DuckDBCore, rollback, transaction

PARQUET_OPTIONS = "FORMAT parquet, COMPRESSION zstd"
PARQUET_KEY_NAME = "clinipipe_backup"
"""The session name of the derived Parquet key (``PRAGMA add_parquet_key``)."""
ENCRYPTED_TAG = "+parquet-aes-gcm:"
"""Appended (with the key id) to the fingerprint method of encrypted backups."""
_ENCRYPTION = f"ENCRYPTION_CONFIG {{footer_key: '{PARQUET_KEY_NAME}'}}"


@functools.lru_cache(maxsize=4)
def parquet_key(key: str) -> tuple[str, str]:
    """(base64 256-bit Parquet key, key id) derived from the warehouse key `key`. The id is a
    hash of the derived key: it names the key in manifests and messages, and reveals nothing
    usable to decrypt."""
    derived = hashlib.pbkdf2_hmac("sha256", key.encode(), b"clinipipe-backup-parquet-v1", 200_000)
    key_id = hashlib.sha256(b"clinipipe-backup-key-id-v1" + derived).hexdigest()[:16]
    return base64.b64encode(derived).decode(), key_id


def key_id_of(method: str) -> str | None:
    """The key id an object of fingerprint method `method` is encrypted with (None: plain)."""
    return method.split(ENCRYPTED_TAG, 1)[1] if ENCRYPTED_TAG in method else None


def encrypted_parquet_rows(path: Path, key: str | None, method: str) -> int:
    """The rows of backup object `path` written with fingerprint method `method`, read with
    the warehouse key `key` (None: no key at hand). Raises `TargetError` naming the key id
    the object needs when `key` is missing or another key; reads every row group (the check
    of ``backup verify --read-data``)."""
    need = key_id_of(method)
    con = duckdb.connect(":memory:")
    try:
        reader = _reader(con, key, need, "read")
        row = con.execute(f"SELECT count(*) FROM {reader(path)}").fetchone()
        assert row is not None
        return int(row[0])
    except duckdb.Error as exc:
        raise _failure(f"cannot read backup object {path.name}", exc) from None
    finally:
        con.close()


def _reader(con: duckdb.DuckDBPyConnection, key: str | None, need: str | None, doing: str
            ) -> Any:  # fmt: skip
    """A function giving the ``read_parquet(...)`` of a path on `con`, with the Parquet key of
    `key` registered when the objects are encrypted (key id `need`)."""
    if need is None:
        return lambda path: f"read_parquet({_literal(str(path))})"
    if key is None:
        raise TargetError(
            f"cannot {doing} the backup: it is encrypted (key id {need}) and this spec names no "
            "key; set target.encryption_key_env and that variable to the warehouse key"
        )
    b64, key_id = parquet_key(key)
    if key_id != need:
        raise TargetError(
            f"cannot {doing} the backup: it is encrypted with key id {need}, and the key in "
            f"the spec's target.encryption_key_env variable has key id {key_id}"
        )
    con.execute(f"PRAGMA add_parquet_key('{PARQUET_KEY_NAME}', '{b64}')")
    return lambda path: f"read_parquet({_literal(str(path))}, encryption_config = " \
                        f"{{footer_key: '{PARQUET_KEY_NAME}'}})"  # fmt: skip


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _columns(cur: duckdb.DuckDBPyConnection, ref: TableRef) -> tuple[tuple[str, str], ...]:
    rows = cur.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ? "
        "ORDER BY ordinal_position",
        [ref.schema, ref.table],
    ).fetchall()
    return tuple((str(n), str(t)) for n, t in rows)


def _fingerprint_sql(relation: str, columns: Sequence[str]) -> str:
    cols = ", ".join(_q(c) for c in columns)
    return (
        "SELECT count(*), COALESCE(sum(hash(x)::HUGEINT), 0), "
        f"COALESCE(sum(hash(x, 1)::HUGEINT), 0) FROM (SELECT {cols} FROM {relation}) x"
    )


def _fingerprint(
    cur: duckdb.DuckDBPyConnection, relation: str, columns: Sequence[tuple[str, str]]
) -> tuple[int, str]:
    """(rows, fingerprint) of `relation` read as `columns`; the fingerprint also covers the
    column names and types, so a renamed or retyped column is never taken as unchanged."""
    row = cur.execute(_fingerprint_sql(relation, [c for c, _ in columns])).fetchone()
    assert row is not None
    layout = hashlib.sha256(json.dumps([list(c) for c in columns]).encode()).hexdigest()[:16]
    return int(row[0]), f"{int(row[0])}:{int(row[1]):x}:{int(row[2]):x}:{layout}"


def _failure(what: str, exc: duckdb.Error) -> TargetError:
    return TargetError(f"{what}: {scrub_values(first_line(exc))}")


class DuckDBBackup(DuckDBCore, Backup):
    """`Backup` on DuckDB: table export to Parquet and restore (see the module docstring)."""

    def backup_fingerprint_method(self) -> str:
        method = f"duckdb-{duckdb.__version__}-rowhash-v1"
        key = self.encryption_key()
        return method if key is None else method + ENCRYPTED_TAG + parquet_key(key)[1]

    def exportable_tables(self, schemas: Sequence[str]) -> list[TableRef]:
        if not schemas:
            return []
        marks = ", ".join("?" for _ in schemas)
        rows = self.con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            f"WHERE table_catalog = current_database() AND table_schema IN ({marks}) "
            "AND table_type = 'BASE TABLE' ORDER BY 1, 2",
            list(schemas),
        ).fetchall()
        return [TableRef(str(s), str(t)) for s, t in rows]

    def export_tables(
        self,
        tables: Sequence[TableRef],
        folder: Path,
        *,
        reuse: Mapping[TableRef, str] | None = None,
        reads: Sequence[str] = (),
        on_table: TableProgress | None = None,
    ) -> Snapshot:
        """File names are ``<n>-<schema>.<table>.parquet`` in `folder`."""
        reuse = reuse or {}
        key = self.encryption_key()
        options = PARQUET_OPTIONS
        cur = self.cursor()
        exported: list[ExportedTable] = []
        answers: list[list[tuple[Any, ...]]] = []
        try:
            if key is not None:  # the session's Parquet key, before the snapshot begins
                cur.execute(
                    f"PRAGMA add_parquet_key('{PARQUET_KEY_NAME}', '{parquet_key(key)[0]}')"
                )
                options = f"{PARQUET_OPTIONS}, {_ENCRYPTION}"
            cur.execute("BEGIN TRANSACTION")
            try:
                for sql in reads:
                    answers.append(cur.execute(sql).fetchall())
                for i, ref in enumerate(tables):
                    columns = _columns(cur, ref)
                    if not columns:
                        raise TargetError(f"cannot back up {ref}: no such table in "
                                          f"{self.describe()}")  # fmt: skip
                    relation = f"{_q(ref.schema)}.{_q(ref.table)}"
                    rows, fingerprint = _fingerprint(cur, relation, columns)
                    path: Path | None = None
                    if reuse.get(ref) != fingerprint:
                        path = folder / f"{i:04d}-{ref.schema}.{ref.table}.parquet"
                        cols = ", ".join(_q(c) for c, _ in columns)
                        cur.execute(
                            f"COPY (SELECT {cols} FROM {relation}) TO {_literal(str(path))} "
                            f"({options})"
                        )
                    exported.append(ExportedTable(ref, rows, columns, fingerprint, path))
                    if on_table is not None:
                        on_table(str(ref), i + 1, len(tables))
            finally:
                rollback(cur)  # a read: nothing to keep
        except duckdb.Error as exc:
            raise _failure(f"backup snapshot of {self.describe()} failed", exc) from None
        finally:
            cur.close()
        return Snapshot(exported, answers, self.backup_fingerprint_method())

    def restore_tables(
        self,
        files: Sequence[RestoreFile],
        schema: str | None,
        *,
        replace: bool = False,
        on_table: TableProgress | None = None,
    ) -> list[RestoredTable]:
        method = self.backup_fingerprint_method()
        key = self.encryption_key()
        cur = self.cursor()
        restored: list[RestoredTable] = []
        try:
            for need in sorted({n for f in files if (n := key_id_of(f.fingerprint_method))}):
                _reader(cur, key, need, "restore")  # every key needed, before anything is written
            with transaction(cur):
                for i, f in enumerate(files):
                    reader = _reader(cur, key, key_id_of(f.fingerprint_method), "restore")
                    restored.append(_restore_one(cur, f, schema, replace, method, reader))
                    if on_table is not None:
                        on_table(f"{restored[-1].schema}.{restored[-1].table}", i + 1,
                                 len(files))  # fmt: skip
        except duckdb.Error as exc:
            raise _failure("restore failed (nothing was restored)", exc) from None
        finally:
            cur.close()
        return restored


def _restore_one(
    cur: duckdb.DuckDBPyConnection,
    f: RestoreFile,
    schema: str | None,
    replace: bool,
    method: str,
    reader: Any,
) -> RestoredTable:
    """Load `f` on `cur` (inside the restore's transaction) and check it against its backup."""
    into = TableRef(schema or f.ref.schema, f.ref.table)
    relation = f"{_q(into.schema)}.{_q(into.table)}"
    names = [c for c, _ in f.columns]
    casts = ", ".join(f"CAST({_q(c)} AS {t}) AS {_q(c)}" for c, t in f.columns)
    source = f"(SELECT {casts} FROM {reader(f.path)})"
    exists = bool(_columns(cur, into))
    if exists and not replace:
        raise BackupRefused(
            f"{into} exists: restore refuses to write over a table (restore into a "
            "new schema, or pass --replace --yes to replace its rows)"
        )
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(into.schema)}")
    if exists:
        cols = ", ".join(_q(c) for c in names)
        cur.execute(f"DELETE FROM {relation}")
        cur.execute(f"INSERT INTO {relation} ({cols}) SELECT {cols} FROM {source}")
    else:
        cur.execute(f"CREATE TABLE {relation} AS SELECT * FROM {source}")
    rows, fingerprint = _fingerprint(cur, relation, f.columns)
    # Encryption does not change the row hashes: compare the methods without the key id.
    checked = f.fingerprint_method.split(ENCRYPTED_TAG)[0] == method.split(ENCRYPTED_TAG)[0]
    if rows != f.rows or (checked and fingerprint != f.fingerprint):
        what = "row count" if rows != f.rows else "content fingerprint"
        raise BackupRefused(
            f"restored {into} does not match its backup ({what} differs: "
            f"{rows:,} rows restored, {f.rows:,} backed up); nothing was restored"
        )
    return RestoredTable(into.schema, into.table, rows, exists, checked)
