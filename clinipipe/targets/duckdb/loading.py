"""DuckDB loading: raw tables, and backfill ranges as Arrow batches in one transaction each."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from clinipipe.targets.capabilities.loading import BatchStream, Loading, RangeWork
from clinipipe.targets.duckdb.core import DuckDBCore, load_batches
from clinipipe.targets.duckdb.types import duckdb_cast, duckdb_type
from clinipipe.targets.metering import CpuClock

if TYPE_CHECKING:
    from clinipipe.source.catalog import TableSchema


class DuckDBLoading(DuckDBCore, Loading):
    """`Loading` on DuckDB: each range's Arrow batches, its range record and its metering row
    commit in one transaction (DDL included: the raw table and its recorded columns too)."""

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
        casts = ", ".join(
            duckdb_cast(self.dialect.quote_ident(c.name), c.type) for c in table.columns
        )
        insert = f"INSERT INTO {target} ({names}) SELECT {casts} FROM _clinipipe_batch"
        delete = None
        if work.replace_keys:
            by_name = {c.name: c for c in table.columns}
            keys = ", ".join(self.dialect.quote_ident(k) for k in table.primary_key)
            key_casts = ", ".join(
                duckdb_cast(self.dialect.quote_ident(k), by_name[k].type) for k in table.primary_key
            )
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

        return load_batches(
            self, stream, "_clinipipe_batch",
            [s for s in (delete, insert) if s is not None], done,
            f"loading {table.name} range {work.range_no} into {self.describe()} failed",
        )  # fmt: skip
