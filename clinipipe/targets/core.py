"""The core every warehouse implements: a connection, statements, transactions, compute.

`TargetCore` is what every capability interface (`clinipipe.targets.capabilities`) builds on:
each capability's generic SQL is written against these methods only, so a new warehouse that
implements the core gets every default of every capability for free.

Guarantees of every implementation:

* `connect` either leaves a usable connection or raises `TargetError` saying what to do (the
  message names the target, never a secret). `close` is idempotent and safe after a failed
  `connect`; the context manager connects on entry and closes on exit, error or not.
* `execute_atomically` is all or nothing: the statements run in order in one transaction that
  commits only after the last one; any failure rolls the transaction back and re-raises. A
  crash (or kill -9) before the commit leaves nothing of it; after the commit, all of it.
* `query` and `table_exists` never write. Errors never contain secrets or row values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

from clinipipe.spec.loader import LoadedSpec
from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.sql.dialect import Dialect
from clinipipe.targets.metering import METERING_TABLE, MeteringRow

_T = TypeVar("_T", bound="TargetCore")


class TargetError(Exception):
    """The warehouse could not be reached or used. The message says what to do."""


class TargetCore(ABC):
    """A warehouse clinipipe connects to: statements, transactions, names, compute.

    Not thread-safe unless an implementation says so (Snowflake: one session per thread).
    Use as a context manager (`with open_target(loaded) as target: ...`).
    """

    type: ClassVar[str]
    """The spec's `target.type` of this warehouse (`duckdb`, `snowflake`)."""
    dialect: ClassVar[Dialect]
    """How this warehouse quotes identifiers and literals."""

    def __init__(self, loaded: LoadedSpec, *, read_only: bool = False) -> None:
        """`read_only` targets never create or change anything (used for plans and status)."""
        self.loaded = loaded
        self.read_only = read_only

    def __enter__(self: _T) -> _T:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def connect(self) -> None:
        """Open the connection; raises `TargetError` with a clear message when it cannot."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (rolling back anything not committed). Idempotent."""

    @abstractmethod
    def describe(self) -> str:
        """Where this target is, for messages (no secrets)."""

    @abstractmethod
    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""

    @abstractmethod
    def table_exists(self, schema: str, table: str) -> bool:
        """True when `schema.table` exists (names as written in the spec). Never writes."""

    @abstractmethod
    def execute_atomically(self, statements: Sequence[str]) -> None:
        """Run `statements` in order in one transaction (all or nothing; see module docstring).

        Pass DML only: a warehouse where DDL commits implicitly (Snowflake) would otherwise
        end the transaction early.
        """

    def control(self, table: str) -> str:
        """The quoted name of a table in clinipipe's control schema (`_clinipipe`)."""
        return self.dialect.qualify(CONTROL_SCHEMA, table)

    def metering_insert_sql(self, row: MeteringRow) -> str:
        """The INSERT of one metering row (`clinipipe.targets.metering`), DML only: the caller
        runs it in the transaction of the work it meters, so the row commits with the work or
        not at all. The only place a metering row is written."""
        q = self.dialect.quote_literal

        def number(value: float | None, digits: int | None = None) -> str:
            if value is None:
                return "NULL"
            return f"{float(value):.{digits}f}" if digits is not None else str(int(value))

        return (
            f"INSERT INTO {self.control(METERING_TABLE)} (job_id, job, warehouse, "
            "warehouse_role, size, started_at, ended_at, rows_processed, bytes_processed, "
            f"cpu_seconds) VALUES ({q(row.job_id)}, {q(row.job)}, {q(row.warehouse)}, "
            f"{q(row.warehouse_role)}, {q(row.size)}, {q(row.started_at.isoformat())}, "
            f"{q(row.ended_at.isoformat())}, {number(row.rows)}, {number(row.nbytes)}, "
            f"{number(row.cpu_seconds, 6)})"
        )

    @abstractmethod
    def raw_name(self, table: str) -> str:
        """The quoted name of the raw table of source table `table`."""

    @abstractmethod
    def use_warehouse(self, role: str) -> str:
        """Run what follows on warehouse `role` (initialization, incremental, interactive).

        Returns a description of the compute used (for progress output).
        """
