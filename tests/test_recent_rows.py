"""Recent rows (`clinipipe.targets.duckdb.recent_rows`): the rows incremental refreshes hand
over to the next publish hold exactly the table's rows of every key kept, and its row count,
through random refreshes (NULL keys, keys whose rows all go, floors moving), and a publish
takes them only when they cover every key it needs."""

from __future__ import annotations

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from clinipipe.targets.duckdb import recent_rows

NAME = "Mixed Case's table"
TABLE = '"derived"."Mixed Case\'s table"'
KEY = '"patient id"'
COLUMNS = [["patient id", "INTEGER"], ["v", "VARCHAR"], ["n", "DOUBLE"]]


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE SCHEMA derived")
    con.execute("CREATE SCHEMA _clinipipe")
    con.execute(f'CREATE TABLE {TABLE} ("patient id" INTEGER, v VARCHAR, n DOUBLE)')
    con.execute(
        "CREATE TABLE _clinipipe.serving_key_floors (name VARCHAR PRIMARY KEY, "
        "source VARCHAR NOT NULL, lsn BIGINT NOT NULL)"
    )
    return con


def _refresh(
    con: duckdb.DuckDBPyConnection, keys: list[int | None], rows: list[tuple], lsn: int
) -> None:
    """What an incremental refresh keeping recent rows does: replace the rows of `keys` by
    `rows` (each of one of those keys) and hand them over, in one transaction."""
    con.execute("BEGIN")
    con.execute("CREATE OR REPLACE TEMP TABLE refreshed (k INTEGER)")
    for k in set(keys):
        con.execute("INSERT INTO temp.refreshed VALUES (?)", [k])
    con.execute(f"CREATE OR REPLACE TEMP TABLE new_rows AS SELECT * FROM {TABLE} LIMIT 0")
    for row in rows:
        con.execute("INSERT INTO temp.new_rows VALUES (?, ?, ?)", list(row))
    [(deleted,)] = con.execute(
        f"DELETE FROM {TABLE} AS t USING temp.refreshed AS r WHERE t.{KEY} IS NOT DISTINCT FROM r.k"
    ).fetchall()
    [(inserted,)] = con.execute(f"INSERT INTO {TABLE} SELECT * FROM temp.new_rows").fetchall()
    recent_rows.keep(con, NAME, TABLE, KEY, "INTEGER", "temp.refreshed", "temp.new_rows", lsn,
                     inserted - deleted)  # fmt: skip
    con.execute("COMMIT")


def _publish_keys(con: duckdb.DuckDBPyConnection, keys: list[int | None]) -> str:
    con.execute("CREATE OR REPLACE TEMP TABLE wanted (k INTEGER)")
    for k in set(keys):
        con.execute("INSERT INTO temp.wanted VALUES (?)", [k])
    return "temp.wanted"


def _rows_of(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """The rows of `sql` as sorted reprs (NaN equals NaN)."""
    return sorted(map(repr, con.execute(sql).fetchall()))


def _check_invariant(con: duckdb.DuckDBPyConnection) -> set[int | None]:
    """Every key kept has exactly the table's rows; the count is the table's; returns the
    keys kept."""
    recent = recent_rows.recent_rows_of(NAME)
    kept = [r[0] for r in con.execute(f"SELECT k FROM {recent.keys}").fetchall()]
    assert len(kept) == len(set(kept)), "a key kept twice"
    wanted = _publish_keys(con, kept)
    handover = recent_rows.handed_over(con, NAME, wanted, KEY, COLUMNS)
    assert handover is not None
    expected = _rows_of(con, f"SELECT t.* FROM {TABLE} AS t SEMI JOIN {wanted} AS w "
                             f"ON t.{KEY} IS NOT DISTINCT FROM w.k")  # fmt: skip
    assert _rows_of(con, handover.rows_sql) == expected
    [(count,)] = con.execute(f"SELECT count(*) FROM {TABLE}").fetchall()
    assert handover.table_rows == count
    [(extra,)] = con.execute(
        f"SELECT count(*) FROM {recent.rows} AS r ANTI JOIN {recent.keys} AS k "
        f"ON r.{KEY} IS NOT DISTINCT FROM k.k"
    ).fetchall()
    assert extra == 0, "rows kept of a key that is not"
    return set(kept)


keys_strategy = st.lists(st.one_of(st.none(), st.integers(0, 12)), min_size=0, max_size=6)
step_strategy = st.tuples(
    keys_strategy,
    st.lists(st.tuples(st.integers(0, 3), st.text(max_size=3), st.floats()), max_size=8),
    st.one_of(st.none(), st.integers(0, 3)),  # move the floor this many refreshes back
)


@settings(max_examples=40, deadline=None)
@given(
    start=st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 12)), st.text(max_size=3))),
    steps=st.lists(step_strategy, min_size=1, max_size=8),
)
def test_kept_rows_are_the_tables_rows_of_every_kept_key(
    start: list[tuple[int | None, str]], steps: list[tuple]
) -> None:
    con = _connect()
    for k, v in start:
        con.execute(f"INSERT INTO {TABLE} VALUES (?, ?, 0)", [k, v])
    floors: list[int] = []
    for lsn, (keys, row_specs, floor_back) in enumerate(steps, start=10):
        rows = [(keys[i % len(keys)], v, n) for i, v, n in row_specs] if keys else []
        _refresh(con, keys, rows, lsn)
        kept = _check_invariant(con)
        assert set(keys) <= kept, "the keys a refresh re-derived are kept"
        floors.append(lsn)
        if floor_back is not None:  # a publish moved the floor to an earlier refresh's mark
            floor = floors[max(0, len(floors) - 1 - floor_back)]
            con.execute("DELETE FROM _clinipipe.serving_key_floors")
            con.execute("INSERT INTO _clinipipe.serving_key_floors VALUES ('t', ?, ?)",
                        [NAME, floor])  # fmt: skip
    recent_rows.discard(con, NAME)
    assert recent_rows.handed_over(con, NAME, _publish_keys(con, []), KEY, COLUMNS) is None


