"""Loading: raw tables and the backfill's ranges (bulk data writes)."""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from clinipipe.targets.core import TargetCore, TargetError
from clinipipe.targets.metering import MeteringRow

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import pyarrow as pa

    from clinipipe.source.catalog import TableSchema
    from clinipipe.source.range_reader import CopyCancel


class BatchStream(Protocol):
    """Arrow batches with every column as strings, and the source bytes they came from.

    A target whose `Loading.typed_ranges` is true is also given typed streams
    (`clinipipe.source.binary_reader.TypedRangeStream`): they add `forms`, how each column
    travels (typed Arrow value, guarded, or the same export text)."""

    @property
    def batches(self) -> Iterator[pa.RecordBatch]: ...

    @property
    def bytes_read(self) -> int: ...


@dataclass(frozen=True)
class RangeWork:
    """One range to load: which run, which range, and how to meter it."""

    run_id: str
    range_no: int
    replace_keys: bool
    warehouse: str
    warehouse_role: str
    size: str


@dataclass(frozen=True)
class TableScan:
    """A whole source table for a warehouse that reads PostgreSQL itself
    (`TableScanning.load_scan`).
    The texts are built by `clinipipe.source.scan_source`; the warehouse only passes them on.

    `conninfo` is the libpq conninfo with the scan's session settings: it holds the source
    password and must never be printed. `snapshot_sql` is the first statement of the scan's
    REPEATABLE READ transaction on the source. `guard` reads the table under the same
    snapshot and raises (`SourceError`) when it holds a value the warehouse's reader would not
    read exactly; the load runs it alongside the scan and commits only if it returned.
    `cancel`: cancelling it stops the scan (and the guard); the range rolls back.
    `on_rows(delta)`: an estimate of rows read so far, for progress (never for counts)."""

    conninfo: str = field(repr=False)
    snapshot_sql: str
    guard: Callable[[], None]
    cancel: CopyCancel
    on_rows: Callable[[int], None] | None = None


@runtime_checkable
class TableScanning(Protocol):
    """A `Loading` that can also read whole source tables itself (DuckDB: its postgres
    extension). Asked per table through `Loading.scan_unsupported`; a target without it loads
    every table through the backfill's readers."""

    def load_scan(self, table: TableSchema, work: RangeWork, scan: TableScan) -> int:
        """Load the whole of `table` (its only range, `work`) as the warehouse reads it from
        the source under `scan`, and record the range as done, atomically (as `load_range`:
        the range's rows, range row and metering row commit together; a failure or crash keeps
        none of them). With `work.replace_keys` the rows already in the raw table are replaced
        (the range is the whole table). Raises `ScanUnavailable` before changing anything when
        it cannot read the table exactly."""
        ...


class ScanUnavailable(TargetError):
    """`TableScanning.load_scan` cannot read this table exactly (nothing was changed): load it
    through the backfill's own readers instead."""


class Loading(TargetCore):
    """Creates raw tables and loads the backfill's ranges into them.

    * **Atomicity.** `load_range` commits a range's rows, its `_clinipipe.backfill_ranges` row
      and its metering row (`range_done_sql`) in one transaction: a range is recorded as done
      if and only if all its rows are in. A failure, or a crash (kill -9 included), at any
      moment leaves the range unrecorded and none of its rows (a staging table a crash leaves
      on Snowflake is replaced by the next load of that range).
    * **Idempotency.** A range not recorded is loaded again by a resumed backfill; with
      `RangeWork.replace_keys` rows whose primary key is present are replaced, so loading
      under a newer snapshot never duplicates. `create_raw_table` is idempotent unless
      `replace`.
    * **Concurrency.** `load_range` is safe to call from several threads at once; ranges of a
      run load in any order.
    * `create_raw_table` also records the source columns the table was built from
      (`_clinipipe.source_columns`); on Snowflake the CREATE auto-commits before that record.
    """

    typed_ranges: bool = False
    """True when `load_range` also takes the backfill's typed streams (see `BatchStream`);
    others are given all-string streams."""

    def scan_unsupported(self, table: TableSchema) -> str | None:
        """None when `TableScanning.load_scan` can load `table` (every column of a type the
        warehouse's own PostgreSQL reader is known to read exactly, the reader installed);
        else why not."""
        return f"{self.type} does not read PostgreSQL itself"

    @abstractmethod
    def create_raw_table(self, table: TableSchema, *, replace: bool) -> None:
        """Create the raw table for `table` (types mapped by this target).

        `replace` drops an existing one first.
        """

    @abstractmethod
    def load_range(self, table: TableSchema, work: RangeWork, stream: BatchStream) -> int:
        """Load one range and record it as done, atomically; returns the rows loaded."""

    def range_done_sql(
        self,
        table: TableSchema,
        work: RangeWork,
        rows: int,
        nbytes: int,
        started: dt.datetime,
        ended: dt.datetime,
        cpu_seconds: float | None = None,
    ) -> list[str]:
        """The INSERTs that record a loaded range and meter it; run them in the range's
        transaction. `cpu_seconds`: the loading (worker) thread's CPU for the range."""
        q = self.dialect.quote_literal
        start, end = q(started.isoformat()), q(ended.isoformat())
        return [
            f"INSERT INTO {self.control('backfill_ranges')} (run_id, table_name, range_no, "
            f"rows_loaded, bytes_read, started_at, completed_at) VALUES ({q(work.run_id)}, "
            f"{q(table.name)}, {work.range_no}, {rows}, {nbytes}, {start}, {end})",
            self.metering_insert_sql(
                MeteringRow(
                    job=f"backfill:{table.name}:{work.range_no}",
                    warehouse=work.warehouse,
                    warehouse_role=work.warehouse_role,
                    size=work.size,
                    started_at=started,
                    ended_at=ended,
                    rows=rows,
                    nbytes=nbytes,
                    cpu_seconds=cpu_seconds,
                )
            ),
        ]
