"""Recent rows: the rows each incremental refresh re-derived, handed over to the publisher.

An incremental publish of an interactive table needs the current rows of the keys that
changed since its last publish, and the table's row count. Finding those rows in the dynamic
table costs a pass over its whole key column (2 M rows: ~20 ms, about half of such a publish),
and counting it another pass. The refresh engine has exactly those rows in hand when it inserts
them, and knows how many rows it deleted and inserted, so when an interactive table serves a
dynamic table by its refresh key (`RefreshWork.keep_recent_rows`), each incremental refresh
also keeps them, in the same transaction, in three control tables (:func:`recent_rows_of`)::

    _clinipipe.dt_recent__<table>_<digest>__rows    the columns of derived.<table>
    _clinipipe.dt_recent__<table>_<digest>__keys    k (the key's type), lsn: each key kept, with
                                                   the high-water mark of the refresh that
                                                   re-derived it last
    _clinipipe.dt_recent__<table>_<digest>__count   table_rows: one row, the table's row count

**Invariant** (what makes reading them exact): for every key in ``__keys``, ``__rows`` holds
exactly the rows ``derived.<table>`` holds for that key, and ``__count`` holds the number of
rows of ``derived.<table>``. Only the refresh engine writes dynamic tables, and each of its
writes keeps the invariant in its own transaction:

* an incremental refresh that keeps recent rows replaces the kept rows of the keys it
  re-derives by the rows it inserted, adds those keys and adds what it inserted less what it
  deleted to the count (:func:`keep`; the first one creates the tables, empty, and counts the
  table once);
* an incremental refresh that does not (no interactive table serves the table by its key any
  more) and every rebuild (INITIALIZATION / FULL: the table is replaced) drop the tables
  (:func:`discard`).

Keys re-derived before the key floor of every interactive table serving the table
(``_clinipipe.serving_key_floors``, see `clinipipe.pipeline.publish.KEY_FLOORS`) are needed by
no publish any more and leave with their rows (at the next refresh), so the tables hold about
what changed since the last publish. A publish uses them only when every key it needs is kept
and the columns match (:func:`handed_over`); otherwise it reads the dynamic table.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from clinipipe.sql.context import CONTROL_SCHEMA

RECENT_PREFIX = "dt_recent__"

FLOORS_TABLE = "serving_key_floors"
"""`clinipipe.pipeline.publish.KEY_FLOORS` (name, source, lsn), read here to prune."""

_NO_FLOOR = 2**62


def control_prefix(prefix: str, name: str) -> str:
    """`prefix`, then dynamic table `name` in lower-case letters, digits and underscores, then
    a digest of the name itself: distinct names never share it, and the control tables named
    from it need no quoting in SQL."""
    plain = re.sub(r"[^a-z0-9_]", "_", name.lower())[:40]
    return f"{prefix}{plain}_{hashlib.sha256(name.encode()).hexdigest()[:8]}__"


@dataclass(frozen=True)
class RecentRows:
    """The control tables keeping the recent rows of one dynamic table (names in
    `CONTROL_SCHEMA`; the properties are quoted and qualified)."""

    prefix: str

    @property
    def names(self) -> list[str]:
        return [f"{self.prefix}{part}" for part in ("rows", "keys", "count")]

    def _qualified(self, part: str) -> str:
        return f'"{CONTROL_SCHEMA}"."{self.prefix}{part}"'

    @property
    def rows(self) -> str:
        return self._qualified("rows")

    @property
    def keys(self) -> str:
        return self._qualified("keys")

    @property
    def count(self) -> str:
        return self._qualified("count")


def recent_rows_of(name: str) -> RecentRows:
    """The recent-rows tables of dynamic table `name`."""
    return RecentRows(control_prefix(RECENT_PREFIX, name))


def _existing(cur: duckdb.DuckDBPyConnection, names: Sequence[str]) -> set[str]:
    rows = cur.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = ? AND list_contains(?, table_name)",
        [CONTROL_SCHEMA, list(names)],
    ).fetchall()
    return {str(r[0]) for r in rows}


def keep(
    cur: duckdb.DuckDBPyConnection,
    name: str,
    table: str,
    key: str,
    key_type: str,
    refreshed_keys: str,
    new_rows: str,
    lsn: int,
    net_rows: int,
) -> None:
    """Inside an incremental refresh's transaction, after it replaced the rows of the keys in
    `refreshed_keys` (column ``k`` of type `key_type`) by the rows in `new_rows`, which changed
    the table's row count by `net_rows`: make the recent rows of dynamic table `name`
    (`table`, its quoted qualified name; `key`, its quoted key column) hold those keys with
    those rows at high-water mark `lsn`, and forget the keys no publish needs any more (below
    every serving key floor of `name`; all of them when it has none: the next publish is then
    a full one)."""
    recent = recent_rows_of(name)
    existing = _existing(cur, [*recent.names, FLOORS_TABLE])
    if not set(recent.names) <= existing:
        discard(cur, name)
        cur.execute(f"CREATE TABLE {recent.keys} (k {key_type}, lsn BIGINT NOT NULL)")
        cur.execute(f"CREATE TABLE {recent.rows} AS SELECT * FROM {table} LIMIT 0")
        cur.execute(f"CREATE TABLE {recent.count} AS SELECT count(*) AS table_rows FROM {table}")
    else:
        cur.execute(f"UPDATE {recent.count} SET table_rows = table_rows + ({int(net_rows)})")
    floor = str(_NO_FLOOR)
    if FLOORS_TABLE in existing:
        source = "'" + name.replace("'", "''") + "'"
        floor = (f'(SELECT coalesce(min(lsn), {_NO_FLOOR}) FROM "{CONTROL_SCHEMA}".'
                 f'"{FLOORS_TABLE}" WHERE source = {source})')  # fmt: skip
    forget = "temp._clinipipe_recent_forget"
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _clinipipe_recent_forget AS "
        f"SELECT k FROM {recent.keys} WHERE lsn < {floor} UNION SELECT k FROM {refreshed_keys}"
    )
    cur.execute(f"DELETE FROM {recent.rows} AS r USING {forget} AS f "
                f"WHERE r.{key} IS NOT DISTINCT FROM f.k")  # fmt: skip
    cur.execute(f"DELETE FROM {recent.keys} AS r USING {forget} AS f "
                "WHERE r.k IS NOT DISTINCT FROM f.k")  # fmt: skip
    cur.execute(f"INSERT INTO {recent.rows} SELECT * FROM {new_rows}")
    cur.execute(f"INSERT INTO {recent.keys} SELECT k, {int(lsn)} FROM {refreshed_keys}")
    cur.execute(f"DROP TABLE {forget}")


def discard(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop the recent rows of dynamic table `name` (inside the transaction that rebuilds the
    table, or refreshes it without keeping them)."""
    for table in sorted(_existing(cur, recent_rows_of(name).names)):
        cur.execute(f'DROP TABLE "{CONTROL_SCHEMA}"."{table}"')


