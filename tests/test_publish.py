"""Interactive tables on DuckDB: publish (writer) and ServingReader (readers in other processes)."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from clinipipe.pipeline import publish as publish_module
from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
from clinipipe.pipeline.publish import (
    PublishError,
    PublishScheduler,
    due_publishes,
    publish,
)
from clinipipe.pipeline.refresh import refresh
from clinipipe.spec import LoadedSpec, load_spec
from clinipipe.targets import open_target
from clinipipe.targets.duckdb import DuckDBTarget
from clinipipe.targets.serving_files import (
    MANIFEST_RE,
    Manifest,
    ServingReader,
    generation_name,
    manifest_name,
    part_name,
    read_current,
    serving_root,
)
from tests.helpers import catch_up, cli, execute

TABLE = "patient_dashboard"


def generation_files(target: DuckDBTarget) -> list[str]:
    """The manifests (generations) in the table's folder."""
    folder = serving_root(target.path) / TABLE
    return sorted(p.name for p in folder.iterdir() if MANIFEST_RE.match(p.name))


def test_publish_copies_the_dynamic_table_sorted_and_records_it(
    hospital_built: LoadedSpec, hospital_target: DuckDBTarget
) -> None:
    [result] = publish(hospital_built, hospital_target, [TABLE])
    assert result.name == TABLE and result.generation == 1 and not result.incremental
    assert result.path == serving_root(hospital_target.path) / TABLE / manifest_name(1)
    assert read_current(result.path.parent) == result.path.name
    assert Manifest.load(result.path).parts == [part_name(1, 0)]  # 300 rows: one partition
    expected = hospital_target.query("SELECT * FROM derived.patient_summary ORDER BY patient_id")
    assert result.rows == len(expected) == 300

    with ServingReader(hospital_target.path) as reader:
        assert reader.query(TABLE, f"SELECT * FROM {TABLE}") == expected
        pid = expected[17][0]
        assert reader.query(TABLE, f"SELECT * FROM {TABLE} WHERE patient_id = ?", [pid]) == [
            expected[17]
        ]
    # Stored sorted: the file's physical order is the cluster order.
    con = duckdb.connect(str(result.path.with_name(part_name(1, 0))), read_only=True)
    try:
        ids = [r[0] for r in con.execute(f"SELECT patient_id FROM serving.{TABLE}").fetchall()]
    finally:
        con.close()
    assert ids == sorted(ids)

    [(gen, rows, source_ts)] = hospital_target.query(
        "SELECT generation, rows, source_data_timestamp FROM _clinipipe.interactive_publishes"
    )
    assert (gen, rows) == (1, 300) and source_ts == result.source_data_timestamp is not None
    [(role, metered)] = hospital_target.query(
        "SELECT warehouse_role, rows_processed FROM _clinipipe.metering "
        f"WHERE job = 'publish:{TABLE}'"
    )
    assert (role, metered) == ("interactive", 300)

    second = publish(hospital_built, hospital_target, [TABLE], full=True)[0]
    assert second.generation == 2 and set(second.removed) == {manifest_name(1), part_name(1, 0)}
    assert generation_files(hospital_target) == [manifest_name(2)]
    with pytest.raises(PublishError, match="no interactive table"):
        publish(hospital_built, hospital_target, ["nope"])


# --- readers in other processes -------------------------------------------------------------


def _reader_main(
    warehouse_path: str, ids: list[int], stop: Any, out: Any, latest: Any, index: int
) -> None:
    """Hammer the interactive table until `stop`; report (observed counts, errors, queries).
    `latest[index]` is the row count of the generation this reader read last."""
    counts: set[int] = set()
    errors: list[str] = []
    queries = 0
    rng = random.Random(os.getpid())
    try:
        with ServingReader(warehouse_path, recheck_seconds=0.02) as reader:
            while not stop.is_set():
                try:
                    # Count and lookups in one statement: all from one generation.
                    pid = rng.choice(ids)
                    [(count, hits, fakes, fake_max)] = reader.query(
                        TABLE,
                        f"SELECT (SELECT count(*) FROM {TABLE}), "
                        f"(SELECT count(*) FROM {TABLE} WHERE patient_id = ?), "
                        f"(SELECT count(*) FROM {TABLE} WHERE patient_id < 0), "
                        f"(SELECT coalesce(max(-patient_id), 0) FROM {TABLE} WHERE patient_id < 0)",
                        [pid],
                    )
                    if hits != 1 or fakes != fake_max:
                        errors.append(f"torn read: {count} {hits} {fakes} {fake_max}")
                    counts.add(int(count))
                    [(single,)] = reader.query(TABLE, f"SELECT count(*) FROM {TABLE}")
                    counts.add(int(single))
                    queries += 2
                    latest[index] = int(single)
                    time.sleep(0.002)  # leave the (niced) publisher some CPU
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    out.put((sorted(counts), errors, queries))


