"""DuckDB loading: raw tables, and backfill ranges as Arrow batches in one transaction each."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from clinipipe.secrets import first_line, scrub_values
from clinipipe.source.binary_reader import overflow_name
from clinipipe.targets.capabilities.loading import BatchStream, Loading, RangeWork
from clinipipe.targets.core import TargetError
from clinipipe.targets.duckdb.core import DuckDBCore, load_batches, rollback
from clinipipe.targets.duckdb.types import duckdb_type, duckdb_typed_value
from clinipipe.targets.metering import CpuClock

if TYPE_CHECKING:
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


class DuckDBLoading(DuckDBCore, Loading):
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
            cur.execute("BEGIN TRANSACTION")
            try:
                cur.register("_clinipipe_batch", reader)
                row = cur.execute(insert).fetchone()
                cur.unregister("_clinipipe_batch")
                rows = int(row[0]) if row else 0
                for statement in done(rows):
                    cur.execute(statement)
                cur.execute("COMMIT")
            except BaseException:
                rollback(cur)
                raise
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