def test_keys_below_every_floor_are_forgotten_and_none_kept_without_a_floor() -> None:
    con = _connect()
    recent = recent_rows.recent_rows_of(NAME)
    _refresh(con, [1, 2], [(1, "a", 1.0), (2, "b", 2.0)], lsn=5)
    con.execute("INSERT INTO _clinipipe.serving_key_floors VALUES ('t', ?, 6)", [NAME])
    _refresh(con, [3], [(3, "c", 3.0)], lsn=7)
    # 1 and 2 were re-derived at 5, below the only floor (6): no publish needs them
    assert con.execute(f"SELECT k FROM {recent.keys} ORDER BY k").fetchall() == [(3,)]
    assert con.execute(f"SELECT {KEY} FROM {recent.rows}").fetchall() == [(3,)]
    # a second interactive table with a lower floor keeps what it needs
    con.execute("INSERT INTO _clinipipe.serving_key_floors VALUES ('u', ?, 7)", [NAME])
    _refresh(con, [4], [], lsn=8)  # key 4's rows all go: kept, with no rows
    assert con.execute(f"SELECT k FROM {recent.keys} ORDER BY k").fetchall() == [(3,), (4,)]
    _check_invariant(con)
    con.execute("DELETE FROM _clinipipe.serving_key_floors")
    _refresh(con, [None], [(None, "null key", 0.0)], lsn=9)
    assert con.execute(f"SELECT k FROM {recent.keys}").fetchall() == [(None,)]
    _check_invariant(con)


def test_a_publish_takes_the_handover_only_when_it_covers_what_it_needs() -> None:
    con = _connect()
    assert recent_rows.handed_over(con, NAME, _publish_keys(con, [1]), KEY, COLUMNS) is None
    _refresh(con, [1, None], [(1, "a", 1.0), (None, "n", 2.0)], lsn=5)
    covered = recent_rows.handed_over(con, NAME, _publish_keys(con, [1, None]), KEY, COLUMNS)
    assert covered is not None and covered.table_rows == 2
    assert _rows_of(con, covered.rows_sql) == sorted(map(repr, [(1, "a", 1.0), (None, "n", 2.0)]))
    # a key changed outside the refreshes that kept rows (or before): not covered
    assert recent_rows.handed_over(con, NAME, _publish_keys(con, [1, 2]), KEY, COLUMNS) is None
    # other columns than the table's (say the publish sees a new definition): not used
    other = [*COLUMNS[:2], ["n", "FLOAT"]]
    assert recent_rows.handed_over(con, NAME, _publish_keys(con, [1]), KEY, other) is None


def test_discard_drops_them() -> None:
    con = _connect()
    _refresh(con, [1], [(1, "a", 1.0)], lsn=5)
    names = recent_rows.recent_rows_of(NAME).names
    listed = "SELECT table_name FROM duckdb_tables() WHERE schema_name = '_clinipipe'"
    assert set(names) <= {r[0] for r in con.execute(listed).fetchall()}
    recent_rows.discard(con, NAME)
    assert not set(names) & {r[0] for r in con.execute(listed).fetchall()}
    recent_rows.discard(con, NAME)  # nothing to drop: no error
