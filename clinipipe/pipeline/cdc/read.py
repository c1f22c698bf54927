"""Step 1, read: pgoutput messages from the slot, and the connection they come through.

Guarantees:

* Messages come in stream order, starting after the last position confirmed to PostgreSQL
  (`SourceReader.confirmed`); nothing is confirmed except through `confirm`, which the apply
  step calls only after the warehouse committed everything up to that position.
* A lost connection is reopened from the confirmed position, through the source `RetryPolicy`
  (exponential backoff, one terminal line per attempt): the caller must drop whatever it
  buffered or staged since (`reopen` returns the position it restarts from). Reconnects that
  follow each other quickly wait longer each time. The stream is closed before any wait: a
  fast shutdown of the source waits for our walsender, which waits for this client.
* A failure retrying cannot fix (a missing publication or slot, a missing privilege) is raised
  as a `SourceError` with `transient` False, at once.
"""

from __future__ import annotations

import time

from clinipipe.source.postgres import RetryPolicy, SourceError
from clinipipe.source.stream import ReplicationStream, StreamMessage

HEALTHY_SECONDS = 30.0
"""A stream that lived this long before it broke reconnects with the shortest wait again."""


class SourceReader:
    """The read step: a `ReplicationStream` of `publication` from `slot`, reopened on loss."""

    def __init__(
        self, dsn: str, slot: str, publication: str, start_lsn: int, retry: RetryPolicy
    ) -> None:
        """`retry` waits (with no stream open) before reopening; heartbeats written while the
        stream is open never wait (`RetryPolicy.in_stream`): their failure is the caller's
        signal to close the stream and `reopen`."""
        self.dsn, self.slot, self.publication, self.retry = dsn, slot, publication, retry
        self._stream = ReplicationStream(dsn, slot, publication, start_lsn, retry=retry.in_stream())
        self._opened_at = 0.0
        self._streak = 0

    def open(self) -> None:
        """Connect and start streaming (retried under the policy)."""
        self.retry.run(self._stream.open, "connecting to the replication slot")
        self._opened_at = time.monotonic()

    def read(self, timeout: float) -> StreamMessage | None:
        """The next message, or None when none arrived within `timeout` s. `SourceError` when
        the stream broke."""
        return self._stream.read(timeout)

    def read_many(self, timeout: float, limit: int) -> list[bytes]:
        """The payloads of up to `limit` messages already received, in stream order, or of
        those arriving within `timeout` s (empty: none). `SourceError` when the stream
        broke."""
        return self._stream.read_many(timeout, limit)

    def reopen(self, failure: SourceError) -> int:
        """After `failure` (transient) broke the stream: close it and stream again from the
        confirmed position, waiting (policy backoff) first. Returns that position."""
        self._stream.close()
        lived = time.monotonic() - self._opened_at
        self._streak = 0 if lived >= HEALTHY_SECONDS else self._streak + 1
        confirmed = self._stream.confirmed
        self._stream = ReplicationStream(
            self.dsn, self.slot, self.publication, confirmed, retry=self.retry.in_stream()
        )
        self.retry.run(
            self._stream.open,
            "streaming from the source",
            failed=failure,
            attempt=max(0, self._streak - 1),
        )
        self._opened_at = time.monotonic()
        return confirmed

    def confirm(self, lsn: int) -> None:
        """Everything up to `lsn` is committed in the warehouse: tell PostgreSQL (it may then
        recycle that WAL). `confirmed` advances even when the connection is gone."""
        self._stream.confirm(lsn)

    @property
    def confirmed(self) -> int:
        return self._stream.confirmed

    @property
    def server_sent_lsn(self) -> int:
        return self._stream.server_sent_lsn

    def idle(self, heartbeat_seconds: float) -> None:
        """Nothing pending: confirm the server's position (all before it is applied) and write a
        heartbeat every `heartbeat_seconds` so an idle publication does not pin WAL."""
        sent = self._stream.server_sent_lsn
        if sent > self._stream.confirmed:
            self._stream.confirm(sent)
        self._stream.heartbeat(heartbeat_seconds)

    def close(self) -> None:
        self._stream.close()
