"""Dynamic tables on DuckDB: initialization, incremental refresh, history, metering, status."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import psycopg2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clinipipe import targets
from clinipipe.cli.app import run
from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
from clinipipe.pipeline.refresh import (
    RefreshError,
    RefreshResult,
    due_tables,
    dynamic_table_status,
    refresh,
    refresh_due,
)
from clinipipe.spec import LoadedSpec, SpecError, load_spec, parse_spec
from clinipipe.synth import run_synth
from clinipipe.targets import Target
from clinipipe.targets.snowflake import SnowflakeTarget
from tests.helpers import catch_up, cli, example_text, execute, snowflake_text, write_spec


def warehouse_of(loaded: LoadedSpec) -> Path:
    return loaded.directory / "warehouse.duckdb"


def assert_fresh(loaded: LoadedSpec) -> None:
    """Every dynamic table equals its query evaluated now (upstream tables first)."""
    with duckdb.connect(str(warehouse_of(loaded)), read_only=True) as con:
        for table in loaded.spec.dynamic_tables:
            actual = con.execute(f"SELECT * FROM derived.{table.name} ORDER BY ALL").fetchall()
            expected = con.execute(f"SELECT * FROM ({table.sql}) ORDER BY ALL").fetchall()
            assert actual == expected, f"{table.name} differs from a full recomputation"


def by_name(results: list[RefreshResult]) -> dict[str, RefreshResult]:
    return {r.name: r for r in results}


def test_initialization_then_incremental_equals_full_recomputation(
    hospital_project: Path, pg_dsn: str
) -> None:
    loaded = load_spec(hospital_project)
    run_backfill(loaded, BackfillOptions())
    first = by_name(refresh(loaded))
    assert {r.refresh_action for r in first.values()} == {"INITIALIZATION"}
    assert all(r.state == "SUCCEEDED" for r in first.values())
    assert_fresh(loaded)

    execute(
        pg_dsn,
        "UPDATE labs SET abnormal_flag = 'H' WHERE patient_id IN (3, 4)",
        "DELETE FROM labs WHERE patient_id = 5",
        "DELETE FROM encounters WHERE patient_id = 6",
        "INSERT INTO encounters SELECT max(encounter_id) + 1, 7, 1, 'inpatient', 'ICU', "
        "now(), NULL, 'I10', 'ACC1' FROM encounters",
        "UPDATE encounters SET patient_id = 9 WHERE encounter_id = "
        "(SELECT min(encounter_id) FROM encounters WHERE patient_id = 8)",
        "UPDATE labs SET patient_id = 9 WHERE encounter_id NOT IN "
        "(SELECT encounter_id FROM encounters WHERE patient_id <> 9) AND patient_id = 8",
        "DELETE FROM patients WHERE patient_id = 10",
    )
    catch_up(loaded)
    second = by_name(refresh(loaded))
    summary = second["patient_summary"]
    assert summary.state == "SUCCEEDED" and summary.refresh_action == "INCREMENTAL"
    assert summary.keys_changed is not None and 5 <= summary.keys_changed <= 10
    assert summary.rows_deleted is not None and summary.rows_deleted <= summary.keys_changed
    assert second["daily_census"].refresh_action == "FULL"  # refresh_mode: full
    assert_fresh(loaded)
    with duckdb.connect(str(warehouse_of(loaded)), read_only=True) as con:
        marks = con.execute(
            "SELECT DISTINCT high_water_lsn FROM _clinipipe.dynamic_table_state"
        ).fetchall()
        # An incremental publish (run by the CDC loop in catch_up) keeps the keys at or above
        # the mark it published at (clinipipe.pipeline.publish.KEY_FLOORS) for its next run.
        [(floors,)] = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'serving_key_floors'"
        ).fetchall()
        [(floor,)] = (
            con.execute("SELECT min(lsn) FROM _clinipipe.serving_key_floors").fetchall()
            if floors
            else [(None,)]
        )
        left = con.execute(
            "SELECT count(*) FROM _clinipipe.changed_keys WHERE lsn < ?",
            [2**62 if floor is None else floor],
        ).fetchone()
    assert len(marks) == 1 and marks[0][0] > 0  # both tables reflect the CDC checkpoint
    assert left == (0,)  # changed keys every table (and every publish) reflects are deleted

    third = by_name(refresh(loaded))  # nothing changed since
    assert third["patient_summary"].refresh_action == "NO_DATA"
    assert_fresh(loaded)


# --- the property: incremental refresh == full recomputation ------------------------------------

EXTRA_DYNAMIC_TABLES = """\
  - name: encounter_order
    target_lag: 1 minute
    refresh_mode: incremental
    refresh_key: patient_id
    sql: |
      select patient_id, encounter_id, department,
             row_number() over (partition by patient_id order by admit_ts, encounter_id)
               as visit_no,
             count(*) over (partition by patient_id) as visits,
             lag(department) over (partition by patient_id order by admit_ts, encounter_id)
               as previous_department
      from raw.encounters
  - name: patient_risk
    target_lag: 1 minute
    refresh_mode: incremental
    refresh_key: patient_id
    sql: |
      select s.patient_id, p.sex, s.encounters, s.abnormal_labs,
             s.encounters + 2 * s.abnormal_labs as score
      from derived.patient_summary s
      join raw.patients p on p.patient_id = s.patient_id
  - name: department_load
    target_lag: 1 minute
    refresh_mode: incremental
    refresh_key: department
    sql: |
      select department, count(*) as encounters, count(distinct patient_id) as patients,
             max(visit_no) as most_visits
      from derived.encounter_order
      group by department
