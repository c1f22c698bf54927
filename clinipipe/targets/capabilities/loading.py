"""Loading: raw tables and the backfill's ranges (bulk data writes)."""

from __future__ import annotations

import datetime as dt
import uuid
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from clinipipe.targets.core import TargetCore

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa

    from clinipipe.source.catalog import TableSchema


class BatchStream(Protocol):
    """Arrow batches with every column as strings, and the source bytes they came from."""

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
    ) -> list[str]:
        """The INSERTs that record a loaded range and meter it; run them in the range's
        transaction."""
        q = self.dialect.quote_literal
        start, end = q(started.isoformat()), q(ended.isoformat())
        return [
            f"INSERT INTO {self.control('backfill_ranges')} (run_id, table_name, range_no, "
            f"rows_loaded, bytes_read, started_at, completed_at) VALUES ({q(work.run_id)}, "
            f"{q(table.name)}, {work.range_no}, {rows}, {nbytes}, {start}, {end})",
            f"INSERT INTO {self.control('metering')} (job_id, job, warehouse, warehouse_role, "
            "size, started_at, ended_at, rows_processed, bytes_processed) VALUES "
            f"({q(uuid.uuid4().hex)}, {q(f'backfill:{table.name}:{work.range_no}')}, "
            f"{q(work.warehouse)}, {q(work.warehouse_role)}, {q(work.size)}, {start}, {end}, "
            f"{rows}, {nbytes})",
        ]
