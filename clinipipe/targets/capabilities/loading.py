"""Loading: raw tables and the backfill's ranges (bulk data writes)."""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from clinipipe.targets.core import TargetCore
from clinipipe.targets.metering import MeteringRow

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa

    from clinipipe.source.catalog import TableSchema


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
