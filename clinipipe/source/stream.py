"""A logical replication stream from a slot, with feedback and heartbeats.

Progress is confirmed to PostgreSQL only through `confirm(lsn)`, which the caller invokes after
the target committed everything up to `lsn`; the server may then recycle that WAL.

Every failure is a `SourceError` whose `transient` says whether reconnecting may help (see
`clinipipe.source.postgres.is_transient`): a missing publication or slot is permanent, a server
restart is transient.
"""

from __future__ import annotations

import select
import time
from dataclasses import dataclass

import psycopg2
import psycopg2.extras

from clinipipe.secrets import first_line, mask_dsn
from clinipipe.source.pgoutput import lsn_to_str
from clinipipe.source.postgres import (
    RetryPolicy,
    SourceError,
    connect,
    is_transient,
    tls_hint,
)
from clinipipe.source.stream_settings import STREAM_SESSION_OPTIONS, verify_stream_settings

HEARTBEAT_PREFIX = "clinipipe.heartbeat"


@dataclass(frozen=True)
class StreamMessage:
    payload: bytes
    data_start: int


class ReplicationStream:
    """pgoutput messages of publication `publication` from slot `slot`, starting at `start_lsn`."""

    def __init__(
        self,
        dsn: str,
        slot: str,
        publication: str,
        start_lsn: int,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`retry`: the policy heartbeats go through (none: a failed heartbeat raises)."""
        self.dsn = dsn
        self.retry = retry
        self.slot = slot
        self.publication = publication
        self.start_lsn = start_lsn
        self.confirmed = start_lsn
        self._con: psycopg2.extensions.connection | None = None
        self._cur: psycopg2.extras.ReplicationCursor | None = None
        self._last_heartbeat = time.monotonic()

    def open(self) -> None:
        try:
            self._con = psycopg2.connect(
                self.dsn,
                connection_factory=psycopg2.extras.LogicalReplicationConnection,
                application_name="clinipipe-cdc",
                connect_timeout=15,
                options=STREAM_SESSION_OPTIONS,
            )
            self._cur = self._con.cursor()
            verify_stream_settings(self._cur)
            # The warehouse casts the text PostgreSQL sends: fix the settings output depends on.
            self._cur.start_replication(
                slot_name=self.slot,
                decode=False,
                start_lsn=lsn_to_str(self.confirmed),
                options={
                    "proto_version": "1",
                    "publication_names": self.publication,
                    "messages": "true",
                },
            )
        except psycopg2.Error as exc:
            self.close()
            reason = mask_dsn(first_line(exc))
            hint = tls_hint(reason)
            raise SourceError(
                f"cannot stream from replication slot {self.slot!r}: {reason}"
                + (f". {hint}" if hint else ""),
                transient=is_transient(exc),
                sqlstate=exc.pgcode,
            ) from None

    def close(self) -> None:
        if self._con is not None and not self._con.closed:
            self._con.close()
        self._con = None
        self._cur = None

    def read(self, timeout: float) -> StreamMessage | None:
        """The next message, or None when none arrived within `timeout` seconds."""
        assert self._cur is not None
        try:
            message = self._cur.read_message()
            if message is None:
                ready = select.select([self._cur], [], [], timeout)[0]
                if not ready:
                    return None
                message = self._cur.read_message()
                if message is None:
                    return None
        except psycopg2.Error as exc:
            # No SQLSTATE: the connection itself broke ("no COPY in progress" once the server
            # closed it); with one, the server said why (e.g. the publication is gone).
            raise SourceError(
                f"replication stream from slot {self.slot!r} failed: {mask_dsn(first_line(exc))}",
                transient=exc.pgcode is None or is_transient(exc),
                sqlstate=exc.pgcode,
            ) from None
        return StreamMessage(bytes(message.payload), message.data_start)

    def read_many(self, timeout: float, limit: int) -> list[bytes]:
        """The payloads of the messages already received, up to `limit` (one call, not one
        per message, so the caller's per-message work stays small); when none is waiting,
        those arriving within `timeout` seconds (empty: none arrived)."""
        assert self._cur is not None
        read = self._cur.read_message
        out: list[bytes] = []
        try:
            while len(out) < limit:
                message = read()
                if message is None:
                    if out or not select.select([self._cur], [], [], timeout)[0]:
                        break
                    message = read()
                    if message is None:
                        break
                    timeout = 0.0  # drain what came with it, wait no more
                out.append(message.payload)
        except psycopg2.Error as exc:
            raise SourceError(
                f"replication stream from slot {self.slot!r} failed: {mask_dsn(first_line(exc))}",
                transient=exc.pgcode is None or is_transient(exc),
                sqlstate=exc.pgcode,
            ) from None
        return out

    @property
    def server_sent_lsn(self) -> int:
        """The server's position as of its last message or keepalive (0 before any)."""
        return int(self._cur.wal_end) if self._cur is not None else 0

    def confirm(self, lsn: int) -> None:
        """Tell PostgreSQL that everything up to `lsn` is durably applied (never goes back).

        `confirmed` advances first: should the connection be gone (a `SourceError`, transient),
        a new stream starts from there and the server learns the position then."""
        assert self._cur is not None
        if lsn > self.confirmed:
            self.confirmed = lsn
        try:
            # force: psycopg2 otherwise holds feedback back for up to status_interval (10 s).
            self._cur.send_feedback(
                write_lsn=self.confirmed,
                flush_lsn=self.confirmed,
                apply_lsn=self.confirmed,
                force=True,
            )
        except psycopg2.Error as exc:
            raise SourceError(
                f"confirming to replication slot {self.slot!r} failed: {mask_dsn(first_line(exc))}",
                transient=is_transient(exc),
                sqlstate=exc.pgcode,
            ) from None

    def heartbeat(self, every: float) -> None:
        """Every `every` seconds, write a tiny WAL message through the slot so an idle
        publication still lets the confirmed position (and WAL retention) advance."""
        now = time.monotonic()
        if now - self._last_heartbeat >= every:
            self._last_heartbeat = now
            if self.retry is None:
                emit_marker(self.dsn)
            else:
                self.retry.run(lambda: emit_marker(self.dsn), "writing a heartbeat to the source")


def emit_marker(dsn: str) -> int:
    """Write a non-transactional logical message into the WAL; returns its LSN.

    It reaches the stream after every transaction that committed before it. Raises
    `SourceError` (see `is_transient`); retry it with a `RetryPolicy` (a marker written twice is
    harmless).
    """
    con = connect(dsn, application_name="clinipipe-heartbeat")
    try:
        con.autocommit = True
        cur = con.cursor()
        cur.execute(
            "SELECT pg_logical_emit_message(false, %s, '') - '0/0'::pg_lsn", (HEARTBEAT_PREFIX,)
        )
        row = cur.fetchone()
        assert row is not None
        return int(row[0])
    except psycopg2.Error as exc:
        raise SourceError(
            f"writing a marker to the source failed: {mask_dsn(first_line(exc))}",
            transient=is_transient(exc),
            sqlstate=exc.pgcode,
        ) from None
    finally:
        con.close()