"""


def spec_with(extra: str, **replacements: str) -> str:
    """The example spec with more dynamic tables (and literal replacements)."""
    return example_text(
        **{"\ninteractive_tables:\n": f"\n{extra}\ninteractive_tables:\n"}, **replacements
    )


PATIENTS = 40
DEPARTMENTS = ["ICU", "Cardiology", "Oncology"]
patient_ids = st.integers(1, PATIENTS + 3)  # a few that do not exist
offsets = st.integers(0, 60)  # the n-th encounter or lab, by id (no-op when past the end)
flags = st.sampled_from(["H", "L", None])
ENCOUNTER = "(SELECT encounter_id FROM encounters ORDER BY encounter_id LIMIT 1 OFFSET %s)"
LAB = "(SELECT lab_id FROM labs ORDER BY lab_id LIMIT 1 OFFSET %s)"

OPERATIONS = st.one_of(
    st.tuples(st.just("add_encounter"), patient_ids, st.sampled_from(DEPARTMENTS),
              st.integers(0, 5)),
    st.tuples(st.just("move_encounter"), offsets, patient_ids),
    st.tuples(st.just("change_department"), offsets, st.sampled_from(DEPARTMENTS)),
    st.tuples(st.just("delete_encounter"), offsets),
    st.tuples(st.just("add_lab"), offsets, flags),
    st.tuples(st.just("flag_lab"), offsets, flags),
    st.tuples(st.just("delete_lab"), offsets),
    st.tuples(st.just("relink_lab"), offsets, offsets),
    st.tuples(st.just("unlink_lab"), offsets),
    st.tuples(st.just("add_patient"), st.sampled_from("FM")),
    st.tuples(st.just("delete_patient"), patient_ids),
    st.tuples(st.just("change_sex"), patient_ids, st.sampled_from("FMX")),
)  # fmt: skip


def apply_operation(cur: psycopg2.extensions.cursor, op: tuple[object, ...]) -> None:
    """One random change; labs keep the patient of their encounter (the refresh-key contract)."""
    kind, *args = op
    if kind == "add_encounter":
        cur.execute(
            "INSERT INTO encounters SELECT coalesce(max(encounter_id), 0) + 1, %s, 1, "
            "'outpatient', %s, timestamptz '2025-01-01' + %s * interval '1 day', NULL, 'I10', "
            "'ACC' FROM encounters",
            args,
        )
    elif kind == "move_encounter":
        cur.execute(f"SELECT {ENCOUNTER}", args[:1])
        (encounter,) = cur.fetchone()
        cur.execute("UPDATE encounters SET patient_id = %s WHERE encounter_id = %s",
                    (args[1], encounter))  # fmt: skip
        cur.execute("UPDATE labs SET patient_id = %s WHERE encounter_id = %s",
                    (args[1], encounter))  # fmt: skip
    elif kind == "change_department":
        cur.execute(f"UPDATE encounters SET department = %s WHERE encounter_id = {ENCOUNTER}",
                    (args[1], args[0]))  # fmt: skip
    elif kind == "delete_encounter":
        cur.execute(f"SELECT {ENCOUNTER}", args)
        (encounter,) = cur.fetchone()
        cur.execute("DELETE FROM labs WHERE encounter_id = %s", (encounter,))
        cur.execute("DELETE FROM encounters WHERE encounter_id = %s", (encounter,))
    elif kind == "add_lab":
        cur.execute(
            "INSERT INTO labs SELECT (SELECT coalesce(max(lab_id), 0) + 1 FROM labs), "
            "encounter_id, patient_id, '1234-5', 'Test', 1.0, 'mg', 0, 2, %s, admit_ts "
            f"FROM encounters WHERE encounter_id = {ENCOUNTER}",
            (args[1], args[0]),
        )
    elif kind == "flag_lab":
        cur.execute(f"UPDATE labs SET abnormal_flag = %s WHERE lab_id = {LAB}", (args[1], args[0]))
    elif kind == "delete_lab":
        cur.execute(f"DELETE FROM labs WHERE lab_id = {LAB}", args)
    elif kind == "relink_lab":  # the join key changes (and the patient, with the encounter)
        cur.execute(
            f"UPDATE labs SET (encounter_id, patient_id) = (SELECT encounter_id, patient_id "
            f"FROM encounters WHERE encounter_id = {ENCOUNTER}) WHERE lab_id = {LAB} "
            f"AND EXISTS (SELECT 1 FROM encounters WHERE encounter_id = {ENCOUNTER})",
            (args[1], args[0], args[1]),
        )
    elif kind == "unlink_lab":  # a join key that matches no encounter (NOT NULL here)
        cur.execute(f"UPDATE labs SET encounter_id = -encounter_id WHERE lab_id = {LAB}", args)
    elif kind == "add_patient":
        cur.execute(
            "INSERT INTO patients (patient_id, mrn, first_name, last_name, sex, birth_date, "
            "street_address, city, state, zip, created_at) SELECT max(patient_id) + 1, "
            "'M' || (max(patient_id) + 1), 'A', 'B', %s, '1980-01-01', 'x', 'y', 'NY', '10001', "
            "now() FROM patients",
            args,
        )
    elif kind == "delete_patient":
        cur.execute("DELETE FROM patients WHERE patient_id = %s", args)
    elif kind == "change_sex":
        cur.execute("UPDATE patients SET sex = %s WHERE patient_id = %s", (args[1], args[0]))


@pytest.fixture
def property_project(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small hospital, backfilled, every dynamic table built; patient_summary is
    `incremental` too, so that no refresh falls back to a full one."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    run_synth(pg_dsn, patients=PATIENTS, seed=5)
    text = spec_with(EXTRA_DYNAMIC_TABLES, **{
        "refresh_mode: auto\n    refresh_key: patient_id":
        "refresh_mode: incremental\n    refresh_key: patient_id",
    })  # fmt: skip
    spec = write_spec(tmp_path, text)
    assert run(["-q", "-c", str(spec), "deploy"]) == 0
    loaded = load_spec(spec)
    run_backfill(loaded, BackfillOptions())
    assert all(r.refresh_action == "INITIALIZATION" for r in refresh(loaded))
    return spec


TRANSACTIONS = st.lists(st.lists(OPERATIONS, min_size=1, max_size=4), max_size=3)


def apply_transactions(dsn: str, transactions: list[list[tuple[object, ...]]]) -> None:
    con = psycopg2.connect(dsn)
    try:
        for transaction in transactions:
            with con.cursor() as cur:
                for op in transaction:
                    apply_operation(cur, op)
            con.commit()
    finally:
        con.close()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(
    first=TRANSACTIONS,
    partial=st.none() | st.tuples(st.sampled_from(["patient_summary", "encounter_order",
                                                   "patient_risk"]), st.booleans()),
    second=TRANSACTIONS,
)  # fmt: skip
def test_incremental_refresh_equals_full_recomputation(
    property_project: Path,
    pg_dsn: str,
    first: list[list[tuple[object, ...]]],
    partial: tuple[str, bool] | None,
    second: list[list[tuple[object, ...]]],
) -> None:
    """Random inserts, updates and deletes on the source -> CDC -> (maybe a refresh of one
    table and its upstream, maybe --full) -> more changes -> CDC -> refresh: every dynamic table
    (joins + aggregates, a window partitioned by the key, two reading another dynamic table,
    one of them by a different key) equals a full recomputation. The state carries over from
    one example to the next, so refreshes also follow refreshes of every kind."""
    loaded = load_spec(property_project)
    apply_transactions(pg_dsn, first)
    if partial is not None:
        catch_up(loaded)
        name, full = partial
        results = by_name(refresh(loaded, name, full=full))
        assert all(r.state == "SUCCEEDED" for r in results.values())
        if full:
            assert results[name].refresh_action == "FULL"
        if name == "patient_risk":
            assert set(results) == {"patient_summary", "patient_risk"}  # upstream first
    apply_transactions(pg_dsn, second)
    catch_up(loaded)
    results = refresh(loaded)
    assert all(r.state == "SUCCEEDED" for r in results), [r.state_message for r in results]
    incremental = {r.refresh_action for r in results if r.name != "daily_census"}
    assert incremental <= {"INCREMENTAL", "NO_DATA"}
    for r in results:
        event(f"{r.name}: {r.refresh_action}")
    assert_fresh(loaded)


EDGE_CASES = """\
  - name: lab_flags
    target_lag: 1 minute
    refresh_mode: incremental
    refresh_key: abnormal_flag
    sql: select abnormal_flag, count(*) as labs from RAW.Labs group by abnormal_flag
  - name: qualified
    target_lag: 1 minute
    refresh_mode: incremental
    refresh_key: patient_id
    sql: select raw.patients.patient_id, raw.patients.sex from raw.patients