@dataclass(frozen=True)
class Handover:
    """What the refreshes handed over to a publish (see `handed_over`)."""

    rows_sql: str
    """A query of the current rows of the keys asked for."""
    table_rows: int
    """The dynamic table's row count."""


def handed_over(
    cur: duckdb.DuckDBPyConnection,
    name: str,
    keys: str,
    key: str,
    columns: Sequence[Sequence[str]],
) -> Handover | None:
    """The current rows of dynamic table `name` whose key (`key`, quoted) is one of the keys
    in table `keys` (column ``k``; IS NOT DISTINCT FROM, a NULL key too), and the table's row
    count, from its recent rows; None when they cannot answer: not kept, other `columns`
    ((name, type) of the table), or a key of `keys` not kept (changed before the recent rows
    were kept, or before the floor). Exact by the module's invariant; reads nothing of the
    table itself."""
    recent = recent_rows_of(name)
    if _existing(cur, recent.names) != set(recent.names):
        return None
    kept = [[str(r[0]), str(r[1])] for r in cur.execute(f"DESCRIBE {recent.rows}").fetchall()]
    if kept != [list(c) for c in columns]:
        return None
    [(missing, table_rows)] = cur.execute(
        f"SELECT (SELECT count(*) FROM {keys} AS c ANTI JOIN {recent.keys} AS r "
        f"ON c.k IS NOT DISTINCT FROM r.k), (SELECT table_rows FROM {recent.count})"
    ).fetchall()
    if missing or table_rows is None:
        return None
    rows_sql = (f"SELECT r.* FROM {recent.rows} AS r SEMI JOIN {keys} AS c "
                f"ON r.{key} IS NOT DISTINCT FROM c.k")  # fmt: skip
    return Handover(rows_sql, int(table_rows))