def test_readers_in_other_processes_see_whole_generations_only(
    hospital_built: LoadedSpec, hospital_target: DuckDBTarget
) -> None:
    base = publish(hospital_built, hospital_target, [TABLE])[0].rows
    published = {base}
    ids = [r[0] for r in hospital_target.query("SELECT patient_id FROM derived.patient_summary")]
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    latest = ctx.Array("q", [-1, -1, -1], lock=False)
    readers = [
        ctx.Process(
            target=_reader_main, args=(str(hospital_target.path), ids, stop, out, latest, i)
        )
        for i in range(3)
    ]
    for p in readers:
        p.start()

    def all_readers_saw(rows: int) -> None:
        """Wait (for an event, not a time) until every reader has read a generation of `rows`
        rows; a reader that died or stopped following fails the test."""
        deadline = time.monotonic() + 120  # a safety net against a hang, not a limit
        while list(latest) != [rows] * len(readers):
            assert all(p.is_alive() for p in readers), "a reader died"
            assert time.monotonic() < deadline, f"readers stuck at {list(latest)}, not {rows}"
            time.sleep(0.005)

    try:
        all_readers_saw(base)  # the readers started (spawn imports) and read generation 1
        for k in range(1, 16):
            # Generation k + 1 has base + k(k+1)/2 rows: k more fake patients than the last.
            done = (k - 1) * k // 2
            hospital_target.con.execute(
                "INSERT INTO derived.patient_summary (patient_id) "
                f"SELECT -i FROM range({done + 1}, {done + k + 1}) r(i)"
            )
            # written straight into the dynamic table (no changed keys): publish in full
            result = publish(hospital_built, hospital_target, [TABLE], full=True)[0]
            assert result.rows == base + k * (k + 1) // 2
            published.add(result.rows)
            all_readers_saw(result.rows)
        # (c) readers moved on: one more publish deletes everything they released.
        publish(hospital_built, hospital_target, [TABLE])
        assert len(generation_files(hospital_target)) <= 3
    finally:
        stop.set()
        results = [out.get(timeout=30) for _ in readers]
        for p in readers:
            p.join(timeout=10)
    seen: set[int] = set()
    for counts, errors, queries in results:
        assert errors == []
        assert queries > 50
        assert set(counts) <= published
        seen.update(counts)
    assert seen == published, "readers should follow every publish"
    # Once no reader is left, the next publish leaves only the current generation.
    publish(hospital_built, hospital_target, [TABLE])
    assert generation_files(hospital_target) == [
        read_current(serving_root(hospital_target.path) / TABLE)
    ]


# --- crashes --------------------------------------------------------------------------------


def _crashing_publisher(spec: str) -> None:
    """Publish, but die (SIGKILL) after the new file is written and before CURRENT moves."""

    def die(folder: Path, file_name: str) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    publish_module.write_current = die  # type: ignore[assignment]
    loaded = load_spec(Path(spec))
    with open_target(loaded) as target:
        publish(loaded, target, [TABLE])


def test_a_crashed_publish_leaves_readers_on_the_previous_generation(
    hospital_built: LoadedSpec, hospital_project: Path
) -> None:
    with open_target(hospital_built) as target:
        assert isinstance(target, DuckDBTarget)
        first = publish(hospital_built, target, [TABLE])[0]
        path = target.path
    folder = serving_root(path) / TABLE
    reader = ServingReader(path, recheck_seconds=0)
    try:
        assert reader.query(TABLE, f"SELECT count(*) FROM {TABLE}") == [(first.rows,)]

        # 1. A publisher process killed with SIGKILL before it switched CURRENT.
        proc = mp.get_context("spawn").Process(
            target=_crashing_publisher, args=(str(hospital_project),)
        )
        proc.start()
        proc.join(timeout=60)
        assert proc.exitcode == -signal.SIGKILL
        assert (folder / manifest_name(2)).exists()  # written, never referenced
        assert read_current(folder) == first.path.name
        assert reader.generation(TABLE) == first.path.name
        assert reader.query(TABLE, f"SELECT count(*) FROM {TABLE}") == [(first.rows,)]

        # 2. A torn file (a crash mid-write, as the disk left it).
        (folder / generation_name(3)).write_bytes(b"\0" * 5000)
        assert reader.query(TABLE, f"SELECT count(*) FROM {TABLE}") == [(first.rows,)]

        # The next publish works, skips the abandoned numbers and cleans them up; the old
        # generation stays while this reader holds it.
        with open_target(hospital_built) as target:
            assert isinstance(target, DuckDBTarget)
            target.con.execute("DELETE FROM derived.patient_summary WHERE patient_id % 2 = 0")
            after = publish(hospital_built, target, [TABLE], full=True)[0]
        assert after.generation == 4
        assert set(after.removed) == {manifest_name(2), generation_name(3)}
        assert (folder / first.path.name).exists()
        assert reader.query(TABLE, f"SELECT count(*) FROM {TABLE}") == [(after.rows,)]
        assert after.rows < first.rows
    finally:
        reader.close()
    with open_target(hospital_built) as target:
        assert isinstance(target, DuckDBTarget)
        publish(hospital_built, target, [TABLE])
        assert generation_files(target) == [manifest_name(5)]