"""


def test_null_keys_upper_case_names_and_schema_qualified_columns(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key that can be NULL (its rows are re-derived too), table names in another case than
    the spec's, and columns qualified with the schema (the inputs cannot be narrowed: the
    result alone is filtered by key)."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    run_synth(pg_dsn, patients=30, seed=8)
    spec = write_spec(tmp_path, spec_with(EDGE_CASES))
    assert run(["-q", "-c", str(spec), "deploy"]) == 0
    loaded = load_spec(spec)
    run_backfill(loaded, BackfillOptions())
    refresh(loaded)
    execute(
        pg_dsn,
        "UPDATE labs SET abnormal_flag = NULL WHERE lab_id = (SELECT min(lab_id) FROM labs "
        "WHERE abnormal_flag IS NOT NULL)",
        "UPDATE labs SET abnormal_flag = 'H' WHERE lab_id = (SELECT max(lab_id) FROM labs "
        "WHERE abnormal_flag IS NULL)",
        "INSERT INTO labs SELECT max(lab_id) + 1, 1, 1, 'x', 'y', 1, 'mg', 0, 1, NULL, now() "
        "FROM labs",
        "UPDATE patients SET sex = 'X' WHERE patient_id = 3",
    )
    catch_up(loaded)
    results = by_name(refresh(loaded))
    assert results["lab_flags"].refresh_action == "INCREMENTAL"
    assert results["lab_flags"].keys_changed in (2, 3)  # NULL, 'H' (and 'L' if it was that)
    assert results["qualified"].refresh_action == "INCREMENTAL"
    assert results["qualified"].keys_changed == 1
    assert_fresh(loaded)


# --- auto, failures, cycles ----------------------------------------------------------------------


def history(loaded: LoadedSpec, name: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(warehouse_of(loaded)), read_only=True) as con:
        return con.execute(
            "SELECT state, refresh_action, state_message, warehouse, rows_inserted, "
            "rows_deleted, keys_changed, refresh_trigger FROM "
            "_clinipipe.dynamic_table_refresh_history WHERE name = ? ORDER BY refresh_start_time",
            [name],
        ).fetchall()


def test_auto_falls_back_to_full_above_the_threshold_and_says_so(
    hospital_project: Path, pg_dsn: str
) -> None:
    loaded = load_spec(hospital_project)
    run_backfill(loaded, BackfillOptions())
    refresh(loaded)
    execute(pg_dsn, "UPDATE labs SET abnormal_flag = 'L' WHERE patient_id <= 150")  # half
    catch_up(loaded)
    summary = by_name(refresh(loaded))["patient_summary"]
    assert summary.state == "SUCCEEDED" and summary.refresh_action == "FULL"
    assert summary.warehouse == "CLINIPIPE_INIT_WH"  # a full refresh runs on the big profile
    message = summary.state_message or ""
    assert message.startswith("auto:") and "more than 20%" in message, message
    assert history(loaded, "patient_summary")[-1][:3] == ("SUCCEEDED", "FULL", message)
    assert_fresh(loaded)

    execute(pg_dsn, "UPDATE labs SET abnormal_flag = NULL WHERE patient_id IN (1, 2)")
    catch_up(loaded)
    summary = by_name(refresh(loaded))["patient_summary"]
    assert (summary.refresh_action, summary.warehouse) == ("INCREMENTAL", "CLINIPIPE_CDC_WH")
    assert_fresh(loaded)


FRAGILE = """\
  - name: fragile
    target_lag: 1 minute
    refresh_key: patient_id
    sql: |
      select patient_id, cast(100 / (case when sex = 'X' then 0 else 1 end) as integer) as ratio
      from raw.patients
  - name: fragile_copy
    target_lag: 1 minute
    refresh_key: patient_id
    sql: select * from derived.fragile
