"""The backfill's typed transport (`clinipipe.source.binary_reader`, issue 17): COPY BINARY
decoded into Arrow by the ADBC driver, read under the exported snapshot, with the values the
driver would get wrong guarded; and DuckDB writing whole row groups per range.

The full type matrix through the product's backfill is tests/test_honest_types_e2e.py."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import duckdb
import psycopg2
import pyarrow as pa
import pytest

import clinipipe.pipeline.backfill as backfill_module
from clinipipe.source.binary_reader import column_form, read_range_typed, typed_select_list
from clinipipe.source.catalog import TableSchema, introspect_table
from clinipipe.source.range_reader import CopyCancel, CopyCancelled, PageRange
from clinipipe.source.replication import export_snapshot
from tests.helpers import cli, execute, write_spec

SPEC = """\
version: 1
name: typed
source:
  dsn: ${{CLINIPIPE_SOURCE_DSN}}
  publication: typed_pub
  slot: typed_slot
  tables:
    - {{name: {table}, primary_key: [id]}}
target:
  type: duckdb
  path: warehouse.duckdb
"""


def _schema(dsn: str, table: str) -> TableSchema:
    con = psycopg2.connect(dsn)
    try:
        return introspect_table(con, "public", table)
    finally:
        con.close()


def _backfill(
    tmp_path: Path,
    dsn: str,
    table: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *extra: str,
) -> tuple[int, str, str]:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
    spec = str(write_spec(tmp_path, SPEC.format(table=table)))
    code, out, err = cli(capsys, "-q", "-c", spec, "deploy")
    assert code == 0, out + err
    return cli(capsys, "-q", "-c", spec, "backfill", "--json", *extra)


def test_forms_keep_the_driver_away_from_what_it_gets_wrong(pg_dsn: str) -> None:
    execute(
        pg_dsn,
        "CREATE DOMAIN small AS int2 NOT NULL",
        "CREATE TABLE forms (id int8 PRIMARY KEY, s small, c char(4), v varchar(9), n name, "
        "m money, x numeric(9,2), ts timestamptz, d date, iv interval, t time, ip inet, "
        "j jsonb, a int4[], u uuid, b bytea, f float4)",
    )
    schema = _schema(pg_dsn, "forms")
    forms = {c.name: column_form(c.type) for c in schema.columns}
    assert forms == {
        "id": "typed", "s": "typed", "c": "typed", "v": "typed", "n": "typed", "m": "text",
        "x": "scaled", "ts": "guarded", "d": "guarded", "iv": "text", "t": "text", "ip": "text",
        "j": "text", "a": "text", "u": "typed", "b": "typed", "f": "typed",
    }  # fmt: skip
    select = typed_select_list(schema)
    assert '"c"::pg_catalog.bpchar AS "c"' in select  # char(n) keeps its padding
    assert '"s"::pg_catalog.int2 AS "s"' in select  # the domain as its base type
    # inet's cast to text adds /32: its output text is taken instead.
    assert 'pg_catalog.concat("ip")' in select and '"ip"::pg_catalog.text' not in select
    assert '"__clinipipe_overflow_7"' in select and '"__clinipipe_overflow_8"' in select


def test_extreme_dates_and_timestamps_load_exactly(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # The driver turns infinity into a wrapped-around number and wraps far-future values:
    # they must travel as text.
    execute(
        pg_dsn,
        "CREATE TABLE extremes (id int PRIMARY KEY, ts timestamp, tz timestamptz, d date, "
        "n18 numeric(18,4), neg numeric(3,-2), tiny numeric(2,5))",
        "INSERT INTO extremes VALUES "
        "(1, 'infinity', 'infinity', 'infinity', 99999999999999.9999, 99900, 0.00099), "
        "(2, '-infinity', '-infinity', '-infinity', -99999999999999.9999, -99900, -0.00099), "
        "(3, '4713-01-01 00:00:00 BC', '4713-01-01 00:00:00+00 BC', '4713-01-01 BC', 0, 0, 0), "
        "(4, '294246-12-31 23:59:59.999999', '294246-12-31 23:59:59.999999+00', "
        "'5874897-12-31', 0.0001, 100, 0.00001), "
        "(5, '2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012+05:45', '2024-02-29', "
        "-12.5, -100, -0.00001), "
        "(6, NULL, NULL, NULL, NULL, NULL, NULL), "
        "(7, '99999-12-31 23:59:59.999999', '100000-01-01 00:00:00+00', '100000-01-01', "
        "1, 1200, 0.0001)",
    )
    code, out, err = _backfill(tmp_path, pg_dsn, "extremes", capsys, monkeypatch)
    assert code == 0, out + err
    with psycopg2.connect(pg_dsn) as pg, pg.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'")
        cur.execute("SELECT id, ts::text, tz::text, d::text FROM extremes ORDER BY id")
        expected = cur.fetchall()
    pg.close()
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
        wh.execute("SET TimeZone = 'UTC'")
        got = wh.execute(
            "SELECT id, strftime(ts, '%Y-%m-%d %H:%M:%S.%f'), "
            "strftime(tz, '%Y-%m-%d %H:%M:%S.%f'), d::VARCHAR, isinf(ts), isinf(tz), "
            "isinf(d), year(ts), year(tz) FROM raw.extremes ORDER BY id"
        ).fetchall()
    assert [r[0] for r in got] == [r[0] for r in expected]
    assert got[0][4:7] == (True, True, True) and got[1][4:7] == (True, True, True)
    assert got[2][3] == "4713-01-01 (BC)" and got[2][7] == -4712
    assert got[3][1] == "294246-12-31 23:59:59.999999" and got[3][3] == "5874897-12-31"
    assert got[4][1:4] == ("2024-02-29 12:34:56.789012", "2024-02-29 06:49:56.789012",
                           "2024-02-29")  # fmt: skip
    assert got[5][1:4] == (None, None, None)
    assert got[6][1:4] == ("99999-12-31 23:59:59.999999", "100000-01-01 00:00:00.000000",
                           "100000-01-01")  # fmt: skip
    with psycopg2.connect(pg_dsn) as pg, pg.cursor() as cur:  # numerics: scaled int8 on the way
        cur.execute("SELECT id, n18::text, neg::text, tiny::text FROM extremes ORDER BY id")
        numerics = [tuple(None if v is None else Decimal(v) for v in r[1:]) for r in cur]
    pg.close()
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
        assert wh.execute("SELECT typeof(n18), typeof(neg), typeof(tiny) FROM raw.extremes "
                          "LIMIT 1").fetchone() == ("DECIMAL(18,4)", "DECIMAL(5,0)",
                                                    "DECIMAL(5,5)")  # fmt: skip
        assert wh.execute("SELECT n18, neg, tiny FROM raw.extremes ORDER BY id").fetchall() == (
            numerics
        )


def test_a_timestamp_beyond_duckdb_fails_the_load_instead_of_wrapping(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    execute(
        pg_dsn,
        "CREATE TABLE far (id int PRIMARY KEY, ts timestamp)",
        "INSERT INTO far VALUES (1, '2024-01-01'), (2, '294276-12-31 23:59:59')",
    )
    code, out, err = _backfill(tmp_path, pg_dsn, "far", capsys, monkeypatch)
    assert code == 1, out + err
    assert "range 0" in err and "Traceback" not in err
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
        assert wh.execute("SELECT count(*) FROM raw.far").fetchone() == (0,)


def test_the_typed_reader_reads_under_the_exported_snapshot(pg_dsn: str) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE snap (id int PRIMARY KEY, note text, at timestamptz)",
        "INSERT INTO snap SELECT g, 'n' || g, now() FROM generate_series(1, 100) g",
    )
    schema = _schema(pg_dsn, "snap")
    holder = export_snapshot(pg_dsn)
    try:
        execute(pg_dsn, "INSERT INTO snap VALUES (101, 'later', now())",
                "UPDATE snap SET note = 'changed' WHERE id = 1")  # fmt: skip
        with read_range_typed(
            pg_dsn, holder.snapshot_name, schema, PageRange("snap", 0, 0, None)
        ) as stream:
            table = pa.Table.from_batches(list(stream.batches))
            assert stream.bytes_read > 0
        assert stream.forms == {"id": "typed", "note": "typed", "at": "guarded"}
    finally:
        holder.close()
    assert table.num_rows == 100
    assert table.schema.field("id").type == pa.int32()
    assert table.schema.field("at").type == pa.timestamp("us", tz="UTC")
    notes = dict(zip(table.column("id").to_pylist(), table.column("note").to_pylist(),
                     strict=True))  # fmt: skip
    assert notes[1] == "n1" and 101 not in notes


def test_a_cancelled_typed_read_never_looks_complete(pg_dsn: str) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE big (id int8 PRIMARY KEY, pad text)",
        "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g",
    )
    schema = _schema(pg_dsn, "big")
    holder = export_snapshot(pg_dsn)
    try:
        cancel = CopyCancel()
        with read_range_typed(
            pg_dsn, holder.snapshot_name, schema, PageRange("big", 0, 0, None), cancel
        ) as stream:
            batches = iter(stream.batches)
            assert next(batches).num_rows > 0
            cancel.cancel()
            with pytest.raises(CopyCancelled):
                for _ in batches:
                    pass
        with (
            pytest.raises(CopyCancelled),
            read_range_typed(pg_dsn, holder.snapshot_name, schema, PageRange("big", 0, 0, None),
                             cancel),
        ):  # fmt: skip
            pass
    finally:
        holder.close()


def test_ranges_are_written_as_whole_row_groups(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # More than two ranges of rows, read in driver batches smaller than a row group: each
    # range must still land as full row groups plus one partial one, or the next checkpoint
    # rewrites (vacuums) them.
    execute(
        pg_dsn,
        "CREATE TABLE lab (id int8 PRIMARY KEY, code text, value float8, at timestamptz)",
        "INSERT INTO lab SELECT g, 'LOINC-' || (g % 97), g * 0.5, "
        "'2024-01-01'::timestamptz + g * interval '1 second' FROM generate_series(1, 700000) g",
    )
    con = psycopg2.connect(pg_dsn)
    con.autocommit = True
    con.cursor().execute("VACUUM ANALYZE lab")  # the row estimate that sizes the ranges
    con.close()
    # Ranges read by the typed COPY reader, not one whole-table range scanned by DuckDB.
    monkeypatch.setattr(backfill_module, "SCAN_MAX_TABLE_BYTES", 0)
    code, out, err = _backfill(tmp_path, pg_dsn, "lab", capsys, monkeypatch, "--workers", "2")
    assert code == 0, out + err
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as wh:
        groups = [
            r[0]
            for r in wh.execute(
                "SELECT max(count) FROM pragma_storage_info('raw.lab') WHERE column_id = 0 "
                "GROUP BY row_group_id ORDER BY row_group_id"
            ).fetchall()
        ]
        ranges = wh.execute("SELECT count(*) FROM _clinipipe.backfill_ranges").fetchone()[0]
    assert sum(groups) == 700_000 and ranges >= 2
    partial = [g for g in groups if g != 122_880]
    assert len(partial) <= ranges, groups  # at most one partial row group per range