# --- scheduling, status, the CLI, dashboards ------------------------------------------------


def test_due_publishes_follow_the_dynamic_tables_and_the_target_lag(
    hospital_built: LoadedSpec, hospital_target: DuckDBTarget, pg_dsn: str
) -> None:
    names = [t.name for t in hospital_built.spec.interactive_tables]
    assert (
        due_publishes(hospital_built, hospital_target) == names
    )  # never published, every source built
    published, failures = PublishScheduler().step(hospital_built, hospital_target)
    assert [p.name for p in published] == names and failures == []
    assert due_publishes(hospital_built, hospital_target) == []

    # A refresh that changed rows makes only its interactive table due; NO_DATA does not.
    hospital_target.close()
    first = "(SELECT min(patient_id) FROM labs)"
    execute(pg_dsn, f"UPDATE labs SET abnormal_flag = 'H' WHERE patient_id = {first}")
    catch_up(hospital_built)
    hospital_target.connect()
    results = {r.name: r.refresh_action for r in refresh(hospital_built, target=hospital_target)}
    assert results["patient_summary"] == "INCREMENTAL" and results["daily_census"] == "FULL"
    assert due_publishes(hospital_built, hospital_target) == ["patient_dashboard", "lab_dashboard",
                                               "census_dashboard"]  # fmt: skip
    PublishScheduler().step(hospital_built, hospital_target)
    results = {r.name: r.refresh_action for r in refresh(hospital_built, "patient_summary",
                                                         target=hospital_target)}  # fmt: skip
    assert results["patient_summary"] == "NO_DATA"
    assert due_publishes(hospital_built, hospital_target) == []


def test_a_sql_interactive_table_is_republished_within_its_target_lag(
    hospital_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = hospital_project.read_text().replace(
        "  - name: census_dashboard\n    from: daily_census\n",
        "  - name: census_dashboard\n    sql: select * from derived.daily_census\n",
    )
    hospital_project.write_text(text)
    loaded = load_spec(hospital_project)
    run_backfill(loaded, BackfillOptions())
    refresh(loaded)
    with open_target(loaded) as target:
        assert "census_dashboard" in due_publishes(loaded, target)
        scheduler = PublishScheduler(retry_seconds=3600)
        scheduler.step(loaded, target)
        assert due_publishes(loaded, target) == []
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
        assert due_publishes(loaded, target, now=later) == ["census_dashboard"]

        # A failing publish is reported (no values), not raised, and not retried at once.
        monkeypatch.setattr(publish_module, "due_publishes", lambda *a, **k: ["census_dashboard"])
        target.con.execute("DROP TABLE derived.daily_census")
        published, failures = scheduler.step(loaded, target)
        assert published == [] and [n for n, _ in failures] == ["census_dashboard"]
        assert "daily_census" in failures[0][1]
        assert scheduler.step(loaded, target) == ([], [])  # waits before retrying


def test_publish_status_and_dashboards_through_the_cli(
    hospital_built: LoadedSpec, hospital_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import subprocess
    import sys

    spec = str(hospital_project)
    code, out, _ = cli(capsys, "-c", spec, "status", "--json")
    served = {s["name"]: s for s in json.loads(out)["interactive_tables"]}
    assert code == 3 and served[TABLE]["behind"] and served[TABLE]["generation"] is None

    code, out, err = cli(capsys, "-c", spec, "publish", "--json")
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)] == [
        t.name for t in hospital_built.spec.interactive_tables
    ]
    code, out, _ = cli(capsys, "-c", spec, "status", "--json")
    served = {s["name"]: s for s in json.loads(out)["interactive_tables"]}
    assert code == 0 and served[TABLE]["generation"] == 1 and not served[TABLE]["behind"]
    assert served[TABLE]["source"] == "derived.patient_summary"
    code, out, _ = cli(capsys, "-c", spec, "status")
    assert code == 0 and "Interactive tables" in out and "lab_dashboard" in out, out

    code, out, _ = cli(capsys, "-c", spec, "dashboard")
    assert code == 0 and "recent_labs_of_patient" in out and "patient_id: bigint" in out

    # Dashboards run in another process while this one holds the hospital_target read-write.
    with open_target(hospital_built) as target:
        pid = target.query("SELECT min(patient_id) FROM raw.labs")[0][0]
        expected_labs = target.query(
            "SELECT test_name, value_numeric FROM raw.labs WHERE patient_id = "
            f"{pid} ORDER BY collected_ts DESC, lab_id DESC LIMIT 10"
        )
        summary = target.query(f"SELECT * FROM derived.patient_summary WHERE patient_id = {pid}")
        day, census = target.query(
            "SELECT census_date, sum(admissions) FROM derived.daily_census "
            "GROUP BY ALL ORDER BY census_date DESC LIMIT 1"
        )[0]

        def board(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "clinipipe", "-c", spec, "dashboard", *args],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip

        labs = board("recent_labs_of_patient", "-p", f"patient_id={pid}", "--json")
        assert labs.returncode == 0, labs.stderr
        result = json.loads(labs.stdout)
        columns = result["columns"]
        got = [(r[columns.index("test_name")], r[columns.index("value_numeric")])
               for r in result["rows"]]  # fmt: skip
        expected = [(name, None if value is None else str(value)) for name, value in expected_labs]
        assert got == expected and 1 <= len(got) <= 10  # JSON carries decimals as text
        overview = board("patient_overview", "-p", f"patient_id={pid}", "--json")
        assert json.loads(overview.stdout)["rows"][0][:2] == [summary[0][0], summary[0][1]]
        wards = board("census_by_department", "-p", f"day={day}", "--json")
        assert sum(r[1] for r in json.loads(wards.stdout)["rows"]) == census

    code, _, err = cli(capsys, "-c", spec, "dashboard", "patient_overview")
    assert code == 2 and "needs --param patient_id=<bigint>" in err
    code, _, err = cli(capsys, "-c", spec, "dashboard", "patient_overview", "-p",
                       "patient_id=MRN-0012345")  # fmt: skip
    assert code == 2 and "not a valid bigint" in err and "0012345" not in err
    code, _, err = cli(capsys, "-c", spec, "dashboard", "nope")
    assert code == 2 and "no dashboard named 'nope'" in err and "patient_overview" in err


