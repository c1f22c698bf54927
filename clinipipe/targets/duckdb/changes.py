"""DuckDB change apply: CDC batches (set-based, TOAST-aware), large transactions staged in the
open batch transaction, schema changes and column fills."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import duckdb

from clinipipe.secrets import first_line, scrub_values
from clinipipe.source.catalog import Column, TableSchema
from clinipipe.source.pgoutput import lsn_to_str
from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.context import RAW_SCHEMA
from clinipipe.targets.capabilities.changes import CdcBatch, ChangeApply, SchemaChange, TableBatch
from clinipipe.targets.capabilities.loading import BatchStream
from clinipipe.targets.core import TargetError
from clinipipe.targets.duckdb.core import DuckDBCore, columns_of, load_batches, rollback
from clinipipe.targets.duckdb.types import duckdb_cast, duckdb_stream_cast, duckdb_type


class DuckDBChangeApply(DuckDBCore, ChangeApply):
    """`ChangeApply` on DuckDB. A CDC transaction is one DuckDB transaction on its own cursor,
    begun by the first `stage_cdc_changes` (or `apply_cdc_batch`) and ended by
    `apply_cdc_batch` (COMMIT), a failure, `discard_staged_cdc` or `close` (ROLLBACK). Schema
    changes run every ALTER first, then the data, then the records, in one transaction."""

    streams_large_transactions = True

    def __init__(self, loaded: LoadedSpec, *, read_only: bool = False) -> None:
        super().__init__(loaded, read_only=read_only)
        self._cdc_cursor: duckdb.DuckDBPyConnection | None = None  # open CDC transaction

    def close(self) -> None:
        """Roll back any staged CDC changes, then close the connection."""
        if self._con is not None:
            self.discard_staged_cdc()
        super().close()

    def _cdc_transaction(self) -> duckdb.DuckDBPyConnection:
        """The cursor of the open CDC transaction (begun on first use)."""
        if self._cdc_cursor is None:
            cur = self.cursor()
            cur.execute("BEGIN TRANSACTION")
            self._cdc_cursor = cur
        return self._cdc_cursor

    def discard_staged_cdc(self) -> None:
        cur, self._cdc_cursor = self._cdc_cursor, None
        if cur is not None:
            try:
                rollback(cur)
            finally:
                cur.close()

    def stage_cdc_changes(self, tables: Sequence[TableBatch], lsn: int) -> None:
        cur = self._cdc_transaction()
        try:
            for table_batch in tables:
                _apply_table_changes(cur, self, table_batch, lsn)
        except BaseException as exc:
            self.discard_staged_cdc()
            if isinstance(exc, duckdb.Error):
                raise TargetError(
                    f"applying CDC changes to {self.describe()} failed: "
                    f"{scrub_values(first_line(exc))} (nothing of the batch was kept)"
                ) from None
            raise

    def apply_cdc_batch(self, batch: CdcBatch) -> None:
        q = self.dialect.quote_literal
        cur = self._cdc_transaction()
        self._cdc_cursor = None  # this call ends the transaction, committed or rolled back
        try:
            try:
                for table_batch in batch.tables:
                    _apply_table_changes(cur, self, table_batch, batch.end_lsn)
                applied = dt.datetime.now(dt.timezone.utc)
                latencies = [
                    round((applied - t).total_seconds() * 1000, 3) for t in batch.commit_times
                ]
                tables = ",".join(t.table.name for t in batch.tables)
                cur.execute(
                    f"INSERT OR REPLACE INTO {self.control('cdc_checkpoints')} "
                    f"VALUES ({q(batch.slot)}, {batch.end_lsn}, {q(lsn_to_str(batch.end_lsn))}, "
                    f"{q(applied.isoformat())})"
                )
                cur.execute(
                    f"INSERT INTO {self.control('cdc_batches')} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [uuid.uuid4().hex, batch.slot, batch.end_lsn, batch.changes, tables,
                     len(batch.commit_times), batch.received_at, applied, latencies],
                )  # fmt: skip
                cur.execute(self.metering_insert_sql(batch.metering_row(applied)))
                cur.execute("COMMIT")
            except BaseException:
                rollback(cur)
                raise
        except duckdb.Error as exc:
            raise TargetError(
                f"applying a CDC batch to {self.describe()} failed: "
                f"{scrub_values(first_line(exc))} (nothing of the batch was kept)"
            ) from None
        finally:
            cur.close()

    def evolve_table(self, changes: Sequence[SchemaChange], lsn: int) -> None:
        q, quote = self.dialect.quote_literal, self.dialect.quote_ident
        now = q(dt.datetime.now(dt.timezone.utc).isoformat())
        # Every ALTER first, then the data: DuckDB 1.5.5 cannot commit a transaction that
        # ALTERs a table it has already UPDATEd ("another transaction has altered this table").
        alters: list[str] = []
        fills: list[str] = []
        records: list[str] = []
        for change in changes:
            raw, columns = self.raw_name(change.table), self.control("source_columns")
            where = f"table_name = {q(change.table)} AND attnum = {change.attnum}"
            detail: str | None = None
            if change.kind == "add":
                assert change.column_type is not None
                # No DEFAULT in the catalog: DuckDB replays its WAL without a default database
                # and fails on a default calling a function (kill -9 after such an ALTER left a
                # file that cannot be opened). Existing rows get the source's missing value as
                # data; rows written later always carry the column.
                alters.append(
                    f"ALTER TABLE {raw} ADD COLUMN IF NOT EXISTS {quote(change.column)} "
                    f"{duckdb_type(change.column_type)}"
                )
                if change.missing_value is not None:
                    value = duckdb_stream_cast(q(change.missing_value), change.column_type)
                    fills.append(f"UPDATE {raw} SET {quote(change.column)} = {value}")
                records.append(f"DELETE FROM {columns} WHERE {where}")
                records.append(
                    f"INSERT INTO {columns} VALUES ({q(change.table)}, {change.attnum}, "
                    f"{q(change.column)}, {q(change.column_type.pg_type)}, FALSE)"
                )
                if change.fill:
                    records.append(
                        f"INSERT OR REPLACE INTO {self.control('column_fills')} VALUES "
                        f"({q(change.table)}, {change.attnum}, {lsn})"
                    )
                detail = change.column_type.pg_type
            elif change.kind == "drop":
                records.append(f"UPDATE {columns} SET dropped = TRUE WHERE {where}")
            elif change.kind == "rename":
                assert change.new_name is not None
                alters += self._rename_sql(raw, change, changes)
                records.append(
                    f"UPDATE {columns} SET target_column = {q(change.new_name)} WHERE {where}"
                )
                detail = change.new_name
            elif change.kind == "retype":
                assert change.column_type is not None
                alters.append(
                    f"ALTER TABLE {raw} ALTER COLUMN {quote(change.column)} "
                    f"SET DATA TYPE {duckdb_type(change.column_type)}"
                )
                records.append(
                    f"UPDATE {columns} SET pg_type = {q(change.column_type.pg_type)} WHERE {where}"
                )
                detail = change.column_type.pg_type
            records.append(
                f"INSERT INTO {self.control('schema_history')} VALUES ({q(change.table)}, "
                f"{q(change.kind)}, {q(change.column)}, {q(detail)}, {lsn}, {now})"
            )
        try:
            self.execute_atomically(alters + fills + records)
        except duckdb.Error as exc:
            raise TargetError(
                f"applying schema changes to {self.describe()} failed: "
                f"{scrub_values(first_line(exc))} (nothing was changed)"
            ) from None

    def _rename_sql(
        self, raw: str, change: SchemaChange, changes: Sequence[SchemaChange]
    ) -> list[str]:
        """The ALTERs of one rename of a set (`changes`) applied together: when any rename of
        the table takes a name another column has now (a swap, a name freed by a rename), each
        goes through a temporary name first (the first rename of the set moves them all there,
        every rename then takes its final name)."""
        quote = self.dialect.quote_ident
        renames = [c for c in changes if c.kind == "rename" and c.table == change.table]
        raw_names = {name.lower() for name, _ in columns_of(self.con, RAW_SCHEMA, change.table)}
        swapping = any(
            c.new_name is not None
            and c.new_name.lower() != c.column.lower()
            and c.new_name.lower() in raw_names
            for c in renames
        )
        if not swapping:
            new_name = quote(change.new_name or "")
            return [f"ALTER TABLE {raw} RENAME COLUMN {quote(change.column)} TO {new_name}"]
        statements = []
        if change is renames[0]:
            statements += [
                f"ALTER TABLE {raw} RENAME COLUMN {quote(c.column)} "
                f"TO {quote(f'__clinipipe_renaming_{c.attnum}')}"
                for c in renames
            ]
        statements.append(
            f"ALTER TABLE {raw} RENAME COLUMN {quote(f'__clinipipe_renaming_{change.attnum}')} "
            f"TO {quote(change.new_name or '')}"
        )
        return statements

    def fill_column(
        self, table: TableSchema, column: str, attnum: int, stream: BatchStream | None
    ) -> int:
        quote, q = self.dialect.quote_ident, self.dialect.quote_literal
        forget = (
            f"DELETE FROM {self.control('column_fills')} "
            f"WHERE table_name = {q(table.name)} AND attnum = {attnum}"
        )
        if stream is None:
            self.execute_atomically([forget])
            return 0
        raw = self.raw_name(table.name)
        by_name = {c.name: c for c in table.columns}
        match = " AND ".join(
            f"{raw}.{quote(k)} = {duckdb_cast(f'b.{quote(k)}', by_name[k].type)}"
            for k in table.primary_key
        )
        update = (
            f"UPDATE {raw} SET {quote(column)} = "
            f"{duckdb_cast(f'b.{quote(column)}', by_name[column].type)} "
            f"FROM _clinipipe_fill b WHERE {match}"
        )
        return load_batches(
            self, stream, "_clinipipe_fill", [update], lambda _rows: [forget],
            f"copying column {table.name}.{column} into {self.describe()} failed",
        )  # fmt: skip


def _apply_table_changes(
    cur: duckdb.DuckDBPyConnection, target: DuckDBChangeApply, batch: TableBatch, lsn: int
) -> None:
    """Set-based apply of one table's changes (see `Target.apply_cdc_batch`)."""
    import pyarrow.compute as pc

    quote = target.dialect.quote_ident
    table = batch.table
    raw = target.raw_name(table.name)
    changes = batch.changes
    truncated = pc.equal(changes["_op"], "T")
    if pc.any(truncated).as_py():
        last = pc.max(pc.filter(changes["_seq"], truncated)).as_py()
        for key in batch.refresh_keys:  # pre-images: every row the truncate removes
            cur.execute(
                f"INSERT INTO {target.control('changed_keys')} SELECT DISTINCT ?, ?, "
                f"CAST({quote(key)} AS VARCHAR), ? FROM {raw}",
                [table.name, key, lsn],
            )
        cur.execute(f"DELETE FROM {raw}")
        changes = changes.filter(pc.greater(changes["_seq"], last))
    if changes.num_rows == 0:
        return
    by_name = {c.name: c for c in table.columns}
    if not table.primary_key:  # append-only: the pipeline passes inserts only
        _append_rows(cur, target, batch, changes)
        return
    key_cols = [quote(k) for k in table.primary_key]
    keys = ", ".join(key_cols)
    key_casts = ", ".join(
        f"{duckdb_stream_cast(f'f.{quote(k)}', by_name[k].type)}" for k in table.primary_key
    )
    toast = [c for c in table.columns if f"{c.name}__u" in changes.column_names]
    # Inside the CDC transaction nothing is registered or created per part that holds data:
    # a dropped temporary table or an unregistered Arrow view stays (with its memory) until
    # COMMIT, since DROP is transactional, so a staged transaction of millions of rows would
    # grow by every part. The Arrow tables are read by name through DuckDB's replacement scan
    # of this frame's locals (`_cdc`, `_cdc_final`), and the last change per key is computed
    # on a cursor of its own, outside the transaction.
    _cdc = changes  # read by name in the SQL below (replacement scan)
    _cdc_final = _last_change_per_key(target, changes, keys)
    origin_join = ""
    if toast or batch.kept:
        _resolve_origins(
            cur, target, table, toast, bool(batch.kept), changes.column_names, _cdc, _cdc_final
        )
        origin_match = " AND ".join(
            f"cur.{quote(k)} = {duckdb_stream_cast(f'o.{quote(_ORIGIN + k)}', by_name[k].type)}"
            for k in table.primary_key
        )
        origin_join = (
            " LEFT JOIN _cdc_origin o ON o._final = f._seq"
            f" LEFT JOIN {raw} cur ON o._origin_op = 'U' AND {origin_match}"
        )

    def value(c: Column) -> str:
        cast = duckdb_stream_cast(f"f.{quote(c.name)}", c.type)
        if c not in toast:
            return f"{cast} AS {quote(c.name)}"
        flag = quote(c.name + "__u")
        resolved = duckdb_stream_cast(f"o.{quote(c.name + '__val')}", c.type)
        return (
            f"CASE WHEN NOT coalesce(f.{flag}, false) THEN {cast} "
            f"WHEN o.{quote(c.name + '__has')} THEN {resolved} "
            f"ELSE cur.{quote(c.name)} END AS {quote(c.name)}"
        )

    missing_row = " AND ".join(f"cur.{quote(k)} IS NULL" for k in table.primary_key)

    def kept(c: Column) -> str:
        fallback = (
            "NULL"
            if c.missing_value is None
            else duckdb_stream_cast(target.dialect.quote_literal(c.missing_value), c.type)
        )
        name = quote(c.name)
        return f"CASE WHEN {missing_row} THEN {fallback} ELSE cur.{name} END AS {name}"

    values = ", ".join([*(value(c) for c in table.columns), *(kept(c) for c in batch.kept)])
    rows_sql = f"SELECT {values} FROM _cdc_final f{origin_join} WHERE f._op <> 'D'"
    if origin_join:  # the new rows read the raw rows the DELETE below removes: keep them first
        cur.execute(f"CREATE OR REPLACE TEMP TABLE _cdc_rows AS {rows_sql}")
    else:  # from the batch alone: a view, nothing held in the transaction
        cur.execute(f"CREATE OR REPLACE TEMP VIEW _cdc_rows AS {rows_sql}")
    for key in batch.refresh_keys:  # pre-images: the rows about to be replaced or deleted
        cur.execute(
            f"INSERT INTO {target.control('changed_keys')} SELECT ?, ?, CAST(cur.{quote(key)} "
            f"AS VARCHAR), ? FROM {raw} cur "
            f"WHERE ({keys}) IN (SELECT {key_casts} FROM _cdc_final f)",
            [table.name, key, lsn],
        )
    cur.execute(f"DELETE FROM {raw} WHERE ({keys}) IN (SELECT {key_casts} FROM _cdc_final f)")
    names = ", ".join(quote(c.name) for c in (*table.columns, *batch.kept))
    cur.execute(f"INSERT INTO {raw} ({names}) SELECT {names} FROM _cdc_rows")
    for key in batch.refresh_keys:
        cur.execute(
            f"INSERT INTO {target.control('changed_keys')} SELECT DISTINCT ?, ?, "
            f"CAST({quote(key)} AS VARCHAR), ? FROM _cdc_rows",
            [table.name, key, lsn],
        )
    cur.execute(f"DROP {'TABLE' if origin_join else 'VIEW'} _cdc_rows")
    for temp in ("_cdc_events", "_cdc_links", "_cdc_origin"):
        cur.execute(f"DROP TABLE IF EXISTS {temp}")


