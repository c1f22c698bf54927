"""Backup: the warehouse's side of `clinipipe backup`. No dialect here.

`clinipipe.backup` (a layer above) owns the object store, the manifests and their chain; a
warehouse backs up in one of two models, and says which (`Backup.backs_up_natively`):

* **Table export** (DuckDB): which tables a schema holds (`exportable_tables`), a consistent
  snapshot of some of them as Parquet files (`export_tables`), and loading such files back
  (`restore_tables`). clinipipe stores the files.
* **Native backups** (Snowflake): the warehouse keeps the backups itself, in the backup sets
  template 07 creates from the spec (one per schema of `backup.schemas`, under the backup
  policy, WITH RETENTION LOCK when `backup.retention_lock`). clinipipe adds a backup to each
  set (`add_native_backups`), places or lifts legal holds (`set_native_legal_hold`), deletes
  (`delete_native_backups`) and records the backup identifiers in its own manifest.

What a dialect does not do of the other model is refused in its `cannot.py`.

Fingerprints. Each exported table carries a *fingerprint*: an order-independent digest of its
rows computed inside the warehouse, without writing anything. `clinipipe.backup` compares it
with the previous backup's to skip tables that did not change (no export, no new object: a
second backup with no changes adds only its manifest). A fingerprint is not a cryptographic
hash; it only decides whether to export again. The integrity of what is stored rests on the
SHA-256 of each Parquet file's bytes, and a restore recomputes the fingerprint of what it
loaded and refuses a mismatch. `backup_fingerprint_method` names the engine and version:
fingerprints of different methods are never compared (a changed engine simply exports again).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinipipe.targets.core import TargetCore, TargetError

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


@dataclass(frozen=True)
class NativeBackup:
    """One backup the warehouse took of one backup set (the set of spec schema `schema`)."""

    schema: str
    backup_set: str
    """The set's qualified, quoted name."""
    identifier: str | None
    """The backup's identifier as the warehouse lists it (None if it could not be read)."""

    def as_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "backup_set": self.backup_set,
                "identifier": self.identifier}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NativeBackup:
        identifier = d.get("identifier")
        return cls(str(d["schema"]), str(d["backup_set"]),
                   None if identifier is None else str(identifier))  # fmt: skip


class BackupRefused(TargetError):
    """A restore would overwrite a live table (without `replace`), or a loaded table does not
    match its backup. The message names the table; nothing was changed."""


class Backup(TargetCore):
    """Back up the warehouse: table export to Parquet, or the warehouse's native backups.

    `backs_up_natively` says which model this warehouse uses; callers pick the methods of that
    model and never look at the dialect. Guarantees of every implementation:

    * **One snapshot (export).** `export_tables` reads every table, and every query in
      `reads`, in ONE read-only transaction: the files are mutually consistent and consistent
      with the answers of `reads`. It writes only files under `folder` and changes nothing in
      the warehouse, so it is idempotent (the same data gives the same fingerprints). A crash
      leaves at most some files in `folder` (the caller's staging area), nothing in the
      warehouse. Parquet files are zstd-compressed; reading one back gives the exported
      columns with the exported types.
    * **One transaction (restore).** `restore_tables` loads every file atomically, in ONE
      transaction: all tables are restored or none (a crash, a kill -9 or any error leaves the
      warehouse as it was). It creates a table that does not exist; a table that exists is
      refused (`BackupRefused`) unless `replace` (then its rows are replaced in the same
      transaction, its definition and constraints kept: replacing twice equals once). Before
      committing it recomputes each restored table's row count and fingerprint and rolls
      everything back on a mismatch.
    * **Native backups.** `add_native_backups` adds one backup to the set of each schema, in
      order, each its own statement (backup DDL runs outside transactions, so a set of calls
      is not atomic): a failure or crash part-way leaves the sets already done with one new
      backup each, which is harmless (a backup is only ever added) but not idempotent (running
      it again adds another). Retention and legal holds are enforced by the warehouse itself:
      `delete_native_backups` is refused by it while a retention lock or a legal hold holds the
      backup. Holds and deletes run per backup, in order; a failure part-way leaves the earlier
      ones done (the error names the set).
    * **No values in errors.** Errors name tables, files, backup sets and identifiers, never
      row values (and never secrets).
    """

    @abstractmethod
    def backs_up_natively(self) -> bool:
        """True: the warehouse keeps its own backups (use the native methods); False: clinipipe
        exports tables to Parquet (use the export methods)."""

    # --- table export (clinipipe stores Parquet files) ------------------------------------------

    @abstractmethod
    def exportable_tables(self, schemas: Sequence[str]) -> list[TableRef]:
        """Base tables of `schemas` (views excluded), sorted; a missing schema has none. Never
        writes."""

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
        """Write each table of `tables` to `folder` (which must exist) as one Parquet file,
        except those whose fingerprint equals `reuse[ref]` (returned with `path=None`)."""

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
    def backup_fingerprint_method(self) -> str:
        """The engine and version whose fingerprints `export_tables` computes."""

    # --- native backups (the warehouse keeps them) ----------------------------------------------

    @abstractmethod
    def add_native_backups(self, schemas: Sequence[str]) -> list[NativeBackup]:
        """Add a backup to the backup set of each schema of `schemas` and return it, with its
        identifier as the warehouse lists it."""

    @abstractmethod
    def set_native_legal_hold(self, backups: Sequence[NativeBackup], on: bool) -> None:
        """Place (`on`) or lift the warehouse's legal hold on each of `backups`."""

    @abstractmethod
    def delete_native_backups(self, backups: Sequence[NativeBackup]) -> None:
        """Delete each of `backups` from its set (the warehouse refuses under its retention
        lock or a legal hold)."""

    @abstractmethod
    def restore_native_backups(
        self, backups: Sequence[NativeBackup], to: str
    ) -> list[RestoredTable]:
        """Restore `backups` into `to` (a schema), or raise saying how to restore them."""
