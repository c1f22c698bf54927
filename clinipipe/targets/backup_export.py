"""Table export for backups: the small interface a warehouse implements so that `clinipipe backup`
can snapshot tables into Parquet files and load them back. No dialect here.

`clinipipe.backup` (a layer above) owns the object store, the manifests and their chain; a
warehouse only answers three questions: which tables a schema holds (`list_tables`), a
consistent snapshot of some of them as Parquet files (`export_tables`), and loading such files
back (`restore_tables`). DuckDB implements it in `clinipipe.targets.backup_duckdb`. Snowflake
backs up natively (`ALTER BACKUP SET ... ADD BACKUP`, `clinipipe.targets.backup_snowflake`)
and does not implement it.

Fingerprints. Each exported table carries a *fingerprint*: an order-independent digest of its
rows computed inside the warehouse, without writing anything. `clinipipe.backup` compares it
with the previous backup's to skip tables that did not change (no export, no new object: a
second backup with no changes adds only its manifest). A fingerprint is not a cryptographic
hash (on DuckDB: the row count and two 64-bit sums of the engine's row hash); it only decides
whether to export again. The integrity of what is stored rests on the SHA-256 of each Parquet
file's bytes, and a restore recomputes the fingerprint of what it loaded and refuses a
mismatch. `fingerprint_method` names the engine and version: fingerprints of different methods
are never compared (a changed engine simply exports again).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinipipe.targets.core import TargetError

TableProgress = Callable[[str, int, int], None]
"""Called with (schema.table, tables done, tables in all) as each table is finished."""


@dataclass(frozen=True, order=True)
class TableRef:
    """A table of the warehouse, by its schema and name as the warehouse spells them."""

    schema: str
    table: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class ExportedTable:
    """One table of a snapshot. `path` is the Parquet file written, or None when the table's
    fingerprint was in `reuse` (nothing was exported for it)."""

    ref: TableRef
    rows: int
    columns: tuple[tuple[str, str], ...]
    """(name, type) of every column, in order, as the warehouse spells the type."""
    fingerprint: str
    path: Path | None


@dataclass(frozen=True)
class Snapshot:
    """What `export_tables` saw, all as of one moment: the tables, and the answers to the
    extra read-only queries it was asked to run in the same snapshot (e.g. the CDC checkpoint
    and the audit log's head), in the order asked."""

    tables: list[ExportedTable]
    reads: list[list[tuple[Any, ...]]] = field(default_factory=list)
    fingerprint_method: str = ""


@dataclass(frozen=True)
class RestoreFile:
    """A Parquet file to load as `ref.table` with exactly these columns, and the row count and
    fingerprint it must have once loaded."""

    ref: TableRef
    path: Path
    columns: tuple[tuple[str, str], ...]
    rows: int
    fingerprint: str
    fingerprint_method: str


@dataclass(frozen=True)
class RestoredTable:
    schema: str
    table: str
    rows: int
    replaced: bool
    fingerprint_checked: bool
    """False when the backup's fingerprint came from another engine version (only the row
    count could be compared)."""


class TableExport(ABC):
    """Snapshot tables into Parquet files and load them back.

    Guarantees of every implementation:

    * `export_tables` reads every table, and every query in `reads`, in ONE read-only
      transaction (one snapshot): the files are mutually consistent and consistent with the
      answers of `reads`. It writes only the files under `folder` and changes nothing in the
      warehouse. A crash leaves at most some files in `folder` (the caller's staging area).
    * Parquet files are zstd-compressed; reading one back gives the exported columns with the
      exported types.
    * `restore_tables` loads every file in ONE transaction: all tables are restored or none
      (a crash or any error leaves the warehouse as it was). It creates a table that does not
      exist; a table that exists is refused unless `replace` (then its rows are replaced in the
      same transaction, its definition and constraints kept). Before committing it recomputes
      each restored table's row count and fingerprint and rolls everything back on a mismatch.
    * Errors name tables and files, never row values.
    """

    @abstractmethod
    def list_tables(self, schemas: Sequence[str]) -> list[TableRef]:
        """Base tables of `schemas` (views excluded), sorted. Never writes."""

    @abstractmethod
    def export_tables(
        self,
        tables: Sequence[TableRef],
        folder: Path,
        *,
        reuse: Mapping[TableRef, str] | None = None,
        reads: Sequence[str] = (),
        on_table: TableProgress | None = None,
    ) -> Snapshot:
        """Write each table of `tables` to `folder` as one Parquet file, except those whose
        fingerprint equals `reuse[ref]` (returned with `path=None`)."""

    @abstractmethod
    def restore_tables(
        self,
        files: Sequence[RestoreFile],
        schema: str | None,
        *,
        replace: bool = False,
        on_table: TableProgress | None = None,
    ) -> list[RestoredTable]:
        """Load `files` into `schema` (None: each into its own backed-up schema)."""

    @abstractmethod
    def fingerprint_method(self) -> str:
        """The engine and version whose fingerprints this export computes."""


class BackupRefused(TargetError):
    """A restore would overwrite a live table (without `replace`), or a loaded table does not
    match its backup. The message names the table; nothing was changed."""