def _last_change_per_key(target: DuckDBChangeApply, changes: Any, keys: str) -> Any:
    """The last change of each key in `changes` (Arrow in, Arrow out), on a cursor outside the
    CDC transaction (it reads only `changes`)."""
    side = target.cursor()
    try:
        side.register("_cdc", changes)
        return side.execute(
            "SELECT * FROM _cdc "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY _seq DESC) = 1"
        ).to_arrow_table()
    finally:
        side.close()


def _append_rows(
    cur: duckdb.DuckDBPyConnection, target: DuckDBChangeApply, batch: TableBatch, changes: Any
) -> None:
    """Insert the rows of an append-only table's changes (all inserts), in stream order."""
    quote = target.dialect.quote_ident
    values = [
        f"{duckdb_stream_cast(quote(c.name), c.type)} AS {quote(c.name)}"
        for c in batch.table.columns
    ]
    for c in batch.kept:
        fallback = "NULL"
        if c.missing_value is not None:
            fallback = duckdb_stream_cast(target.dialect.quote_literal(c.missing_value), c.type)
        values.append(f"{fallback} AS {quote(c.name)}")
    names = ", ".join(quote(c.name) for c in (*batch.table.columns, *batch.kept))
    _cdc = changes  # read by name (replacement scan: nothing kept to COMMIT)
    cur.execute(
        f"INSERT INTO {target.raw_name(batch.table.name)} ({names}) "
        f"SELECT {', '.join(values)} FROM _cdc WHERE _op = 'I' ORDER BY _seq"
    )


