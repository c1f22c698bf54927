"""Replication slots and exported snapshots: where backfill and CDC meet.

The slot is created first and exports a snapshot; every backfill reader reads under that
snapshot, and CDC streams from the slot's consistent point. Nothing committed before the
consistent point is in the stream, nothing committed after it is in the snapshot: no gap, no
duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from clinipipe.secrets import first_line, mask_dsn
from clinipipe.source.postgres import SourceError, connect, tls_hint
from clinipipe.sql.dialect import POSTGRES


@dataclass
class SnapshotHolder:
    """An exported snapshot, valid while `connection` stays open and idle.

    `consistent_point` is set when the snapshot came with a new replication slot: CDC must start
    exactly there. A snapshot exported later (for a resumed backfill) has none: the stream is
    then replayed from the slot's confirmed position and applied idempotently by key.
    """

    snapshot_name: str
    connection: psycopg2.extensions.connection
    consistent_point: str | None = None

    def close(self) -> None:
        """Release the snapshot. Idempotent."""
        if not self.connection.closed:
            self.connection.close()


@dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str
    confirmed_flush_lsn: str | None
    restart_lsn: str | None
    wal_status: str | None  # 'reserved', 'extended', 'unreserved', 'lost' (PostgreSQL >= 13)
    active: bool


def create_slot_exporting_snapshot(dsn: str, slot: str) -> SnapshotHolder:
    """Create logical slot `slot` (pgoutput) and export its snapshot.

    Raises `SourceError` with what to do when the server refuses (wal_level, privileges,
    no free slot, slot already exists).
    """
    try:
        con = psycopg2.connect(
            dsn,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            application_name="clinipipe-backfill-slot",
            connect_timeout=15,
        )
    except psycopg2.Error as exc:
        raise SourceError(
            f"cannot open a replication connection to {mask_dsn(dsn)}: "
            f"{mask_dsn(first_line(exc))}. "
            + (
                tls_hint(first_line(exc))
                or "The role needs the REPLICATION attribute "
                "(ALTER ROLE ... WITH REPLICATION) and pg_hba.conf must allow it."
            ),
        ) from None
    option = "(SNAPSHOT 'export')" if con.server_version >= 150000 else "EXPORT_SNAPSHOT"
    try:
        cur = con.cursor()
        cur.execute(
            f"CREATE_REPLICATION_SLOT {POSTGRES.quote_ident(slot)} LOGICAL pgoutput {option}"
        )
        _, consistent_point, snapshot_name, _ = cur.fetchone()
    except psycopg2.Error as exc:
        con.close()
        reason = first_line(exc)
        hint = ""
        if "wal_level" in reason:
            hint = (
                " Set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = "
                "logical) and restart PostgreSQL."
            )
        elif "already exists" in reason:
            hint = " Use `clinipipe backfill --resume`, or `--force` to start over."
        elif "all replication slots are in use" in reason:
            hint = " Raise max_replication_slots (needs a restart) or drop an unused slot."
        elif "permission" in reason or "must be superuser or replication" in reason:
            hint = " The role needs the REPLICATION attribute."
        raise SourceError(f"cannot create replication slot {slot!r}: {reason}.{hint}") from None
    return SnapshotHolder(str(snapshot_name), con, str(consistent_point))


def export_snapshot(dsn: str) -> SnapshotHolder:
    """A fresh snapshot of the current database state (REPEATABLE READ), for a resumed load."""
    con = connect(dsn, application_name="clinipipe-backfill-snapshot")
    con.autocommit = False
    con.set_session(isolation_level="REPEATABLE READ", readonly=True)
    cur = con.cursor()
    cur.execute("SELECT pg_export_snapshot()")
    row = cur.fetchone()
    assert row is not None
    return SnapshotHolder(str(row[0]), con)


def slot_info(dsn: str, slot: str) -> SlotInfo | None:
    """The slot's state, or None when it does not exist."""
    con = connect(dsn)
    try:
        cur = con.cursor()
        cur.execute(
            "SELECT slot_name, plugin, confirmed_flush_lsn::text, restart_lsn::text, "
            "wal_status, active FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        )
        row = cur.fetchone()
    finally:
        con.close()
    if row is None:
        return None
    return SlotInfo(row[0], row[1], row[2], row[3], row[4], bool(row[5]))


def drop_slot(dsn: str, slot: str) -> bool:
    """Drop the slot if it exists; returns whether it existed. Refuses an active slot."""
    con = connect(dsn)
    con.autocommit = True
    try:
        cur = con.cursor()
        cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
        if row is None:
            return False
        if row[0]:
            raise SourceError(
                f"replication slot {slot!r} is in use by another process (is `clinipipe cdc "
                "start` running?); stop it first"
            )
        cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        return True
    finally:
        con.close()


def slot_lag_bytes(dsn: str, slot: str) -> int | None:
    """WAL bytes between the server's current position and the slot's confirmed position."""
    con = connect(dsn)
    try:
        cur = con.cursor()
        cur.execute(
            "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot,),
        )
        row = cur.fetchone()
    finally:
        con.close()
    return None if row is None or row[0] is None else int(row[0])
