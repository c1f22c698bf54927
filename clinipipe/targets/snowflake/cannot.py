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
* **Export tables to Parquet and restore them** (`Backup.exportable_tables`, `export_tables`,
  `restore_tables`, `backup_fingerprint_method`): Snowflake backs up natively
  (`backs_up_natively` is True; `SnowflakeBackup` adds backups to the spec's backup sets).
* **Restore a native backup** (`Backup.restore_native_backups`): the restore syntax was not
  confirmed in the documentation clinipipe follows, so it does not guess it; restoring is done
  in Snowflake.
* **Verify tables with json/jsonb, timetz or array columns** (`Verify.verify_refusal`): their
  Snowflake values cannot give PostgreSQL's canonical text (`NOT_VERIFIABLE`), so such a table
  is reported skipped ("not verifiable here"), never compared into false differences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from clinipipe.targets.core import TargetError
from clinipipe.targets.snowflake.core import SnowflakeCore

if TYPE_CHECKING:
    from pathlib import Path

    from clinipipe.source.catalog import TableSchema
    from clinipipe.source.checksum import ChecksumTable
    from clinipipe.targets.capabilities.backup import (
        NativeBackup,
        RestoredTable,
        RestoreFile,
        Snapshot,
        TableProgress,
        TableRef,
    )
    from clinipipe.targets.capabilities.changes import SchemaChange, TableBatch
    from clinipipe.targets.capabilities.loading import BatchStream
    from clinipipe.targets.capabilities.refresh import PendingChanges, RefreshResult, RefreshWork


NOT_VERIFIABLE: dict[str, str] = {
    "json": "json/jsonb land as VARIANT, which keeps neither key order nor spacing",
    "timetz": "timetz lands as PostgreSQL's text, whose offset form Snowflake cannot normalize",
    "array": "arrays land as VARIANT elements, whose text is not PostgreSQL's element text",
}
"""Logical types whose Snowflake value cannot give PostgreSQL's canonical text, and why."""


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

    # --- verify ---------------------------------------------------------------------------------

    def verify_refusal(self, table: ChecksumTable) -> str | None:
        refused = [c for c in table.columns if c.type.logical in NOT_VERIFIABLE]
        if not refused:
            return None
        reasons = sorted({NOT_VERIFIABLE[c.type.logical] for c in refused})
        return (
            "Snowflake verify cannot checksum column(s) "
            + ", ".join(f"{c.name} ({c.type.pg_type})" for c in refused)
            + ": "
            + "; ".join(reasons)
            + " (verify this table on a DuckDB warehouse, or leave it out with --tables)"
        )

    # --- backup ---------------------------------------------------------------------------------

    def _no_table_export(self) -> TargetError:
        return TargetError(
            f"{self.describe()} backs up natively (the backup sets of backup.schemas): it "
            "exports no tables to Parquet and restores none from a clinipipe backup store"
        )

    def exportable_tables(self, schemas: Sequence[str]) -> list[TableRef]:
        raise self._no_table_export()

    def export_tables(
        self,
        tables: Sequence[TableRef],
        folder: Path,
        *,
        reuse: Mapping[TableRef, str] | None = None,
        reads: Sequence[str] = (),
        on_table: TableProgress | None = None,
    ) -> Snapshot:
        raise self._no_table_export()

    def restore_tables(
        self,
        files: Sequence[RestoreFile],
        schema: str | None,
        *,
        replace: bool = False,
        on_table: TableProgress | None = None,
    ) -> list[RestoredTable]:
        raise self._no_table_export()

    def backup_fingerprint_method(self) -> str:
        raise self._no_table_export()

    def restore_native_backups(
        self, backups: Sequence[NativeBackup], to: str
    ) -> list[RestoredTable]:
        raise TargetError(
            "restoring a Snowflake backup is done in Snowflake: the restore syntax was not "
            "confirmed in the documentation clinipipe follows, so it does not guess it. The "
            "manifest lists each backup set and backup identifier (`clinipipe backup list "
            "--json`): "
            + ", ".join(
                f"{b.backup_set} {b.identifier or '(identifier not recorded)'}" for b in backups
            )
        )