_ORIGIN = "__origin__"
"""Prefix of the columns of `_cdc_origin` that hold an origin key (as pgoutput text)."""


def _resolve_origins(
    cur: duckdb.DuckDBPyConnection,
    target: DuckDBChangeApply,
    table: TableSchema,
    toast: list[Column],
    follow_to_origin: bool,
    change_columns: list[str],
    _cdc: Any,
    _cdc_final: Any,
) -> None:
    """Create `_cdc_origin`: for each final non-delete row of `_cdc_final`, where its values not
    sent in the stream come from.

    A row's unchanged TOAST value is the value of the same row just before that change: the
    latest earlier insert or update of its *source key* in the batch (the old key, for an
    update that changed the key; otherwise its own key), or, with none, the raw row under that
    key as it was before the batch. Following these links from the final row back (a chain of
    moves, a key swap through a temporary key) gives, per TOAST column, the nearest value that
    was sent (`<col>__val`, with `<col>__has` true), and the row's origin: the raw row at the
    end of the chain (`_origin_op` 'U' and `__origin__<key>`), or none when the chain starts
    with an insert (`_origin_op` 'I'). The chain stops at the first change that sent every
    TOAST value, unless `follow_to_origin` (columns the stream does not carry at all need the
    origin row). `_cdc` and `_cdc_final` (Arrow) are read by name (replacement scan).
    """
    quote = target.dialect.quote_ident
    keys = table.primary_key
    moved = all(f"{k}__from" in change_columns for k in keys)
    sources = ", ".join(
        (f"coalesce({quote(k + '__from')}, {quote(k)})" if moved else quote(k))
        + f" AS {quote(_ORIGIN + k)}"
        for k in keys
    )
    toast_columns = "".join(f", {quote(c.name)}, {quote(c.name + '__u')}" for c in toast)
    cur.execute(
        f"CREATE OR REPLACE TEMP TABLE _cdc_events AS SELECT _seq, _op, "
        f"{', '.join(quote(k) for k in keys)}, {sources}{toast_columns} "
        "FROM _cdc WHERE _op IN ('I', 'U')"
    )
    same_row = " AND ".join(f"p.{quote(k)} = r.{quote(_ORIGIN + k)}" for k in keys)
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _cdc_links AS "
        "SELECT r._seq, CASE WHEN r._op = 'U' THEN p._seq END AS _pred "
        f"FROM _cdc_events r ASOF LEFT JOIN _cdc_events p ON {same_row} AND r._seq > p._seq"
    )
    if follow_to_origin or not toast:
        needs = "TRUE"
    else:
        needs = " OR ".join(f"coalesce(e.{quote(c.name + '__u')}, false)" for c in toast)
    resolved = "".join(
        f", arg_min_null(e.{quote(c.name)}, ch._depth) FILTER "
        f"(WHERE NOT coalesce(e.{quote(c.name + '__u')}, false)) AS {quote(c.name + '__val')}"
        f", coalesce(bool_or(NOT coalesce(e.{quote(c.name + '__u')}, false)), false) "
        f"AS {quote(c.name + '__has')}"
        for c in toast
    )
    origins = ", ".join(
        f"arg_max(e.{quote(_ORIGIN + k)}, ch._depth) AS {quote(_ORIGIN + k)}" for k in keys
    )
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _cdc_origin AS "
        "WITH RECURSIVE chain(_final, _at, _depth) AS ("
        " SELECT f._seq, f._seq, 0 FROM _cdc_final f WHERE f._op <> 'D'"
        " UNION ALL"
        " SELECT ch._final, l._pred, ch._depth + 1 FROM chain ch"
        " JOIN _cdc_links l ON l._seq = ch._at JOIN _cdc_events e ON e._seq = ch._at"
        f" WHERE l._pred IS NOT NULL AND ({needs}))"
        f" SELECT ch._final{resolved}, arg_max(e._op, ch._depth) AS _origin_op, {origins}"
        " FROM chain ch JOIN _cdc_events e ON e._seq = ch._at GROUP BY ch._final"
    )
