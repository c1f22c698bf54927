"""The source objects CDC relies on: the publication (and the tables in it) and the slot.

`clinipipe deploy` creates the publication (template `_postgres/cdc-setup.sql.j2`) and
`clinipipe backfill` the slot; either can be dropped on the source behind clinipipe's back.
`inspect_source_objects` reads what is there (catalog only, one connection, changes nothing),
so that deploy can recreate a missing publication or table membership and name a lost slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clinipipe.source.postgres import connect


@dataclass(frozen=True)
class SourceObjects:
    """What the source holds of a pipeline's publication and slot.

    `published`: (schema, table) of every table the publication replicates (for a publication
    `FOR ALL TABLES` or `FOR TABLES IN SCHEMA`, the tables it covers now); empty when the
    publication does not exist. `slot_wal_status`: None when the slot does not exist, else
    PostgreSQL's `wal_status` ('lost' once its WAL was removed)."""

    publication_exists: bool
    published: frozenset[tuple[str, str]]
    slot_exists: bool
    slot_wal_status: str | None

    def missing_tables(self, tables: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (schema, table) of `tables` the publication does not replicate, in order."""
        return [t for t in tables if t not in self.published]


def inspect_source_objects(dsn: str, publication: str, slot: str) -> SourceObjects:
    """Read the publication, its tables and the slot from the source catalog.

    Raises `SourceError` (password masked) when the source cannot be reached."""
    con = connect(dsn)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
            exists = cur.fetchone() is not None
            published: set[tuple[str, str]] = set()
            if exists:
                cur.execute(
                    "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                    (publication,),
                )
                published = {(str(s), str(t)) for s, t in cur.fetchall()}
            cur.execute(
                "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )
            row = cur.fetchone()
        con.rollback()
    finally:
        con.close()
    return SourceObjects(
        exists, frozenset(published), row is not None, None if row is None else str(row[0])
    )