"""


def test_a_failing_refresh_changes_nothing_and_is_recorded(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    run_synth(pg_dsn, patients=50, seed=2)
    spec = write_spec(tmp_path, spec_with(FRAGILE))
    assert run(["-q", "-c", str(spec), "deploy"]) == 0
    loaded = load_spec(spec)
    run_backfill(loaded, BackfillOptions())
    assert all(r.state == "SUCCEEDED" for r in refresh(loaded))

    def snapshot() -> tuple[list[tuple[object, ...]], object]:
        with duckdb.connect(str(warehouse_of(loaded)), read_only=True) as con:
            rows = con.execute("SELECT * FROM derived.fragile ORDER BY ALL").fetchall()
            mark = con.execute(
                "SELECT high_water_lsn FROM _clinipipe.dynamic_table_state WHERE name = 'fragile'"
            ).fetchone()
        return rows, mark

    before = snapshot()
    execute(pg_dsn, "UPDATE patients SET sex = 'X' WHERE patient_id = 7")  # 100 / 0
    execute(pg_dsn, "UPDATE labs SET abnormal_flag = 'H' WHERE patient_id = 8")
    catch_up(loaded)
    results = by_name(refresh(loaded))
    fragile = results["fragile"]
    assert (fragile.state, fragile.refresh_action) == ("FAILED", "INCREMENTAL")
    assert "nothing changed" in (fragile.state_message or "")
    assert "can't be cast" in (fragile.state_message or "")
    assert results["fragile_copy"].state == "SKIPPED"  # its upstream failed
    assert "upstream dynamic table fragile failed" in (results["fragile_copy"].state_message or "")
    assert results["patient_summary"].state == "SUCCEEDED"  # the others go on
    assert snapshot() == before  # rolled back: the rows and the high-water mark
    assert history(loaded, "fragile")[-1][0] == "FAILED"
    assert history(loaded, "fragile_copy")[-1][0] == "SKIPPED"

    execute(pg_dsn, "UPDATE patients SET sex = 'F' WHERE patient_id = 7")
    catch_up(loaded)
    results = by_name(refresh(loaded))
    assert results["fragile"].state == "SUCCEEDED"
    assert results["fragile"].refresh_action == "INCREMENTAL"
    assert results["fragile_copy"].state == "SUCCEEDED"
    assert_fresh(loaded)


def test_incremental_mode_rejects_a_query_without_the_key_and_explains_auto(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    run_synth(pg_dsn, patients=20, seed=4)
    extra = """\
  - name: by_provider
    target_lag: 1 minute
    refresh_mode: incremental
    refresh_key: patient_id
    sql: |
      select e.patient_id, count(*) as visits, max(p.specialty) as specialty
      from raw.encounters e join raw.providers p using (provider_id) group by e.patient_id
  - name: by_provider_auto
    target_lag: 1 minute
    refresh_key: patient_id
    sql: |
      select e.patient_id, count(*) as visits, max(p.specialty) as specialty
      from raw.encounters e join raw.providers p using (provider_id) group by e.patient_id
