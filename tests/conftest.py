"""Shared pytest fixtures.

PostgreSQL: one throwaway server (:class:`clinipipe.embedded.EmbeddedPostgres`) for the whole
session, and a fresh database on it per test. The server runs as an unprivileged user when the
suite runs as root (as CI does) and is always stopped at the end of the session.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest

from clinipipe.embedded import EmbeddedPostgres

# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL (>= 14, ``wal_level=logical``) shared by the whole session."""
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """DSN of a fresh, empty database on ``pg_server``, dropped (``WITH (FORCE)``) afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = pg_server.create_database(name)
    try:
        yield dsn
    finally:
        # Best effort: the whole server is discarded at the end of the session anyway.
        with contextlib.suppress(Exception):
            pg_server.drop_database(name)
