"""DuckDB loading: raw tables, and backfill ranges as Arrow batches in one transaction each."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import duckdb

from clinipipe.secrets import first_line, mask_dsn, scrub_values
from clinipipe.targets.capabilities.loading import (
    BatchStream,
    Loading,
    RangeWork,
    ScanUnavailable,
    TableScan,
)
from clinipipe.targets.core import TargetError
from clinipipe.targets.duckdb import scanner
from clinipipe.targets.duckdb.core import DuckDBCore, load_batches, rollback, transaction
from clinipipe.targets.duckdb.types import duckdb_type, duckdb_typed_value
from clinipipe.targets.metering import CpuClock

if TYPE_CHECKING:
    import pyarrow as pa

    from clinipipe.source.catalog import TableSchema


_RANGE_SESSION = (
    # One writer per statement, appending in scan order: whole row groups (of 122,880 rows)
    # straight to the file. With insertion order preserved DuckDB inserts batch by batch and
    # splits a row group where the driver's batches end; the checkpoint then rewrites (vacuums)
    # the pieces. A range's rows have no order to keep.
    "SET SESSION preserve_insertion_order = false",
    # Write each row group as soon as it is full instead of buffering five: memory per range
    # in flight is one row group (wide rows: hundreds of MB).
    "SET SESSION write_buffer_row_group_count = 1",
)
"""Settings of the cursor (its session only) that loads one range."""


class DuckDBLoading(DuckDBCore, Loading):  # also a `TableScanning` (structurally)
    """`Loading` on DuckDB: each range's Arrow batches, its range record and its metering row
    commit in one transaction (DDL included: the raw table and its recorded columns too).

    Takes the backfill's typed streams (`typed_ranges`): columns that arrive as typed Arrow
    values are inserted as they are, text columns are cast as on the CSV path."""

    typed_ranges = True

    def create_raw_table(self, table: TableSchema, *, replace: bool) -> None:
        q = self.dialect.quote_literal
        columns = ", ".join(
            f"{self.dialect.quote_ident(c.name)} {duckdb_type(c.type)}" for c in table.columns
        )
        statements = [f"DROP TABLE IF EXISTS {self.raw_name(table.name)}"] if replace else []
        statements.append(f"CREATE TABLE IF NOT EXISTS {self.raw_name(table.name)} ({columns})")
        statements.append(
            f"DELETE FROM {self.control('source_columns')} WHERE table_name = {q(table.name)}"
        )
        statements += [
            f"INSERT INTO {self.control('source_columns')} VALUES ({q(table.name)}, {c.attnum}, "
            f"{q(c.name)}, {q(c.type.pg_type)}, FALSE)"
            for c in table.columns
        ]
        self.execute_atomically(statements)

    def load_range(self, table: TableSchema, work: RangeWork, stream: BatchStream) -> int:
        from clinipipe.source.binary_reader import overflow_name  # pyarrow: only when used

        target = self.raw_name(table.name)
        names = ", ".join(self.dialect.quote_ident(c.name) for c in table.columns)
        forms: dict[str, str] = getattr(stream, "forms", None) or {}
        by_name = {c.name: c for c in table.columns}
        position = {c.name: i for i, c in enumerate(table.columns)}

        def value(name: str) -> str:
            return duckdb_typed_value(
                self.dialect.quote_ident(name), by_name[name].type, forms.get(name, "text"),
                self.dialect.quote_ident(overflow_name(position[name])),
            )  # fmt: skip

        casts = ", ".join(value(c.name) for c in table.columns)
        insert = f"INSERT INTO {target} ({names}) SELECT {casts} FROM _clinipipe_batch"
        delete = None
        if work.replace_keys:
            keys = ", ".join(self.dialect.quote_ident(k) for k in table.primary_key)
            key_casts = ", ".join(value(by_name[k].name) for k in table.primary_key)
            delete = (
                f"DELETE FROM {target} WHERE ({keys}) IN "
                f"(SELECT ({key_casts}) FROM _clinipipe_batch)"
                if len(table.primary_key) > 1
                else f"DELETE FROM {target} WHERE {keys} IN "
                f"(SELECT {key_casts} FROM _clinipipe_batch)"
            )
        started = dt.datetime.now(dt.timezone.utc)
        cpu = CpuClock()  # this (worker) thread reads, parses and loads the range

        def done(rows: int) -> list[str]:
            ended = dt.datetime.now(dt.timezone.utc)
            return self.range_done_sql(
                table, work, rows, stream.bytes_read, started, ended, cpu.seconds()
            )

        if delete is None:
            return self._load_streamed(stream, insert, done, table, work)
        return load_batches(
            self, stream, "_clinipipe_batch",
            [s for s in (delete, insert) if s is not None], done,
            f"loading {table.name} range {work.range_no} into {self.describe()} failed",
        )  # fmt: skip

    def _load_streamed(
        self,
        stream: BatchStream,
        insert: str,
        done: Callable[[int], list[str]],
        table: TableSchema,
        work: RangeWork,
    ) -> int:
        """The range as ONE ``INSERT ... SELECT`` over the whole stream (DuckDB pulls the
        batches as it goes: memory stays a few batches), its range and metering rows, in one
        transaction. One statement, scanned in order, fills whole row groups: inserting batch
        by batch leaves partial row groups that the next checkpoint rewrites (vacuum)."""
        import pyarrow as pa  # here: the scanner path never imports pyarrow

        failure: list[BaseException] = []
        batches = iter(stream.batches)
        first = next(batches, None)  # the stream's errors before any row propagate as they are
        if first is None:
            return self._commit_empty(done, table, work)

        def pulled() -> Iterator[pa.RecordBatch]:
            yield first
            try:
                yield from batches
            except BaseException as exc:  # DuckDB sees "an error"; the caller gets this one
                failure.append(exc)
                raise

        reader = pa.RecordBatchReader.from_batches(first.schema, pulled())
        cur = self.cursor()
        try:
            for setting in _RANGE_SESSION:
                cur.execute(setting)
            with transaction(cur):
                cur.register("_clinipipe_batch", reader)
                row = cur.execute(insert).fetchone()
                cur.unregister("_clinipipe_batch")
                rows = int(row[0]) if row else 0
                for statement in done(rows):
                    cur.execute(statement)
        except duckdb.Error as exc:
            if failure:
                raise failure[0] from None
            raise TargetError(
                f"loading {table.name} range {work.range_no} into {self.describe()} failed: "
                f"{scrub_values(first_line(exc))} (nothing of it was kept)"
            ) from None
        finally:
            cur.close()
        if failure:  # cannot happen: DuckDB raises when the stream does
            raise failure[0]
        return rows

    def _commit_empty(
        self, done: Callable[[int], list[str]], table: TableSchema, work: RangeWork
    ) -> int:
        """A range without rows: only its range and metering rows."""
        try:
            self.execute_atomically(done(0))
        except duckdb.Error as exc:
            raise TargetError(
                f"loading {table.name} range {work.range_no} into {self.describe()} failed: "
                f"{scrub_values(first_line(exc))} (nothing of it was kept)"
            ) from None
        return 0

    # ----------------------------------------------------------------------------------------
    # Whole tables read by DuckDB's postgres extension (clinipipe.targets.duckdb.scanner)
    # ----------------------------------------------------------------------------------------

    def scan_unsupported(self, table: TableSchema) -> str | None:
        columns = scanner.unsupported_columns(table)
        if columns:
            return "DuckDB's postgres extension does not read every column exactly: " + ", ".join(
                columns
            )
        return scanner.scanner_unavailable()

    def load_scan(self, table: TableSchema, work: RangeWork, scan: TableScan) -> int:
        """`TableScanning.load_scan` in one DuckDB transaction: ``postgres_execute`` of the snapshot
        statement first, the INSERT over the attached table (the extension's parallel COPYs),
        the guard's verdict, the range and metering rows, COMMIT. Wide rows keep DuckDB's
        insertion order (its ordered insert holds fewer row groups in memory)."""
        reason = self.scan_unsupported(table)
        if reason is not None:
            raise ScanUnavailable(reason)
        alias = f"__clinipipe_pg_{uuid.uuid4().hex[:12]}"
        target = self.raw_name(table.name)
        started = dt.datetime.now(dt.timezone.utc)
        cpu = CpuClock()
        cur = self.cursor()
        try:
            self._attach(cur, alias, scan, table)
            source = (
                f'"{alias}".{self.dialect.quote_ident(table.schema)}.'
                f"{self.dialect.quote_ident(table.name)}"
            )
            self._check_bound_types(cur, source, table)
            names = ", ".join(self.dialect.quote_ident(c.name) for c in table.columns)
            values = ", ".join(
                f"CAST({self.dialect.quote_ident(c.name)} AS {duckdb_type(c.type)})"
                for c in table.columns
            )
            width = table.table_bytes / table.estimated_rows if table.estimated_rows > 0 else 0
            order = "true" if width >= _WIDE_ROW_BYTES else "false"
            cur.execute(f"SET SESSION preserve_insertion_order = {order}")
            statements = [f"DELETE FROM {target}"] if work.replace_keys else []
            statements.append(f"INSERT INTO {target} ({names}) SELECT {values} FROM {source}")
            with _scan_settings(cur, width):
                rows = self._scan_in_transaction(cur, scan, alias, statements, table)

            def done(n: int) -> list[str]:
                ended = dt.datetime.now(dt.timezone.utc)
                return self.range_done_sql(
                    table, work, n, table.table_bytes, started, ended, cpu.seconds()
                )

            try:
                for statement in done(rows):
                    cur.execute(statement)
                cur.execute("COMMIT")
            except BaseException:
                rollback(cur)
                raise
        except duckdb.Error as exc:
            rollback(cur)
            raise TargetError(
                f"loading {table.name} (whole table, range {work.range_no}) into "
                f"{self.describe()} failed: {_clean(exc, scan)} (nothing of it was kept)"
            ) from None
        finally:
            scanner.detach(cur, alias)
            cur.close()
        return rows

    def _attach(self, cur: duckdb.DuckDBPyConnection, alias: str, scan: TableScan,
                table: TableSchema) -> None:  # fmt: skip
        try:
            scanner.load_extension(cur)
        except duckdb.Error as exc:
            raise ScanUnavailable(
                f"DuckDB's postgres extension cannot be loaded: {scrub_values(first_line(exc))}"
            ) from None
        try:
            cur.execute(scanner.attach_statement(alias, scan.conninfo))
        except duckdb.Error as exc:
            raise TargetError(
                f"DuckDB's postgres extension cannot read {table.qualified_name} from the "
                f"source: {_clean(exc, scan)}"
            ) from None

    def _check_bound_types(
        self, cur: duckdb.DuckDBPyConnection, source: str, table: TableSchema
    ) -> None:
        """`ScanUnavailable` unless the extension binds every column to the expected type."""
        bound = {str(r[0]): str(r[1]) for r in cur.execute(f"DESCRIBE {source}").fetchall()}
        wrong = [
            c.name
            for c in table.columns
            if c.name not in bound or not scanner.scanner_type_matches(c.type, bound[c.name])
        ]
        if wrong:
            raise ScanUnavailable(
                f"DuckDB's postgres extension reads {', '.join(wrong)} of "
                f"{table.qualified_name} as another type"
            )

    def _scan_in_transaction(
        self,
        cur: duckdb.DuckDBPyConnection,
        scan: TableScan,
        alias: str,
        statements: list[str],
        table: TableSchema,
    ) -> int:
        """BEGIN, the snapshot statement on the source, `statements` (the last one the INSERT)
        with the guard running alongside; returns the rows inserted with the transaction still
        open. Cancelling `scan.cancel`, or a guard failure, interrupts the INSERT."""
        interrupt = _Interrupt(cur)
        guard_failure: list[BaseException] = []

        def guard() -> None:
            try:
                scan.guard()
            except BaseException as exc:  # re-raised below, on the loading thread
                guard_failure.append(exc)
                interrupt.cancel()

        scan.cancel._enter(interrupt)
        checker = threading.Thread(target=guard, name=f"guard-{table.name}", daemon=True)
        progress = _Progress(cur, table.estimated_rows, scan.on_rows)
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                snapshot = _string(scan.snapshot_sql)
                cur.execute(f"CALL postgres_execute({_string(alias)}, {snapshot})")
                scan.cancel.check()  # a cancel before this point interrupted nothing
                checker.start()
                progress.start()
                row = None
                for statement in statements:
                    row = cur.execute(statement).fetchone()
                checker.join()
            except BaseException:
                rollback(cur)
                raise
        except duckdb.Error:
            if checker.ident is not None:
                checker.join()
            scan.cancel.check()  # interrupted by a cancel: CopyCancelled
            if guard_failure:
                raise guard_failure[0] from None
            raise
        finally:
            progress.stop()
            scan.cancel._leave(interrupt)
        scan.cancel.check()
        if guard_failure:
            rollback(cur)
            raise guard_failure[0]
        return int(row[0]) if row else 0


_WIDE_ROW_BYTES = 512
"""Rows at least this wide (table bytes per row) keep DuckDB's insertion order when scanned."""
SCAN_WRITE_BUFFER_BYTES = 256 * 1024 * 1024
"""Row groups being filled at once by a scan: each writer thread holds one (122,880 rows)."""


@contextlib.contextmanager
def _scan_settings(cur: duckdb.DuckDBPyConnection, width: float) -> Iterator[None]:
    """DuckDB's threads (the extension reads on as many connections) while a table is scanned:
    the warehouse's, but for wide rows no more writers than row groups of
    `SCAN_WRITE_BUFFER_BYTES` fit (each holds one row group being filled: the memory bound),
    with a small write buffer (measured on 200 k x 2 KB rows: 0.69 GB peak instead of 0.85 to
    1.1 GB, no slower). Restored afterwards (the settings are the database's)."""
    (threads,) = cur.execute("SELECT current_setting('threads')").fetchone() or (1,)
    (buffer,) = cur.execute(
        "SELECT current_setting('write_buffer_row_group_memory_limit')"
    ).fetchone() or ("",)
    wanted = int(threads)
    if width > 0:
        wanted = max(1, min(wanted, int(SCAN_WRITE_BUFFER_BYTES // (width * 122_880))))
    try:
        cur.execute(f"SET threads = {wanted}")
        if width >= _WIDE_ROW_BYTES:
            cur.execute("SET write_buffer_row_group_memory_limit = '100MB'")
        yield
    finally:
        with contextlib.suppress(duckdb.Error):
            cur.execute(f"SET threads = {int(threads)}")
            if buffer:
                cur.execute(f"SET write_buffer_row_group_memory_limit = {_string(str(buffer))}")


def _string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _clean(exc: BaseException, scan: TableScan) -> str:
    """`exc`'s first line without the conninfo, passwords or quoted values."""
    text = first_line(exc).replace(scan.conninfo, "<source DSN>")
    return scrub_values(mask_dsn(text))


class _Interrupt:
    """Interrupts the running statement of a DuckDB cursor (a `Cancellable`)."""

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._cur = cur

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self._cur.interrupt()


class _Progress:
    """Reports `estimated_rows` x the query's progress as rows, every half second."""

    def __init__(
        self, cur: duckdb.DuckDBPyConnection, estimated_rows: int,
        on_rows: Callable[[int], None] | None,
    ) -> None:  # fmt: skip
        self._cur, self._rows, self._on_rows = cur, max(0, estimated_rows), on_rows
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scan-progress", daemon=True)
        self._reported = 0

    def start(self) -> None:
        if self._on_rows is not None and self._rows:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        assert self._on_rows is not None
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):
                percent = float(self._cur.query_progress())
                if percent > 0:
                    rows = int(self._rows * min(percent, 100.0) / 100)
                    if rows > self._reported:
                        self._on_rows(rows - self._reported)
                        self._reported = rows
