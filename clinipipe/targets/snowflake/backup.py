"""Snowflake backup: native WORM backups of the backup sets that template 07 creates from the
spec (one set per schema of `backup.schemas`, under the backup policy, WITH RETENTION LOCK when
`backup.retention_lock`). The native model of `Backup`, whose docstring states the guarantees;
Snowflake's target does not export tables to Parquet, nor restore: `cannot.py`.

Snowflake takes the consistent snapshot itself (``ALTER BACKUP SET <set> ADD BACKUP``) and
enforces retention and legal holds (with RETENTION LOCK nobody, not ACCOUNTADMIN, deletes a
backup before it expires; the policy's EXPIRE_AFTER_DAYS removes it after). clinipipe renders
the documented statements (reference/snowflake-syntax.md; the functions below, golden-tested),
runs them, and records the backup identifiers in its own hash-chained manifest.

Each statement is its own (Snowflake runs backup DDL outside transactions): a failure part-way
leaves the sets already done with their new backup, hold or deletion, and the error names the
set it stopped at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clinipipe.sql.context import CONTROL_SCHEMA
from clinipipe.sql.dialect import Dialect
from clinipipe.targets.capabilities.backup import Backup, NativeBackup
from clinipipe.targets.core import TargetError
from clinipipe.targets.snowflake.core import SnowflakeCore


def backup_set_name(dialect: Dialect, database: str, schema: str) -> str:
    """The quoted name template 07 gives the backup set of spec schema `schema`."""
    return dialect.qualify(database, CONTROL_SCHEMA, f"{schema}_backups")


def add_backup_sql(dialect: Dialect, database: str, schema: str) -> str:
    return f"ALTER BACKUP SET {backup_set_name(dialect, database, schema)} ADD BACKUP"


def show_backups_sql(dialect: Dialect, database: str, schema: str) -> str:
    return f"SHOW BACKUPS IN BACKUP SET {backup_set_name(dialect, database, schema)}"


def legal_hold_sql(dialect: Dialect, database: str, schema: str, identifier: str, on: bool) -> str:
    action = "ADD" if on else "REMOVE"
    return (
        f"ALTER BACKUP SET {backup_set_name(dialect, database, schema)} MODIFY BACKUP "
        f"IDENTIFIER {dialect.quote_string(identifier)} {action} LEGAL HOLD"
    )


def delete_backup_sql(dialect: Dialect, database: str, schema: str, identifier: str) -> str:
    return (
        f"ALTER BACKUP SET {backup_set_name(dialect, database, schema)} DELETE BACKUP "
        f"IDENTIFIER {dialect.quote_string(identifier)}"
    )


def _newest_identifier(rows: list[tuple[Any, ...]]) -> str | None:
    """SHOW BACKUPS lists (created_on, ..., identifier/name, ...): the newest row's identifier
    is taken as the first string column that is not a timestamp, best effort."""
    if not rows:
        return None
    newest = max(rows, key=lambda r: str(r[0]))
    for value in newest[1:]:
        if isinstance(value, str) and value:
            return value
    return None


class SnowflakeBackup(SnowflakeCore, Backup):
    """`Backup` on Snowflake: native backups of the spec's backup sets (module docstring)."""

    def backs_up_natively(self) -> bool:
        return True

    def add_native_backups(self, schemas: Sequence[str]) -> list[NativeBackup]:
        """``ADD BACKUP`` to the set of each schema, then read its newest identifier."""
        database = self.spec.database
        out = []
        for schema in schemas:
            self.query(add_backup_sql(self.dialect, database, schema))
            rows = self.query(show_backups_sql(self.dialect, database, schema))
            name = backup_set_name(self.dialect, database, schema)
            out.append(NativeBackup(schema, name, _newest_identifier(rows)))
        return out

    def _identified(self, backups: Sequence[NativeBackup], doing: str) -> list[tuple[str, str]]:
        """(schema, identifier) of each backup; refuses before any statement when one has no
        identifier (clinipipe must not report a hold or a deletion Snowflake did not make)."""
        unknown = [b.backup_set for b in backups if b.identifier is None]
        if unknown:
            raise TargetError(
                f"cannot {doing}: the identifier of the backup of {', '.join(unknown)} was not "
                "recorded when it was taken; find it with SHOW BACKUPS IN BACKUP SET and do it "
                "in Snowflake"
            )
        return [(b.schema, str(b.identifier)) for b in backups]

    def set_native_legal_hold(self, backups: Sequence[NativeBackup], on: bool) -> None:
        doing = "place a legal hold" if on else "remove the legal hold"
        for schema, identifier in self._identified(backups, doing):
            self.query(legal_hold_sql(self.dialect, self.spec.database, schema, identifier, on))

    def delete_native_backups(self, backups: Sequence[NativeBackup]) -> None:
        """Snowflake itself refuses while a retention lock or a legal hold holds the backup."""
        for schema, identifier in self._identified(backups, "delete the backup"):
            self.query(delete_backup_sql(self.dialect, self.spec.database, schema, identifier))
