"""The full type matrix of tests/test_types.py through the real commands (issue 22):
`clinipipe deploy`, `clinipipe backfill` and `clinipipe cdc start`, end to end, on a database
whose session defaults are hostile. tests/test_types.py and tests/test_cdc_types.py check the
casts with load steps written in the test; here the product's own backfill and apply must give
the same exact, column-by-column equality (checksums of canonical texts, floats by bit
pattern)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import psycopg2
import pytest

from clinipipe.source.catalog import EXPORT_SESSION_SETTINGS
from clinipipe.source.embedded import EmbeddedPostgres
from tests.helpers import cli, write_spec
from tests.test_cdc_types import _mismatches
from tests.test_types import HOSTILE_SETTINGS, MATRIX, N_ROWS, Q, _execute, _introspect, _matrix_sql

SPEC = """\
version: 1
name: type_matrix
source:
  dsn: ${CLINIPIPE_SOURCE_DSN}
  publication: matrix_pub
  slot: matrix_slot
  tables:
    - name: type_matrix
      primary_key: [id]
target:
  type: duckdb
  path: warehouse.duckdb
warehouses:
  initialization: {name: INIT_WH, size: XSMALL, auto_suspend: 60}
  incremental: {name: CDC_WH, size: XSMALL, auto_suspend: 60}
  interactive: {name: SERVE_WH, size: XSMALL, auto_suspend: 60}
"""


def _compare(dsn: str, warehouse: Path) -> dict[str, object]:
    table = _introspect(dsn, "type_matrix")
    pg = psycopg2.connect(dsn)
    pg.autocommit = True
    try:
        cur = pg.cursor()
        for statement in EXPORT_SESSION_SETTINGS:  # the comparison's own texts, not hostile
            cur.execute(statement)
        with duckdb.connect(str(warehouse), read_only=True) as wh:
            wh.execute("SET TimeZone = 'America/Los_Angeles'")  # must not matter
            [(rows,)] = wh.execute("SELECT count(*) FROM raw.type_matrix").fetchall()
            assert rows == N_ROWS
            return _mismatches(cur, wh, table)
    finally:
        pg.close()


def test_the_type_matrix_through_backfill_and_cdc_start(
    pg_server: EmbeddedPostgres,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "matrix_e2e"
    dsn = pg_server.create_database(name)
    try:
        _execute(dsn, _matrix_sql())
        _execute(dsn, "CREATE TABLE matrix_copy AS SELECT * FROM type_matrix")
        for setting in HOSTILE_SETTINGS:  # "SET x = v" -> the database's default for x
            _execute(dsn, setting.replace("SET", f"ALTER DATABASE {name} SET", 1))
        monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
        spec = str(write_spec(tmp_path, SPEC))
        warehouse = tmp_path / "warehouse.duckdb"
        for command in (["deploy"], ["backfill", "--json"]):
            code, out, err = cli(capsys, "-q", "-c", spec, *command)
            assert code == 0, out + err
        assert _compare(dsn, warehouse) == {}, "columns the backfill did not copy exactly"

        # CDC: every row deleted; odd rows inserted with their values, even rows inserted empty
        # and then updated to them (so Insert and Update tuples carry every value).
        columns = ", ".join(Q(c) for c in MATRIX)
        sources = ", ".join(f"m.{Q(c)}" for c in MATRIX)
        _execute(
            dsn,
            "DELETE FROM type_matrix;"
            "INSERT INTO type_matrix SELECT * FROM matrix_copy WHERE id % 2 = 1;"
            "INSERT INTO type_matrix (id) SELECT id FROM matrix_copy WHERE id % 2 = 0;",
        )
        with duckdb.connect(str(warehouse), read_only=True) as con:  # not applied yet
            assert con.execute("SELECT count(*) FROM raw.type_matrix").fetchone() == (N_ROWS,)
        _execute(
            dsn,
            f"UPDATE type_matrix t SET ({columns}) = ({sources}) FROM matrix_copy m "
            "WHERE m.id = t.id AND t.id % 2 = 0",
        )
        code, out, err = cli(capsys, "-q", "-c", spec, "cdc", "start", "--until-caught-up",
                             "--json")  # fmt: skip
        assert code == 0, out + err
        assert f'"changes": {N_ROWS * 2 + N_ROWS // 2}' in out, out
        assert _compare(dsn, warehouse) == {}, "columns CDC did not apply exactly"
    finally:
        pg_server.drop_database(name)  # its inactive slots go with it
