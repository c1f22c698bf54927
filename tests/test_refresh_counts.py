"""Incremental refresh through counts kept per join key (`clinipipe.targets.duckdb.refresh.
Factored`): which queries it covers, that the rewritten query equals the original on any data
(NULLs, duplicates, rows breaking the refresh-key contract), and that the summary it maintains
from CDC stays exact through the changes that break a wrong incremental algorithm (the
deleted maximum, a lab moved to another encounter or patient, a NULL join key, duplicates,
a truncate)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
from clinipipe.pipeline.refresh import refresh
from clinipipe.spec import load_spec
from clinipipe.targets.duckdb.refresh import COUNTS_PREFIX, factor_counts, summary_prefix
from tests.helpers import catch_up, execute

SUMMARY = """select p.patient_id, count(distinct e.encounter_id) as encounters,
       max(e.admit_ts) as last_admit,
       count(l.lab_id) filter (where l.abnormal_flag is not null) as abnormal_labs
from raw.patients p left join raw.encounters e on e.patient_id = p.patient_id
left join raw.labs l on l.encounter_id = e.encounter_id group by p.patient_id"""

COVERED = {
    "the benchmark's patient_summary": SUMMARY,
    "inner join": SUMMARY.replace("left join raw.labs", "join raw.labs"),
    "a WHERE on other tables": SUMMARY.replace("group by", "where p.sex <> 'X' group by"),
    "two counts, one of a nullable column": SUMMARY.replace(
        "as abnormal_labs", "as abnormal_labs, count(l.value_numeric) as valued"
    ),
    "min, bool_or and an expression of the group": SUMMARY.replace(
        "p.patient_id,",
        "p.patient_id, p.patient_id + 1 as next_id, min(e.admit_ts) as first,"
        " bool_or(e.department = 'ICU') as icu,",
    ),
}

NOT_COVERED = {
    "count of encounter rows (depends on how many labs each has)": SUMMARY.replace(
        "count(distinct e.encounter_id)", "count(e.encounter_id)"
    ),
    "sum over encounters": SUMMARY.replace("max(e.admit_ts)", "sum(e.encounter_id)"),
    "count(*)": SUMMARY.replace("count(l.lab_id)", "count(*)"),
    "count(DISTINCT) of a lab column": SUMMARY.replace(
        "count(l.lab_id)", "count(distinct l.lab_id)"
    ),
    "a lab column outside a count": SUMMARY.replace("max(e.admit_ts)", "max(l.collected_ts)"),
    "a WHERE on labs": SUMMARY.replace("group by", "where l.value_numeric > 0 group by"),
    "a FULL join": SUMMARY.replace("left join raw.labs", "full join raw.labs"),
    "an unaliased count": SUMMARY.replace(" as abnormal_labs", ""),
    "an unqualified column": SUMMARY.replace("e.admit_ts", "admit_ts"),
    "a HAVING": SUMMARY + " having count(l.lab_id) > 0",
    "a LIMIT": SUMMARY + " limit 5",
    "a window": SUMMARY.replace("max(e.admit_ts)", "max(max(e.admit_ts)) over ()"),
    "a subquery": SUMMARY.replace("group by", "where p.patient_id in (select 1) group by"),
    "a join condition reading labs twice": SUMMARY.replace(
        "on l.encounter_id = e.encounter_id",
        "on l.encounter_id = e.encounter_id and l.patient_id = e.patient_id",
    ),
}

TABLES = """
create schema raw;
create table raw.patients (patient_id bigint, sex varchar);
create table raw.encounters (encounter_id bigint, patient_id bigint, department varchar,
                             admit_ts timestamp);
create table raw.labs (lab_id bigint, encounter_id bigint, patient_id bigint,
                       abnormal_flag varchar, value_numeric decimal(10, 2),
                       collected_ts timestamp);
