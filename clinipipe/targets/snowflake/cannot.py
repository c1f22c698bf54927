"""What the Snowflake target cannot do (yet), in one place.

* **Stream large transactions** (`ChangeApply.stage_cdc_changes`): a CDC batch is applied
  whole, in one transaction after its staging (`streams_large_transactions` is False), so
  there is never anything staged to discard.
* **Apply source schema changes** (`ChangeApply.evolve_table`) and so **fill added columns**
  (`ChangeApply.fill_column`): CDC stops with the command that recovers (reset and backfill).
* **Run clinipipe's refresh engine** (`Refresh.table_columns`, `query_columns`,
  `pending_changes`, `refresh_dynamic_table`, `prune_changed_keys`): Snowflake maintains its
  dynamic tables itself (`native_dynamic_tables` is True; `SnowflakeRefresh` asks it to
  refresh and reads its history).
* **Read declared primary keys for the PHI scan** (`PhiScan.phi_scan_primary_key`): always
  [] (scanned rows are identified by a digest of the row instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from clinipipe.targets.core import TargetError
from clinipipe.targets.snowflake.core import SnowflakeCore

if TYPE_CHECKING:
    from clinipipe.source.catalog import TableSchema
    from clinipipe.targets.capabilities.changes import SchemaChange, TableBatch
    from clinipipe.targets.capabilities.loading import BatchStream
    from clinipipe.targets.capabilities.refresh import PendingChanges, RefreshResult, RefreshWork


class SnowflakeCannot(SnowflakeCore):
    """The capabilities Snowflake's target lacks, each answered the one way callers expect."""

    streams_large_transactions: ClassVar[bool] = False

    # --- change apply ---------------------------------------------------------------------------

    def stage_cdc_changes(self, tables: Sequence[TableBatch], lsn: int) -> None:
        raise TargetError(f"{self.describe()} does not stage CDC changes")

    def discard_staged_cdc(self) -> None:
        return  # nothing is ever staged

    def evolve_table(self, changes: Sequence[SchemaChange], lsn: int) -> None:
        raise TargetError(
            "the source schema changed ("
            + ", ".join(f"{c.kind} {c.table}.{c.column}" for c in changes)
            + "), and applying schema changes to Snowflake is not implemented yet: run "
            "`clinipipe cdc reset --yes` and `clinipipe backfill --force`"
        )

    def fill_column(
        self, table: TableSchema, column: str, attnum: int, stream: BatchStream | None
    ) -> int:
        raise TargetError(f"{self.describe()} cannot copy a column's values from the source")

    # --- clinipipe's refresh engine -------------------------------------------------------------

    def _no_refresh_engine(self) -> TargetError:
        return TargetError(f"{self.describe()} has no clinipipe dynamic-table refresh engine")

    def table_columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        raise self._no_refresh_engine()

    def query_columns(self, sql: str) -> list[tuple[str, str]]:
        raise self._no_refresh_engine()

    def pending_changes(self, work: RefreshWork) -> PendingChanges:
        raise self._no_refresh_engine()

    def refresh_dynamic_table(self, work: RefreshWork) -> RefreshResult:
        raise self._no_refresh_engine()

    def prune_changed_keys(self, names: Sequence[str]) -> int:
        raise self._no_refresh_engine()

    # --- PHI scan -------------------------------------------------------------------------------

    def phi_scan_primary_key(self, schema: str, table: str) -> list[str]:
        return []
