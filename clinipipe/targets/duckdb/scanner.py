"""DuckDB's own PostgreSQL reader (the ``postgres`` extension, "the scanner") for the backfill.

A table whose every column is of a type on `SCANNER_EXACT` is loaded by DuckDB itself:
``ATTACH '<conninfo>' (TYPE postgres, READ_ONLY)`` and one ``INSERT ... SELECT`` over the
attached table, which the extension reads as parallel binary COPYs of page ranges (one per
``pg_pages_per_task`` pages, as many at once as DuckDB has threads), each on its own
connection that imports the snapshot of the transaction's own connection. The transaction's
first statement on the source is the backfill's ``SET TRANSACTION SNAPSHOT`` (run through
``postgres_execute``; the extension opens its transaction ``REPEATABLE READ READ ONLY`` on a
read-only attach), so every reader reads exactly the exported snapshot.

Exactness. Only types pinned by the type matrix (tests/test_backfill_scanner.py) are read this
way, and at run time the extension must bind each column to the expected DuckDB type
(`scanner_type_matches`: a domain it reads as text, say, sends the table to the backfill's own
readers). Known silent deviations of the extension's decoding, excluded or guarded:

* ``numeric(p, s)`` ``NaN`` reads as 0, and a negative scale crashes the process: only
  ``0 <= s <= p <= 38``, with the guard query of `clinipipe.source.scan_source` failing the
  load on NaN (as the text path fails it);
* timestamps after DuckDB's last one wrap around (or become ``infinity``): guarded likewise;
* unconstrained and wider numerics read as DOUBLE, money as text with a currency sign,
  ``char(n)`` loses its padding, inet/cidr print differently, composites become STRUCTs,
  arrays are not checked for dimensions: none of them is on the list.

The extension comes from the ``duckdb-extension-postgres`` wheel of this DuckDB version,
loaded by path from a private folder (a link named as the extension, which DuckDB requires);
nothing is downloaded. Without it, `scanner_unavailable` says so and the backfill uses its own
readers.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from clinipipe.targets.duckdb.types import duckdb_type

if TYPE_CHECKING:
    from clinipipe.source.catalog import ColumnType, TableSchema

PACKAGE = f"duckdb-extension-postgres=={duckdb.__version__}"

_TEXT_TYPES = ("text", "character varying")
SCANNER_EXACT: frozenset[str] = frozenset(
    {"bool", "int16", "int32", "int64", "float32", "float64", "decimal", "text", "date",
     "time", "timetz", "timestamp", "timestamptz", "interval", "uuid", "json", "bytes",
     "enum"}
)  # fmt: skip
"""Logical types the extension reads exactly (with the conditions of `scanner_exact`)."""

_SCANNER_NAMES = {
    "TIMETZ": "TIME WITH TIME ZONE",
    "TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE",
    "JSON": "VARCHAR",  # json and jsonb arrive as their text
}


def scanner_exact(t: ColumnType) -> bool:
    """True when a column of type `t` is read exactly by the extension (before the run-time
    check of its bound type)."""
    if t.logical not in SCANNER_EXACT:
        return False
    if t.logical == "decimal":
        assert t.precision is not None and t.scale is not None
        return 0 <= t.scale <= t.precision <= 38
    if t.logical == "text":  # not char(n) (padding), name, citext
        return t.pg_type == "text" or t.pg_type.startswith("character varying")
    if t.logical == "json":  # not json[] of unmapped elements
        return t.pg_type in ("json", "jsonb")
    return True


def expected_scanner_type(t: ColumnType) -> str:
    """The DuckDB type the extension must bind a column of type `t` to (``ENUM`` for any
    enum)."""
    if t.logical == "enum":
        return "ENUM"
    target = duckdb_type(t)
    return _SCANNER_NAMES.get(target, target)


def scanner_type_matches(t: ColumnType, bound: str) -> bool:
    """Whether the extension's bound type `bound` (as DESCRIBE prints it) is the expected one."""
    expected = expected_scanner_type(t)
    if expected == "ENUM":
        return bound.startswith("ENUM(")
    return bound == expected


def unsupported_columns(table: TableSchema) -> list[str]:
    """Columns (with their PostgreSQL type) the extension does not read exactly."""
    return [f"{c.name} ({c.type.pg_type})" for c in table.columns if not scanner_exact(c.type)]


def extension_file() -> Path | None:
    """The extension of the ``duckdb-extension-postgres`` wheel for this DuckDB, or None."""
    try:
        import duckdb_extension_postgres  # type: ignore[import-not-found]
    except ImportError:
        return None
    found = (
        Path(duckdb_extension_postgres.__file__).parent
        / "extensions"
        / f"v{duckdb.__version__}"
        / "postgres.duckdb_extension"
    )
    return found if found.is_file() else None


_lock = threading.Lock()
_linked: list[Path] = []


def _loadable() -> Path | None:
    """A path DuckDB can LOAD: the wheel's file under the name DuckDB derives the entry point
    from (``postgres_scanner``), as a link in a private folder removed at exit."""
    with _lock:
        if _linked:
            return _linked[0]
        source = extension_file()
        if source is None:
            return None
        folder = Path(tempfile.mkdtemp(prefix="clinipipe-duckdb-ext-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        link = folder / "postgres_scanner.duckdb_extension"
        try:
            link.symlink_to(source)
        except OSError:
            shutil.copyfile(source, link)
        _linked.append(link)
        return link


def scanner_unavailable() -> str | None:
    """None when the extension is installed; else what to install."""
    if extension_file() is None:
        return (
            f"DuckDB's postgres extension is not installed (pip install {PACKAGE}); the "
            "backfill reads with its own readers instead"
        )
    return None


def load_extension(con: duckdb.DuckDBPyConnection) -> None:
    """LOAD the extension into `con`'s database (idempotent). Raises `duckdb.Error`."""
    path = _loadable()
    if path is None:
        raise duckdb.IOException(scanner_unavailable() or "no extension")
    con.execute("LOAD '" + str(path).replace("'", "''") + "'")


def attach_statement(alias: str, conninfo: str) -> str:
    """``ATTACH`` of the source, read-only (the extension reads in parallel only then)."""
    literal = "'" + conninfo.replace("'", "''") + "'"
    return f'ATTACH {literal} AS "{alias}" (TYPE postgres, READ_ONLY)'


def detach(con: duckdb.DuckDBPyConnection, alias: str) -> None:
    with contextlib.suppress(duckdb.Error):
        con.execute(f'DETACH DATABASE IF EXISTS "{alias}"')