create schema _clinipipe;
"""


def connection() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(TABLES)
    return con


@pytest.mark.parametrize("sql", COVERED.values(), ids=COVERED.keys())
def test_covered_queries_are_factored(sql: str) -> None:
    factored = factor_counts(connection(), "t", sql, "patient_id")
    assert factored is not None
    assert factored.table.lower() == "labs" and factored.join_column == "encounter_id"
    assert factored.summary.startswith(summary_prefix("t"))


@pytest.mark.parametrize("sql", NOT_COVERED.values(), ids=NOT_COVERED.keys())
def test_other_queries_are_not_factored(sql: str) -> None:
    assert factor_counts(connection(), "t", sql, "patient_id") is None


def test_a_macro_shadowing_an_aggregate_is_not_taken_for_it() -> None:
    con = connection()
    assert factor_counts(con, "t", SUMMARY, "patient_id") is not None
    con.execute("create macro max(a) as a")  # max() is now a scalar macro in this database
    assert factor_counts(con, "t", SUMMARY, "patient_id") is None


maybe = st.sampled_from([1, 2, 2, None])  # small ids: rows meet; NULL keys and join keys
ROWS = st.tuples(
    st.lists(st.tuples(maybe, st.sampled_from(["F", "X"])), min_size=1, max_size=4),
    st.lists(
        st.tuples(maybe, maybe, st.sampled_from(["ICU", "ER", None]), st.integers(0, 3)),
        min_size=1,
        max_size=5,
    ),
    st.lists(
        st.tuples(maybe, maybe, maybe, st.sampled_from(["H", None]), st.none() | st.integers(0, 9)),
        max_size=8,
    ),
)


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(rows=ROWS)
@example(rows=([(1, "F")], [(1, 1, "ICU", 0)], [(1, 1, 1, "H", 1), (2, 1, 1, None, None)]))
def test_the_factored_query_equals_the_query_on_any_rows(
    rows: tuple[list[tuple[object, ...]], list[tuple[object, ...]], list[tuple[object, ...]]],
) -> None:
    """NULL keys and join keys, duplicate rows, encounters without labs, labs whose patient
    differs from their encounter's: every query that is factored (all covered ones; none of
    the others, were the checks wrong) returns through its summary exactly the rows (and
    column types) of the query itself, whole and narrowed to keys."""
    patients, encounters, labs = rows
    con = connection()
    for table, values, rows_of in (
        ("patients", "(?, ?)", patients),
        ("encounters", "(?, ?, ?, timestamp '2025-01-01' + to_days(?))", encounters),
        ("labs", "(?, ?, ?, ?, ?, timestamp '2025-01-01')", labs),
    ):
        if rows_of:
            con.executemany(f"insert into raw.{table} values {values}", rows_of)
    for sql in [*COVERED.values(), *NOT_COVERED.values()]:
        factored = factor_counts(con, "t", sql, "patient_id")
        if factored is None:  # any query factored at all must be exact, covered or not
            assert sql not in COVERED.values()
            continue
        con.execute(f"create or replace table _clinipipe.{factored.summary} as "
                    f"{factored.summary_sql}")  # fmt: skip
        for where in ("true", "patient_id in (1, 3)", "patient_id is null"):
            got = f"select * from ({factored.query}) where {where}"
            want = f"select * from ({sql}) where {where}"
            [(diff,)] = con.execute(
                f"select count(*) from (({got}) except all ({want}) union all "
                f"(({want}) except all ({got})))"
            ).fetchall()
            assert diff == 0, (sql, where)
        assert con.execute(f"describe {factored.query}").fetchall() == (
            con.execute(f"describe {sql}").fetchall()
        )


# --- end to end: CDC -> incremental refresh through the summary ------------------------------

SPEC = """\
version: 1
name: counts
source:
  dsn: {dsn}
  publication: clinipipe_pub
  slot: clinipipe_slot
  tables:
    - {{name: patients, primary_key: [patient_id]}}
    - {{name: encounters, primary_key: [encounter_id]}}
    - {{name: labs, primary_key: [lab_id]}}
target: {{type: duckdb, path: warehouse.duckdb}}
dynamic_tables:
  - name: patient_summary
    target_lag: 1 minute
    refresh_mode: incremental
    refresh_key: patient_id
    sql: |
{summary}
  - name: inner_counts
    target_lag: 1 minute
    refresh_mode: incremental
    refresh_key: patient_id
    sql: |
{inner}
"""

SOURCE = """
create table patients (patient_id bigint primary key, sex text);
create table encounters (encounter_id bigint primary key, patient_id bigint, department text,
                         admit_ts timestamptz);
create table labs (lab_id bigint primary key, encounter_id bigint, patient_id bigint,
                   abnormal_flag text, value_numeric numeric(10, 2), collected_ts timestamptz);
insert into patients select i, 'F' from generate_series(1, 6) i;
insert into encounters select e, 1 + e % 6, 'ICU', timestamptz '2025-01-01' + e * interval '1 day'
  from generate_series(1, 24) e;
