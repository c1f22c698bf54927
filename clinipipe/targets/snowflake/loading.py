"""Snowflake loading: each range staged as text, then typed into its raw table in one
transaction with its range record and metering row."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from clinipipe.sql.render import Statement
from clinipipe.targets.capabilities.loading import BatchStream, Loading, RangeWork
from clinipipe.targets.core import TargetError
from clinipipe.targets.metering import CpuClock
from clinipipe.targets.snowflake.staging import SnowflakeStaging
from clinipipe.targets.snowflake.types import snowflake_cast, snowflake_type

if TYPE_CHECKING:
    from clinipipe.source.catalog import TableSchema


class SnowflakeLoading(SnowflakeStaging, Loading):
    """`Loading` on Snowflake (see the package docstring for the stage-then-apply pattern)."""

    def create_raw_table(self, table: TableSchema, *, replace: bool) -> None:
        """Create the raw table (DDL, auto-committed), then record the source columns it was
        built from (`_clinipipe.source_columns`, which CDC compares with the source catalog)."""
        q = self.dialect.quote_literal
        columns = ", ".join(
            f"{self.dialect.quote_ident(c.name)} {snowflake_type(c.type)}" for c in table.columns
        )
        create = "CREATE OR REPLACE TABLE" if replace else "CREATE TABLE IF NOT EXISTS"
        # DDL auto-commits in Snowflake: run it outside the load transactions.
        self._execute(Statement(0, f"{create} {self.raw_name(table.name)} ({columns})"))
        recorded = self.control("source_columns")
        statements = [f"DELETE FROM {recorded} WHERE table_name = {q(table.name)}"]
        if table.columns:
            values = ", ".join(
                f"({q(table.name)}, {c.attnum}, {q(c.name)}, {q(c.type.pg_type)}, FALSE)"
                for c in table.columns
            )
            statements.append(
                f"INSERT INTO {recorded} (table_name, attnum, target_column, pg_type, dropped) "
                f"VALUES {values}"
            )
        self.execute_atomically(statements)

    def load_range(self, table: TableSchema, work: RangeWork, stream: BatchStream) -> int:
        """Parquet -> PUT -> COPY INTO a transient VARCHAR staging table of this range
        (write_pandas, before the transaction), then in one transaction the INSERT ... SELECT
        with casts, the range record and the metering row; the staging table is dropped.

        Thread-safe: each thread loads through its own session (see the class docstring), and
        each range stages into its own table, ``_STAGE_<TABLE>_<RANGE>``.
        """
        import snowflake.connector

        name = f"_stage_{table.name}_{work.range_no}"
        stage = self.stage_name(name)
        started = dt.datetime.now(dt.timezone.utc)
        cpu = CpuClock()  # this (worker) thread reads, parses and stages the range
        try:
            self._create_stage(stage, [(c.name, "VARCHAR") for c in table.columns])
            rows = 0
            for batch in stream.batches:
                rows += self._write_stage(name, batch.to_pandas())
            ended = dt.datetime.now(dt.timezone.utc)
            statements = self.load_range_sql(table, work, stage)
            statements += self.range_done_sql(
                table, work, rows, stream.bytes_read, started, ended, cpu.seconds()
            )
            self.execute_atomically(statements)
        except snowflake.connector.errors.Error as exc:
            raise TargetError(
                f"loading {table.name} range {work.range_no} into {self.describe()} failed: "
                f"{self._reason(exc)} (nothing of this range was kept)"
            ) from None
        finally:
            self._drop_stage(stage)
        return rows

    def load_range_sql(self, table: TableSchema, work: RangeWork, stage: str) -> list[str]:
        """The DML that moves a staged range into its raw table (typed by `snowflake_cast`)."""
        quote = self.dialect.quote_ident
        raw = self.raw_name(table.name)
        names = ", ".join(quote(c.name) for c in table.columns)
        casts = ", ".join(snowflake_cast(f"c.{quote(c.name)}", c.type) for c in table.columns)
        statements = []
        if work.replace_keys:
            by_name = {c.name: c for c in table.columns}
            keys = ", ".join(
                f"{snowflake_cast(f'c.{quote(k)}', by_name[k].type)} AS {quote(k)}"
                for k in table.primary_key
            )
            match = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in table.primary_key)
            statements.append(
                f"DELETE FROM {raw} t USING (SELECT DISTINCT {keys} FROM {stage} c) s WHERE {match}"
            )
        statements.append(f"INSERT INTO {raw} ({names}) SELECT {casts} FROM {stage} c")
        return statements