"""
    spec = write_spec(tmp_path, spec_with(extra))
    assert run(["-q", "-c", str(spec), "deploy"]) == 0
    loaded = load_spec(spec)
    run_backfill(loaded, BackfillOptions())
    results = by_name(refresh(loaded))
    rejected = results["by_provider"]
    assert rejected.state == "FAILED"
    message = rejected.state_message or ""
    assert "raw.providers has no column patient_id" in message
    assert "With refresh_mode: auto this table would be refreshed fully" in message
    with duckdb.connect(str(warehouse_of(loaded)), read_only=True) as con:
        assert not con.execute(
            "SELECT * FROM information_schema.tables WHERE table_name = 'by_provider'"
        ).fetchall()  # nothing ran
    assert results["by_provider_auto"].refresh_action == "INITIALIZATION"
    again = by_name(refresh(loaded))["by_provider_auto"]
    assert again.refresh_action == "FULL"
    assert "auto: not incremental because raw.providers has no column patient_id" in (
        again.state_message or ""
    )


def test_a_cycle_is_a_spec_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u@127.0.0.1/db")
    extra = """\
  - name: alpha
    target_lag: 1 minute
    sql: select * from derived.beta
  - name: beta
    target_lag: 1 minute
    sql: |
      select * from "derived"."alpha" -- derived.ignored (a comment)
  - name: gamma
    target_lag: 1 minute
    sql: select * from derived.gamma join derived.nowhere using (k)
