"""What the DuckDB target cannot do, in one place.

* **Refresh by the warehouse** (`Refresh.refresh_dynamic_table_now`): DuckDB has no dynamic
  tables of its own; clinipipe's refresh engine plans each refresh and `DuckDBRefresh` runs it
  (`native_dynamic_tables` is False).
* **A column classifier** (`PhiScan.phi_classify`): DuckDB has none (`phi_classifies` is
  False); the PHI scan relies on clinipipe's detectors alone.
* **Native backups** (`Backup.add_native_backups`, `set_native_legal_hold`,
  `delete_native_backups`, `restore_native_backups`): DuckDB keeps no backups of its own
  (`backs_up_natively` is False); clinipipe exports its tables to Parquet (`DuckDBBackup`) and
  keeps retention and legal holds in its own store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from clinipipe.targets.capabilities.backup import NativeBackup, RestoredTable
from clinipipe.targets.capabilities.refresh import RefreshResult
from clinipipe.targets.core import TargetError
from clinipipe.targets.duckdb.core import DuckDBCore

if TYPE_CHECKING:
    from clinipipe.phi.scan import Finding


class DuckDBCannot(DuckDBCore):
    """The capabilities DuckDB lacks, each answered the one way callers expect."""

    phi_classifies: ClassVar[bool] = False

    @property
    def native_dynamic_tables(self) -> bool:
        return False

    def refresh_dynamic_table_now(self, name: str) -> RefreshResult:
        raise TargetError(
            f"{self.describe()} has no dynamic tables of its own: clinipipe's refresh engine "
            "refreshes them (`clinipipe refresh`)"
        )

    def phi_classify(self, schema: str, table: str, classified: Sequence[str]) -> list[Finding]:
        return []

    # --- backup ---------------------------------------------------------------------------------

    def backs_up_natively(self) -> bool:
        return False

    def _no_native_backups(self) -> TargetError:
        return TargetError(
            f"{self.describe()} keeps no backups of its own: clinipipe backs up its tables to "
            "Parquet in the backup store (`clinipipe backup create`, `backup restore`)"
        )

    def add_native_backups(self, schemas: Sequence[str]) -> list[NativeBackup]:
        raise self._no_native_backups()

    def set_native_legal_hold(self, backups: Sequence[NativeBackup], on: bool) -> None:
        raise self._no_native_backups()

    def delete_native_backups(self, backups: Sequence[NativeBackup]) -> None:
        raise self._no_native_backups()

    def restore_native_backups(
        self, backups: Sequence[NativeBackup], to: str
    ) -> list[RestoredTable]:
        raise self._no_native_backups()
