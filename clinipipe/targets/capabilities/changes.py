"""Change apply: CDC batches and source schema changes, written to the raw tables."""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from clinipipe.targets.core import TargetCore
from clinipipe.targets.metering import CpuClock, MeteringRow

if TYPE_CHECKING:
    import pyarrow as pa

    from clinipipe.source.catalog import Column, ColumnType, TableSchema
    from clinipipe.targets.capabilities.loading import BatchStream


@dataclass(frozen=True)
class TableBatch:
    """The changes of one table in a CDC batch, as `TableChanges.to_arrow()` built them.

    `table` describes the columns of `changes` under their raw-table names. `kept` are raw
    columns the changes do not carry (dropped at the source, or added after these changes were
    written): an updated row keeps its current value, a new row gets the column's
    `missing_value` (the ADD COLUMN default) or NULL.
    """

    table: TableSchema
    changes: pa.Table
    refresh_keys: tuple[str, ...] = ()
    kept: tuple[Column, ...] = ()


@dataclass(frozen=True)
class SchemaChange:
    """One change of a source table's columns, applied to its raw table.

    kind: 'add' (`column` added with `column_type`), 'drop' (kept in the target, no longer
    filled), 'rename' (`column` renamed to `new_name`), 'retype' (widened to `column_type`).
    An 'add' with `fill` also records that the values of existing rows must be copied from
    the source (`pending_column_fills`, `fill_column`).
    """

    table: str
    kind: str
    attnum: int
    column: str
    column_type: ColumnType | None = None
    new_name: str | None = None
    missing_value: str | None = None
    fill: bool = False


@dataclass(frozen=True)
class CdcBatch:
    """Complete source transactions to apply together, ending at `end_lsn`."""

    slot: str
    end_lsn: int
    tables: tuple[TableBatch, ...]
    commit_times: tuple[dt.datetime, ...]
    received_at: dt.datetime
    warehouse: str
    size: str
    staged_changes: int = 0
    """Changes of this batch already passed to `Target.stage_cdc_changes`."""
    cpu: CpuClock | None = None
    """Started (in the CDC loop's thread) when the batch's first change was received: the
    batch's metering row records that thread's CPU up to the apply (None: not measured)."""

    @property
    def changes(self) -> int:
        return self.staged_changes + sum(t.changes.num_rows for t in self.tables)

    def metering_row(self, applied: dt.datetime) -> MeteringRow:
        """This batch's metering row (job ``cdc:batch`` on the incremental warehouse, from
        `received_at` to `applied`), to commit with the batch. Call it in the CDC loop's
        thread (the CPU is that thread's)."""
        cpu = self.cpu.seconds() if self.cpu is not None else None
        return MeteringRow(
            "cdc:batch", self.warehouse, "incremental", self.size, self.received_at, applied,
            self.changes, None, cpu,
        )  # fmt: skip


class ChangeApply(TargetCore):
    """Applies the change stream to the raw tables, each batch with its checkpoint.

    * **Atomicity.** `apply_cdc_batch` commits the batch's rows, the changed keys, the slot's
      checkpoint (`batch.end_lsn`), the batch record and its metering in ONE transaction,
      together with every part staged before it (`stage_cdc_changes`). On failure nothing of
      the batch, staged parts included, is kept. A crash (kill -9) before the commit leaves
      the previous checkpoint and none of the batch; the stream restarts from that checkpoint.
    * **Ordering.** Per table, changes apply in stream order: the last change per primary key
      wins, a truncate removes what came before it in the batch, unchanged TOAST values keep
      the target's current value (for a moved row: its value under the old key).
    * **Idempotency.** Rows are replaced by key, so applying a batch twice has the effect of
      applying it once; `evolve_table` skips a change already applied; `fill_column` filled
      again from a later snapshot gives the later values.
    * `evolve_table` applies schema changes and records them (`source_columns`,
      `schema_history`) atomically. Schema changes are ordered by the stream (Relation
      messages): the caller applies the batch before them first.
    * What a dialect cannot do here (stream large transactions, evolve, fill) it says in its
      `cannot.py`; `streams_large_transactions` tells callers whether staging is available.
    """

    streams_large_transactions: ClassVar[bool] = False
    """True when `stage_cdc_changes` applies parts as they come (bounded memory)."""

    @abstractmethod
    def apply_cdc_batch(self, batch: CdcBatch) -> None:
        """Apply `batch` and move the slot's checkpoint to `batch.end_lsn`, atomically."""

    @abstractmethod
    def stage_cdc_changes(self, tables: Sequence[TableBatch], lsn: int) -> None:
        """Apply the changes of a transaction still streaming (a large one), in stream order,
        inside the target transaction the next `apply_cdc_batch` commits: nothing staged is
        visible or durable before that commit, and a failure, `discard_staged_cdc` or a crash
        drops all of it. Later parts and the batch see the rows staged before them. `lsn`
        (the transaction's commit position) dates the changed keys. Only targets with
        `streams_large_transactions`."""

    @abstractmethod
    def discard_staged_cdc(self) -> None:
        """Roll back every staged part (the stream restarts from the checkpoint). Idempotent."""

    @abstractmethod
    def evolve_table(self, changes: Sequence[SchemaChange], lsn: int) -> None:
        """Apply schema changes to raw tables and record them (`source_columns`,
        `schema_history`), atomically. Idempotent: a change already applied is skipped."""

    @abstractmethod
    def fill_column(
        self, table: TableSchema, column: str, attnum: int, stream: BatchStream | None
    ) -> int:
        """Set `column` of the raw table of `table` (its primary key and that column) from
        `stream` (the source's rows, export text, under one snapshot), matching rows by key,
        and forget the pending fill of `attnum` — atomically. With no stream (the column is
        gone from the source) only the pending fill is forgotten. Returns the rows read.
        Idempotent: filling again from a later snapshot gives the later values."""
