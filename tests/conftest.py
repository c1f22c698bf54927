"""Shared pytest fixtures.

PostgreSQL: one throwaway server (:class:`clinipipe.source.embedded.EmbeddedPostgres`) for the whole
session, and a fresh database on it per test. The server runs as an unprivileged user when the
suite runs as root (as CI does) and is always stopped at the end of the session.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from clinipipe.cli.app import run
from clinipipe.source.embedded import EmbeddedPostgres
from clinipipe.synth import run_synth
from tests.helpers import example_text, write_spec

if TYPE_CHECKING:
    from clinipipe.spec import LoadedSpec
    from clinipipe.targets.duckdb import DuckDBTarget

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


@pytest.fixture
def hospital_project(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A deployed project over a small synthetic hospital; returns the spec path."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    run_synth(pg_dsn, patients=300, seed=11)
    spec = write_spec(tmp_path, example_text())
    assert run(["-q", "-c", str(spec), "deploy"]) == 0
    return spec


# --------------------------------------------------------------------------------------------
# The hospital project built (publish tests)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def hospital_built(hospital_project: Path) -> LoadedSpec:
    """The hospital project, backfilled and its dynamic tables refreshed (not yet published)."""
    from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
    from clinipipe.pipeline.refresh import refresh
    from clinipipe.spec import load_spec

    loaded = load_spec(hospital_project)
    run_backfill(loaded, BackfillOptions())
    refresh(loaded)
    return loaded


@pytest.fixture
def hospital_target(hospital_built: LoadedSpec) -> Iterator[DuckDBTarget]:
    """`hospital_built`'s DuckDB warehouse, open read-write for the test."""
    from clinipipe.targets import open_target
    from clinipipe.targets.duckdb import DuckDBTarget

    with open_target(hospital_built) as target:
        assert isinstance(target, DuckDBTarget)
        yield target