def test_dashboards_must_read_one_interactive_table_and_declare_their_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://u@localhost/db")
    from clinipipe.spec import parse_spec
    from clinipipe.spec.errors import SpecError
    from tests.helpers import example_text

    text = example_text(**{
        "sql: select * from serving.patient_dashboard where patient_id = $patient_id":
        "sql: select * from derived.patient_summary where patient_id = $patient",
    })  # fmt: skip
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "clinipipe.yaml")
    problems = [str(p) for p in caught.value.problems]
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "$patient\n" in s + "\n")
    wrong_table = "reads exactly one interactive table as serving.<name> (it reads: none)"
    assert any(p.startswith(f"clinipipe.yaml:{line}:") and wrong_table in p for p in problems)
    assert any("uses $patient, which is not declared" in p for p in problems), problems
    assert any("dashboards[0].params.patient_id" in p and "declared but not used" in p
               for p in problems), problems  # fmt: skip
    assert len(problems) == 3, problems


def test_publish_errors_name_the_cause_and_keep_the_previous_generation(
    hospital_built: LoadedSpec, hospital_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = str(hospital_project)
    assert cli(capsys, "-c", spec, "publish", "lab_dashboard")[0] == 0
    folder = serving_root(hospital_project.parent / "warehouse.duckdb") / "lab_dashboard"
    before = read_current(folder)
    with open_target(hospital_built) as target:
        target.con.execute("DROP TABLE derived.recent_labs")
    code, _, err = cli(capsys, "-c", spec, "publish", "lab_dashboard")
    assert code == 1 and "recent_labs, which is not built yet" in err
    assert "clinipipe refresh recent_labs" in err and read_current(folder) == before

    # A query that fails while the new generation is written: a scrubbed message, exit 1.
    hospital_project.write_text(hospital_project.read_text().replace(
        "  - name: census_dashboard\n    from: daily_census\n",
        "  - name: census_dashboard\n    sql: select cast('MRN-0099' as integer) as census_date\n",
    ).replace("cluster_by: [census_date, department]", "cluster_by: [census_date]"))  # fmt: skip
    code, _, err = cli(capsys, "-c", spec, "publish", "census_dashboard")
    assert code == 1 and "publishing census_dashboard failed" in err
    assert "MRN-0099" not in err
    assert read_current(folder.with_name("census_dashboard")) is None
    code, _, err = cli(capsys, "-c", spec, "publish", "nope")
    assert code == 2 and "no interactive table named 'nope'" in err
