"""Connections to the source PostgreSQL and running source-side SQL (CDC setup, checks).

Also the one retry policy (`RetryPolicy`) every source connection of CDC goes through, and the
one classification (`is_transient`) of source failures into transient ones (a restart, a network
break: retrying helps) and permanent ones (a missing publication or slot, a missing privilege,
a table gone: retrying cannot help).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import psycopg2
import psycopg2.extensions

from clinipipe.secrets import first_line, mask_dsn
from clinipipe.sql.render import RenderedFile


class SourceError(Exception):
    """The source could not be reached or used. Messages never contain passwords.

    `transient`: True when retrying may help (server restarting, connection refused or lost),
    False when it cannot (an object missing, a privilege missing), None when the raiser did not
    say (`is_transient` then judges by the message). `sqlstate`: PostgreSQL's error code when
    the server sent one.
    """

    def __init__(
        self, message: str, *, transient: bool | None = None, sqlstate: str | None = None
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.sqlstate = sqlstate


class SourceCheckFailed(SourceError):
    """A prerequisite check of a source template returned rows (what is wrong)."""

    def __init__(self, template: str, number: int, message: str, problems: list[str]) -> None:
        self.template = template
        self.number = number
        self.problems = problems
        shown = ", ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
        super().__init__(
            f"source check {number} of {template} failed: {message} Affected: {shown}. "
            "Nothing was changed on the source."
        )


def connect(dsn: str, *, application_name: str = "clinipipe") -> psycopg2.extensions.connection:
    """Open a connection to the source; `SourceError` with a masked message when it fails."""
    try:
        return psycopg2.connect(dsn, application_name=application_name, connect_timeout=15)
    except psycopg2.Error as exc:
        reason = mask_dsn(first_line(exc))
        raise SourceError(
            f"cannot connect to the source PostgreSQL ({mask_dsn(dsn)}): {reason}. "
            + (
                tls_hint(reason)
                or "Check source.dsn (CLINIPIPE_SOURCE_DSN), that the server runs and accepts "
                "connections from this machine, and the credentials."
            ),
            transient=is_transient(exc),
            sqlstate=exc.pgcode,
        ) from None


_TLS_PHRASES = (
    "certificate",
    "ssl error",
    "server does not support ssl",
    "sslmode",
    "sslrootcert",
    "ssl is not enabled",
    "tlsv1 alert",
)


def tls_hint(reason: str) -> str | None:
    """What to check when a connection failure `reason` is about TLS (None when it is not).

    Names the DSN parameters (sslmode, sslrootcert) and never their values."""
    text = reason.lower()
    if "ssl syscall error" in text or not any(p in text for p in _TLS_PHRASES):
        return None
    return (
        "The TLS connection to the source failed: check sslmode and sslrootcert (the CA file "
        "that signed the server's certificate; verify-full also checks the host name) in "
        "source.dsn, and that the server has ssl = on."
    )


def apply_source_files(dsn: str, files: Sequence[RenderedFile]) -> int:
    """Run the statements of source-side templates in one transaction; returns statements run.

    Checks (`-- check:` statements) run first within that transaction; any rows they return
    abort the whole transaction, so a failed check leaves the source untouched.
    """
    run = 0
    con = connect(dsn)
    try:
        with con.cursor() as cur:
            for file in files:
                for statement in file.statements:
                    try:
                        cur.execute(statement.sql)
                    except psycopg2.Error as exc:
                        con.rollback()
                        reason = mask_dsn(first_line(exc))
                        raise SourceError(
                            f"statement {statement.number} of template {file.name} failed on "
                            f"the source: {reason}. Nothing was changed on the source."
                        ) from None
                    run += 1
                    if statement.check is not None:
                        rows = cur.fetchall()
                        if rows:
                            con.rollback()
                            raise SourceCheckFailed(
                                file.name,
                                statement.number,
                                statement.check,
                                [str(r[0]) for r in rows],
                            )
        con.commit()
    finally:
        con.close()
    return run


# --- transient or permanent: one classification, one retry policy ----------------------------

# SQLSTATE classes / codes retrying can fix: connection exceptions (08), operator intervention
# (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now), insufficient
# resources (53), system errors (58), serialization failures and deadlocks (40001, 40P01), and a
# slot still held by the walsender of a connection that just died (55006 object in use).
_TRANSIENT_CLASSES = ("08", "53", "58")
_TRANSIENT_CODES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "55006"})
# Connection failures carry no SQLSTATE; these phrases say retrying cannot fix them.
_PERMANENT_PHRASES = (
    "does not exist",
    "permission denied",
    "must be superuser",
    "must have replication",
    "authentication failed",
    "no pg_hba.conf entry",
    "password is required",
    "invalid dsn",
    "invalid connection option",
    "invalid uri",
    # TLS: a certificate that does not verify, a missing CA file, a server without TLS.
    "certificate verify failed",
    "root certificate file",
    "server does not support ssl",
    "does not match host name",
    "invalid sslmode value",
)
_TRANSIENT_PHRASES = (
    "shutting down",
    "starting up",
    "not yet accepting connections",
    "in recovery mode",
    "connection refused",
    "could not connect",
    "connection to server",
    "server closed the connection",
    "terminating connection",
    "connection already closed",
    "connection timed out",
    "timeout expired",
    "no route to host",
    "network is unreachable",
    "could not receive data",
    "could not send data",
    "ssl syscall error",
    "eof detected",
    "too many clients",
    "is active for pid",
    "no copy in progress",
)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may fix `exc` (a psycopg2 error or a `SourceError`).

    Transient: the server is shutting down, starting up or unreachable, the connection broke, a
    resource ran short. Permanent: everything else with a SQLSTATE (an object missing, a
    privilege missing, a bug), and connection failures naming a missing database or role or a
    refused login. A `CatalogError`-like `SourceError` that says nothing is permanent.
    """
    if isinstance(exc, SourceError) and exc.transient is not None:
        return exc.transient
    code = exc.sqlstate if isinstance(exc, SourceError) else getattr(exc, "pgcode", None)
    if code:
        return code in _TRANSIENT_CODES or code[:2] in _TRANSIENT_CLASSES
    if isinstance(exc, psycopg2.InterfaceError):  # "connection already closed"
        return True
    text = str(exc).lower()
    if any(p in text for p in _PERMANENT_PHRASES):
        return False
    if isinstance(exc, psycopg2.OperationalError):  # no SQLSTATE: the connection failed
        return True
    return any(p in text for p in _TRANSIENT_PHRASES)