insert into labs select l, 1 + l % 24, 1 + (1 + l % 24) % 6, case when l % 3 = 0 then 'H' end,
  case when l % 5 = 0 then null else l end, now() from generate_series(1, 96) l;
"""

CHANGES = [
    # the latest admission of patient 1 is deleted (its max must be recomputed), with its labs
    ["delete from labs where encounter_id = 24", "delete from encounters where encounter_id = 24"],
    # a lab moves to another encounter of the same patient (its join key changes)
    ["update labs set encounter_id = 12 where lab_id = 5"],
    # a lab moves to another patient's encounter (join key and refresh key change)
    ["update labs set encounter_id = 3, patient_id = 4 where lab_id = 6"],
    # a lab loses its encounter (NULL join key); a lab gets a NULL counted value and a flag
    ["update labs set encounter_id = null where lab_id = 7",
     "update labs set value_numeric = null, abnormal_flag = 'L' where lab_id = 8"],
    # an encounter moves to another patient with its labs; a duplicate of a lab's content
    ["update encounters set patient_id = 2 where encounter_id = 13",
     "update labs set patient_id = 2 where encounter_id = 13",
     "insert into labs select 1000, encounter_id, patient_id, abnormal_flag, value_numeric, "
     "collected_ts from labs where lab_id = 9"],
    # only encounters change: the summary is read, not rebuilt
    ["update encounters set admit_ts = admit_ts + interval '1 minute' where encounter_id < 5"],
    # a patient goes; labs and an encounter of NULL patient (NULL refresh keys)
    ["delete from patients where patient_id = 6",
     "insert into encounters values (99, null, 'ER', now())",
     "insert into labs values (1001, null, null, 'H', 1, now()), (1002, 99, null, 'H', 1, now())"],
    # everything about labs goes, then some come back
    ["truncate labs"],
    ["insert into labs select l, 1 + l % 24, 1 + (1 + l % 24) % 6, 'H', l, now() "
     "from generate_series(1, 30) l"],
]  # fmt: skip


def summaries(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return {
        str(name): str(name)
        for (name,) in con.execute(
            "select table_name from duckdb_tables() where schema_name = '_clinipipe' "
            f"and starts_with(table_name, '{COUNTS_PREFIX}')"
        ).fetchall()
    }


def test_incremental_refreshes_through_the_summary_stay_exact(tmp_path: Path, pg_dsn: str) -> None:
    execute(pg_dsn, SOURCE)
    indent = lambda sql: "\n".join("      " + line for line in sql.splitlines())  # noqa: E731
    inner = SUMMARY.replace("left join raw.labs", "join raw.labs")
    spec = tmp_path / "clinipipe.yaml"
    spec.write_text(SPEC.format(dsn=pg_dsn, summary=indent(SUMMARY), inner=indent(inner)))
    loaded = load_spec(spec)
    from clinipipe.pipeline.deploy import deploy

    deploy(loaded)
    run_backfill(loaded, BackfillOptions())
    assert {r.refresh_action for r in refresh(loaded)} == {"INITIALIZATION"}
    warehouse = tmp_path / "warehouse.duckdb"
    for step, statements in enumerate(CHANGES):
        execute(pg_dsn, *statements)
        catch_up(loaded)
        results = refresh(loaded)
        assert all(r.state == "SUCCEEDED" for r in results), [r.state_message for r in results]
        assert {r.refresh_action for r in results} <= {"INCREMENTAL", "NO_DATA"}, step
        with duckdb.connect(str(warehouse), read_only=True) as con:
            kept = summaries(con)
            assert len(kept) == 2, (step, kept)  # one per table, maintained, never stale
            for table in loaded.spec.dynamic_tables:
                actual = con.execute(f"select * from derived.{table.name} order by all")
                rows = actual.fetchall()
                expected = con.execute(f"select * from ({table.sql}) order by all").fetchall()
                assert rows == expected, (step, table.name)
                factored = factor_counts(con, table.name, table.sql, "patient_id")
                assert factored is not None and factored.summary in kept
                [(diff,)] = con.execute(
                    f"select count(*) from ((select * from _clinipipe.{factored.summary} "
                    f"except all {factored.summary_sql}) union all ({factored.summary_sql} "
                    f"except all select * from _clinipipe.{factored.summary}))"
                ).fetchall()
                assert diff == 0, (step, table.name)  # the summary = its recount
    # a full refresh rebuilds the summary with the table
    assert {r.refresh_action for r in refresh(loaded, full=True)} == {"FULL"}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert len(summaries(con)) == 2