"""
    text = spec_with(extra)
    with pytest.raises(SpecError) as info:
        parse_spec(text, "clinipipe.yaml", Path("/nowhere/clinipipe.yaml"))
    problems = [str(p) for p in info.value.problems]
    lines = text.splitlines()
    alpha = next(i for i, line in enumerate(lines, 1) if "select * from derived.beta" in line)
    gamma = next(i for i, line in enumerate(lines, 1) if "derived.gamma join" in line)
    col = lines[alpha - 1].index("select") + 1
    assert (
        f"clinipipe.yaml:{alpha}:{col}: dynamic_tables[3].sql: dynamic tables form a cycle: "
        "alpha -> beta -> alpha" in "\n".join(problems)
    ), problems
    assert any(
        p.startswith(f"clinipipe.yaml:{gamma}:")
        and "dynamic tables form a cycle: gamma -> gamma" in p
        for p in problems
    ), problems
    assert any("reads derived.nowhere, which is not a dynamic table" in p for p in problems)
    assert not any("ignored" in p for p in problems)  # comments are not references
    assert len(problems) == 3, problems


# --- status, metering, the CLI --------------------------------------------------------------------


def test_status_shows_lag_and_last_refresh_and_metering_names_the_warehouse(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    spec = str(hospital_project)
    code, out, _ = cli(capsys, "-c", spec, "status", "--json")
    assert code == 3  # deployed, nothing built yet: behind
    assert [s["last_refresh"] for s in json.loads(out)["dynamic_tables"]] == [None] * 3
    code, _, err = cli(capsys, "-c", spec, "refresh")
    assert code == 1 and "run `clinipipe backfill` first" in err

    loaded = load_spec(hospital_project)
    run_backfill(loaded, BackfillOptions())
    code, out, err = cli(capsys, "-c", spec, "refresh", "--json")
    assert code == 0, err
    assert [(r["name"], r["action"]) for r in json.loads(out)] == [
        ("patient_summary", "INITIALIZATION"), ("daily_census", "INITIALIZATION"),
        ("recent_labs", "INITIALIZATION"),
    ]  # fmt: skip
    code, out, _ = cli(capsys, "-c", spec, "publish")  # dashboards served: status can be ok
    assert code == 0
    execute(pg_dsn, "UPDATE labs SET abnormal_flag = 'H' WHERE patient_id = 1")
    catch_up(loaded)
    code, out, _ = cli(capsys, "-c", spec, "refresh", "patient_summary")
    assert code == 0 and "patient_summary" in out and "INCREMENTAL" in out

    opened: list[bool] = []
    real_open = targets.open_target

    def spy(loaded: LoadedSpec, *, read_only: bool = False) -> Target:
        opened.append(read_only)
        return real_open(loaded, read_only=read_only)

    monkeypatch.setattr(targets, "open_target", spy)
    code, out, _ = cli(capsys, "-c", spec, "status", "--json")
    assert opened == [True]  # status opens the warehouse read-only
    assert code == 0
    status = {s["name"]: s for s in json.loads(out)["dynamic_tables"]}
    summary = status["patient_summary"]
    assert summary["lag_seconds"] >= 0  # "behind" follows lag against target, whatever the clock
    assert summary["behind"] is (summary["lag_seconds"] > summary["target_lag_seconds"])
    assert summary["target_lag_seconds"] == 60
    assert summary["last_refresh"]["action"] == "INCREMENTAL"
    assert summary["last_refresh"]["warehouse"] == "CLINIPIPE_CDC_WH"
    assert summary["last_refresh"]["keys_changed"] >= 1
    # Metered refreshes of the last 24 h, by warehouse: the build and the incremental refresh.
    assert set(summary["metered_24h"]) == {"CLINIPIPE_INIT_WH", "CLINIPIPE_CDC_WH"}
    assert summary["metered_24h"]["CLINIPIPE_CDC_WH"]["refreshes"] == 1
    assert summary["metered_24h"]["CLINIPIPE_INIT_WH"]["seconds"] > 0
    assert status["daily_census"]["last_refresh"]["action"] == "INITIALIZATION"
    code, out, _ = cli(capsys, "-c", spec, "status")
    assert code == 0 and "patient_summary" in out and "daily_census" in out

    with targets.open_target(loaded, read_only=True) as target:
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)
        late = {s.name: s for s in dynamic_table_status(loaded, target, now=later)}
        assert late["patient_summary"].behind and late["patient_summary"].lag_seconds > 590
        assert due_tables(loaded, target) == []
        assert due_tables(loaded, target, now=later) == [
            "patient_summary", "daily_census", "recent_labs",
        ]  # fmt: skip

    with duckdb.connect(str(warehouse_of(loaded)), read_only=True) as con:
        metered = con.execute(
            "SELECT job, warehouse, warehouse_role, size FROM _clinipipe.metering "
            "WHERE job LIKE 'refresh:%' ORDER BY started_at"
        ).fetchall()
    assert metered == [
        ("refresh:patient_summary:initialization", "CLINIPIPE_INIT_WH", "initialization",
         "X6LARGE"),
        ("refresh:daily_census:initialization", "CLINIPIPE_INIT_WH", "initialization",
         "X6LARGE"),
        ("refresh:recent_labs:initialization", "CLINIPIPE_INIT_WH", "initialization",
         "X6LARGE"),
        ("refresh:patient_summary:incremental", "CLINIPIPE_CDC_WH", "incremental", "XSMALL"),
    ]  # fmt: skip

    code, _, err = cli(capsys, "-c", spec, "refresh", "no_such_table")
    assert code == 2 and "dynamic tables: daily_census, patient_summary" in err


def test_the_scheduler_refreshes_what_is_due(hospital_project: Path, pg_dsn: str) -> None:
    loaded = load_spec(hospital_project)
    run_backfill(loaded, BackfillOptions())
    with targets.open_target(loaded) as target:
        never_built = ["patient_summary", "daily_census", "recent_labs"]
        assert due_tables(loaded, target) == never_built
        first = refresh_due(loaded, target)
        assert [r.refresh_trigger for r in first] == ["SCHEDULED"] * 3
        assert refresh_due(loaded, target) == []  # fresh
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=59.5)
        one_minute = ["patient_summary", "recent_labs"]  # lag 1 min; daily_census has 5
        assert due_tables(loaded, target, now=later) == one_minute
        assert [r.name for r in refresh_due(loaded, target, now=later)] == one_minute


# --- Snowflake: ALTER DYNAMIC TABLE ... REFRESH and its refresh history ---------------------------

SNOWFLAKE_REFRESH = 'ALTER DYNAMIC TABLE "CLINIPIPE"."DERIVED"."PATIENT_SUMMARY" REFRESH'
SNOWFLAKE_HISTORY = (
    "SELECT NAME, STATE, REFRESH_ACTION, STATE_MESSAGE, DATA_TIMESTAMP, REFRESH_START_TIME, "
    'REFRESH_END_TIME, STATISTICS, REFRESH_TRIGGER FROM TABLE("CLINIPIPE".INFORMATION_SCHEMA.'
    "DYNAMIC_TABLE_REFRESH_HISTORY(DATA_TIMESTAMP_START => "
    "DATEADD('day', -7, CURRENT_TIMESTAMP()), NAME => 'CLINIPIPE.DERIVED.PATIENT_SUMMARY', "
    "RESULT_LIMIT => 1)) ORDER BY REFRESH_START_TIME DESC"
)


@pytest.fixture
def snowflake_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SnowflakeTarget:
    """A Snowflake target whose session is never used: statements are collected instead."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://nobody@127.0.0.1:1/none")
    target = SnowflakeTarget(load_spec(write_spec(tmp_path, snowflake_text())))
    target._con = target._local.con = object()
    target._local.settings = ()
    return target