class RetryStopped(SourceError):
    """A stop was requested while waiting to retry the source (nothing more was attempted)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"stopped while waiting to retry {what}", transient=True)


_T = TypeVar("_T")


@dataclass(frozen=True)
class RetryPolicy:
    """How CDC retries the source: one policy for every connection it opens (the stream, column
    types, schema evolution, heartbeats and markers, column fills, slot checks).

    `run(action, what)` calls `action`; on a transient failure (`is_transient`) it reports one
    line (`on_retry`: what failed, why, and the wait; no values, no secrets), waits
    `delays[0]`, `delays[1]`, ... (then the last delay again) and calls it again, until it
    succeeds or `give_up_after` seconds have passed since the first failure (then it raises a
    `SourceError` saying so, with `transient` False: the retrying is over). A permanent
    failure is raised at once (as a `SourceError`; one that already was is raised unchanged).
    `stop` (optional): set, it ends a wait early with `RetryStopped`. Only for idempotent
    actions: a failed connect or read changed nothing.

    `wait=False` (`in_stream()`): a transient failure is raised at once as a transient
    `SourceError`, for the caller to recover at a higher level. The CDC loop uses it while it
    holds the replication connection: it must not wait with the stream open, as a fast
    shutdown of the source waits for the walsender, which waits for this client's feedback.
    """

    delays: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
    give_up_after: float | None = 600.0
    on_retry: Callable[[str], None] | None = None
    stop: threading.Event | None = None
    wait: bool = True

    def in_stream(self) -> RetryPolicy:
        """This policy without waiting (see `wait`)."""
        return dataclasses.replace(self, wait=False)

    def wait_for(self, attempt: int) -> float:
        """The wait before retry number `attempt` (0-based): exponential, capped."""
        return float(self.delays[min(attempt, len(self.delays) - 1)]) if self.delays else 0.0

    def run(
        self,
        action: Callable[[], _T],
        what: str,
        *,
        failed: BaseException | None = None,
        attempt: int = 0,
    ) -> _T:
        """`action()`, retried as the class says. `failed`: a failure of the same action the
        caller already saw (the first wait is then `wait_for(attempt)`)."""
        first_failure = time.monotonic() if failed is not None else None
        error = failed
        while True:
            if error is not None:
                reason = _reason(error)
                if not is_transient(error):
                    if isinstance(error, SourceError):
                        raise error
                    raise SourceError(
                        f"{what} failed: {reason}",
                        transient=False,
                        sqlstate=getattr(error, "pgcode", None),
                    ) from None
                if not self.wait:
                    if isinstance(error, SourceError):
                        raise error
                    raise SourceError(
                        f"{what} failed: {reason}",
                        transient=True,
                        sqlstate=getattr(error, "pgcode", None),
                    ) from None
                assert first_failure is not None
                waited = time.monotonic() - first_failure
                if self.give_up_after is not None and waited >= self.give_up_after:
                    raise SourceError(  # retried long enough: final (transient=False)
                        f"{what} failed for {waited:.0f} s, giving up: {reason}", transient=False
                    ) from None
                delay = self.wait_for(attempt)
                if self.on_retry is not None:
                    self.on_retry(
                        f"{what} failed ({reason}); retrying in {delay:.1f} s "
                        f"(attempt {attempt + 2})"
                    )
                if self.stop is not None:
                    if self.stop.wait(delay):
                        raise RetryStopped(what)
                else:
                    time.sleep(delay)
                attempt += 1
            try:
                return action()
            except (SourceError, psycopg2.Error) as exc:
                error = exc
                if first_failure is None:
                    first_failure = time.monotonic()


def _reason(exc: BaseException) -> str:
    """One line saying why, without passwords (values never appear in connection errors; a
    SourceError's message is already safe)."""
    return mask_dsn(first_line(exc))


def publication_exists(dsn: str, publication: str) -> bool:
    """Whether publication `publication` exists on the source (`SourceError` when the source
    cannot be asked; retry it with a `RetryPolicy`)."""
    con = connect(dsn)
    try:
        with con.cursor() as cur:
            cur.execute(
                "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s", (publication,)
            )
            return cur.fetchone() is not None
    except psycopg2.Error as exc:
        raise SourceError(
            f"reading the source's publications failed: {_reason(exc)}",
            transient=is_transient(exc),
            sqlstate=exc.pgcode,
        ) from None
    finally:
        con.close()
