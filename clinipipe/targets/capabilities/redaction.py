"""Redaction: de-identified research tables built inside the warehouse (`clinipipe redact`).

The SQL itself is generic (`clinipipe.targets.redact_sql.RedactSql`, overridden per dialect
where spellings differ); how the tables are built and swapped in is the dialect's.
"""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.targets.core import TargetCore

if TYPE_CHECKING:
    import pyarrow as pa

    from clinipipe.phi.safe_harbor import RedactionKey
    from clinipipe.targets.redact_sql import RedactSql


@dataclass(frozen=True)
class ResearchBuild:
    """One research table to (re)build: `schema.table` from `sql` (`RedactSql.select_sql`, or
    `reader_sql` with `transform` redacting each Arrow batch of it in Python and returning the
    research columns). `comment` labels the table (its policy)."""

    schema: str
    table: str
    sql: str
    comment: str
    transform: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None


@dataclass(frozen=True)
class RedactionState:
    """A row of `_clinipipe.redaction_state`: what `schema.table` was last built from."""

    schema: str
    table: str
    policy: str
    fingerprint: str
    rows: int
    built_at: dt.datetime


class Redaction(TargetCore):
    """Builds research (de-identified) tables from the raw tables and records what they were
    built from.

    * **Atomicity.** A research table is recorded in `_clinipipe.redaction_state` only together
      with (DuckDB: in the same transaction as) its complete new content. DuckDB builds every
      table, its state row and `finish`'s statements in ONE transaction: a failure or a crash
      leaves the research schema and its records exactly as before. Snowflake (DDL
      auto-commits) builds every table under a temporary name, swaps each in, then runs
      `finish` in one transaction: a failure before the swaps leaves every research table as
      it was; a crash between swap and record leaves a complete new table with its old state
      row (the next run rebuilds it); never a half-built table under its real name.
    * **Fail closed.** Only the columns of the plan's output are written, each through its
      treatment (`RedactSql`); text to redact only leaves through the caller's transform.
    * **Idempotency / determinism.** The same raw rows, key, policy and as-of date give the
      same research rows; `redaction_fingerprint` lets a caller skip an unchanged table.
    * Messages never contain row values or the key; the key lives only in session-temporary
      tables.
    """

    @abstractmethod
    def redact_sql(self) -> RedactSql:
        """The builder of this dialect's redaction SQL."""

    def redaction_states(self, schema: str) -> dict[str, RedactionState]:
        """What each research table of `schema` was last built from ({} before the first)."""
        if not self.table_exists(CONTROL_SCHEMA, "redaction_state"):
            return {}
        rows = self.query(
            "SELECT table_name, policy, fingerprint, rows_written, built_at FROM "
            f"{self.control('redaction_state')} "
            f"WHERE schema_name = {self.dialect.quote_literal(schema)}"
        )
        return {str(t): RedactionState(schema, str(t), str(p), str(f), int(n), b)
                for t, p, f, n, b in rows}  # fmt: skip

    @abstractmethod
    def redaction_columns(self, table: str) -> list[tuple[str, str]]:
        """(name, type) of each column of raw table `table`, in order."""

    def research_table(self, schema: str, table: str) -> str:
        """The quoted name of `schema.table` in the output (research) schema."""
        return self.dialect.qualify(schema, table)

    def prepare_research_schema(self, schema: str, readme: str) -> None:
        """Create the research schema and its README table (policy label per table) if absent."""
        self.query(f"CREATE SCHEMA IF NOT EXISTS {self.dialect.quote_ident(schema)}")
        self.query(
            f"CREATE TABLE IF NOT EXISTS {self.research_table(schema, readme)} (table_name "
            "VARCHAR NOT NULL, policy VARCHAR NOT NULL, label VARCHAR NOT NULL, policy_version "
            "VARCHAR NOT NULL, rows_written BIGINT NOT NULL, built_at TIMESTAMPTZ NOT NULL)"
        )

    def redaction_fingerprint(self, table: str, columns: Sequence[str]) -> str:
        """A digest of every row of raw table `table` (order-independent, computed in SQL)."""
        row = self.query(self.redact_sql().fingerprint_sql(self.raw_name(table), columns))[0]
        return "/".join(str(v) for v in row)

    @abstractmethod
    def build_research_tables(
        self,
        builds: Sequence[ResearchBuild],
        key: RedactionKey | None,
        finish: Callable[[dict[str, int]], list[str]],
    ) -> dict[str, int]:
        """Build every table of `builds` (rows written per table); then run the statements
        `finish` returns for those counts (state rows, README rows, the audit manifest)."""