def test_snowflake_refresh_and_history_golden_sql(snowflake_target: SnowflakeTarget) -> None:
    """The statements `refresh` and `status` issue on Snowflake (documented syntax, see
    reference/snowflake-syntax.md); fakesnow cannot run them (next test)."""
    assert snowflake_target.dynamic_table_refresh_sql("patient_summary") == SNOWFLAKE_REFRESH
    assert snowflake_target.dynamic_table_history_sql("patient_summary", 1) == SNOWFLAKE_HISTORY


def test_snowflake_refresh_runs_alter_then_reads_the_history(
    snowflake_target: SnowflakeTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    start = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    stats = '{"numInsertedRows": 12, "numDeletedRows": 3, "numCopiedRows": 0}'

    def query(sql: str) -> list[tuple[object, ...]]:
        ran.append(sql)
        if "information_schema.tables" in sql:
            return [(1,)]  # deployed
        name = "PATIENT_SUMMARY" if "PATIENT_SUMMARY" in sql else "DAILY_CENSUS"
        end = start + dt.timedelta(seconds=4)
        return [(name, "SUCCEEDED", "INCREMENTAL", None, start, start, end, stats, "MANUAL")]

    monkeypatch.setattr(snowflake_target, "_execute", lambda s: ran.append(s.sql))
    monkeypatch.setattr(snowflake_target, "query", query)
    monkeypatch.setattr(snowflake_target, "use_warehouse", lambda role: role)
    # deployed (table_exists reads SHOW TABLES, which this stand-in session cannot answer)
    monkeypatch.setattr(snowflake_target, "table_exists", lambda schema, table: True)
    results = refresh(snowflake_target.loaded, "patient_summary", target=snowflake_target)
    assert [s for s in ran if "information_schema.tables" not in s] == [
        SNOWFLAKE_REFRESH, SNOWFLAKE_HISTORY,
    ]  # fmt: skip
    (result,) = results
    assert (result.name, result.state, result.refresh_action) == (
        "patient_summary", "SUCCEEDED", "INCREMENTAL",
    )  # fmt: skip
    assert (result.rows_inserted, result.rows_deleted, result.seconds) == (12, 3, 4.0)
    statuses = dynamic_table_status(
        snowflake_target.loaded, snowflake_target, now=start + dt.timedelta(seconds=90)
    )
    assert [(s.name, s.lag_seconds, s.behind) for s in statuses] == [
        ("patient_summary", 90.0, True), ("daily_census", 90.0, False),  # 1 min vs 5 min
        ("recent_labs", 90.0, True),
    ]  # fmt: skip
    with pytest.raises(RefreshError, match="--full is not available on Snowflake"):
        refresh(snowflake_target.loaded, full=True, target=snowflake_target)
    assert due_tables(snowflake_target.loaded, snowflake_target) == []  # Snowflake schedules


def test_fakesnow_cannot_run_dynamic_table_refresh_or_history() -> None:
    """Why the Snowflake statements are golden-tested: fakesnow (0.11) parses neither. When
    this test fails, fakesnow learned them: run them through it instead."""
    import fakesnow
    import snowflake.connector

    with fakesnow.patch():
        con = snowflake.connector.connect(database="CLINIPIPE", schema="DERIVED")
        cur = con.cursor()
        cur.execute("CREATE DATABASE IF NOT EXISTS CLINIPIPE")
        cur.execute("CREATE SCHEMA IF NOT EXISTS CLINIPIPE.DERIVED")
        for sql in (SNOWFLAKE_REFRESH, SNOWFLAKE_HISTORY):
            with pytest.raises(snowflake.connector.errors.ProgrammingError):
                cur.execute(sql)
        con.close()
