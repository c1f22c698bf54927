"""Partitioned, incremental publishes: equal to a full publish, atomic for readers in other
processes (readers killed, a publisher killed mid-publish), old files collected safely."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from clinipipe.pipeline import publish as publish_module
from clinipipe.pipeline.publish import publish, publish_table
from clinipipe.pipeline.refresh import refresh
from clinipipe.spec import LoadedSpec, load_spec
from clinipipe.targets import open_target
from clinipipe.targets import serving_files as serving_module
from clinipipe.targets.duckdb import DuckDBTarget
from clinipipe.targets.serving_files import (
    Manifest,
    ServingReader,
    current_manifest,
    read_current,
    serving_root,
)
from tests.helpers import catch_up, cli, execute

TABLE = "patient_dashboard"
ALL = f"SELECT * FROM {TABLE} ORDER BY ALL"
DERIVED = "SELECT * FROM derived.patient_summary ORDER BY ALL"


def _table(loaded: LoadedSpec) -> Any:
    return next(t for t in loaded.spec.interactive_tables if t.name == TABLE)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith((".duckdb", ".json"))}


def test_an_incremental_publish_equals_a_full_publish(
    hospital_built: LoadedSpec, hospital_target: DuckDBTarget, pg_dsn: str
) -> None:
    table = _table(hospital_built)
    first = publish_table(hospital_built, hospital_target, table, partitions=4)
    assert not first.incremental and first.partitions == 4 and first.rewritten == (0, 1, 2, 3)
    folder = first.path.parent
    base = current_manifest(folder)
    assert base is not None and base.delta is None and len(base.bounds) == 3

    # Change a few patients at the source (an update, a new lab, a deleted patient's labs),
    # replicate them, refresh incrementally; the refresh prunes the changed keys it consumed,
    # the publish's key floor keeps them for the publish.
    hospital_target.close()
    execute(pg_dsn, "UPDATE labs SET abnormal_flag = 'H' WHERE patient_id IN "
                    "(SELECT patient_id FROM patients ORDER BY patient_id LIMIT 3)")  # fmt: skip
    execute(pg_dsn, "UPDATE labs SET abnormal_flag = NULL WHERE patient_id = "
                    "(SELECT max(patient_id) FROM patients)")  # fmt: skip
    execute(pg_dsn, "DELETE FROM labs WHERE patient_id = (SELECT min(patient_id) + 7 FROM "
                    "patients)")  # fmt: skip
    catch_up(hospital_built)
    hospital_target.connect()
    actions = {r.name: r.refresh_action for r in refresh(hospital_built, target=hospital_target)}
    assert actions["patient_summary"] == "INCREMENTAL"
    [(left,)] = hospital_target.query("SELECT count(*) FROM _clinipipe.changed_keys")
    assert left > 0, "the key floor keeps the keys the next publish needs"

    second = publish_table(hospital_built, hospital_target, table)
    assert second.incremental and second.rewritten == () and second.changed_keys >= 4
    manifest = current_manifest(folder)
    assert manifest is not None and manifest.delta is not None
    assert manifest.parts == base.parts  # every partition file reused by reference
    expected = hospital_target.query(DERIVED)
    with ServingReader(hospital_target.path, recheck_seconds=0) as reader:
        assert reader.query(TABLE, ALL) == expected
        pid = expected[0][0]
        assert reader.query(TABLE, f"SELECT * FROM {TABLE} WHERE patient_id = ?", [pid]) == [
            expected[0]
        ]

        # Compaction: every partition holding a changed key is rewritten, the delta goes.
        third = publish_table(hospital_built, hospital_target, table, compact_rows=0)
        assert third.incremental and third.rewritten and third.changed_keys == 0
        compacted = current_manifest(folder)
        assert compacted is not None and compacted.delta is None
        kept = [i for i in range(4) if i not in third.rewritten]
        assert [compacted.parts[i] for i in kept] == [base.parts[i] for i in kept]
        assert reader.query(TABLE, ALL) == expected

        # A full publish of the same source: the same rows.
        full = publish_table(hospital_built, hospital_target, table, full=True)
        assert not full.incremental
        assert reader.query(TABLE, ALL) == expected

    # A FULL refresh of the dynamic table (a rebuild) makes the next publish full.
    refresh(hospital_built, "patient_summary", full=True, target=hospital_target)
    after_full = publish_table(hospital_built, hospital_target, table)
    assert not after_full.incremental and "rebuilt" in (after_full.why_full or "")


def _recent_tables(target: DuckDBTarget) -> set[str]:
    return {r[0] for r in target.query(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = '_clinipipe' "
        "AND starts_with(table_name, 'dt_recent__')"
    )}  # fmt: skip


def test_publishes_after_real_refreshes_take_the_rows_the_refreshes_handed_over(
    hospital_built: LoadedSpec, hospital_target: DuckDBTarget, pg_dsn: str
) -> None:
    """Source changes replicated, refreshed by the engine and published: each publish takes
    the changed rows the refreshes handed over (reads nothing of the dynamic table) and serves
    exactly the dynamic table, through consecutive deltas, a compaction, patients whose labs
    all go, new and deleted patients; a refresh that no longer keeps them drops them, and the
    next publish reads the table instead, still exactly."""
    import dataclasses

    names = ["patient_dashboard", "lab_dashboard"]
    sources = {"patient_dashboard": "patient_summary", "lab_dashboard": "recent_labs"}
    for result in publish(hospital_built, hospital_target, names):
        assert not result.incremental

    def step(*statements: str, compact: bool = False, handed_over: bool = True) -> None:
        hospital_target.close()
        for statement in statements:
            execute(pg_dsn, statement)
        catch_up(hospital_built)
        hospital_target.connect()
        actions = {
            r.name: r.refresh_action for r in refresh(hospital_built, target=hospital_target)
        }
        assert actions["patient_summary"] == actions["recent_labs"] == "INCREMENTAL"
        for t in hospital_built.spec.interactive_tables:
            if t.name not in names:
                continue
            result = publish_table(hospital_built, hospital_target, t,
                                   compact_rows=0 if compact else None)  # fmt: skip
            assert result.incremental and result.handed_over is handed_over, result
            with ServingReader(hospital_target.path, recheck_seconds=0) as reader:
                served = reader.query(t.name, f"SELECT * FROM {t.name} ORDER BY ALL")
            assert served == hospital_target.query(
                f"SELECT * FROM derived.{sources[t.name]} ORDER BY ALL"
            ), t.name

    some = "(SELECT patient_id FROM patients ORDER BY patient_id LIMIT 3 OFFSET {})"
    step(f"UPDATE labs SET value_numeric = value_numeric + 1, abnormal_flag = 'H' "
         f"WHERE patient_id IN {some.format(0)}")  # fmt: skip
    assert len(_recent_tables(hospital_target)) == 6  # two dynamic tables, three tables each
    step(f"DELETE FROM labs WHERE patient_id IN {some.format(10)}",  # their labs all go
         f"UPDATE labs SET value_numeric = -1 WHERE patient_id IN {some.format(0)}")  # fmt: skip
    step("INSERT INTO patients SELECT max(patient_id) + 1, 'MRN-NEW', 'New', 'Patient', 'F', "
        "date '1970-01-01', NULL, '1 Main St', 'Springfield', 'MA', '01101', NULL, NULL, NULL, "
        "NULL, NULL, NULL, now() FROM patients",
        "INSERT INTO labs SELECT max(lab_id) + 1, 1, (SELECT max(patient_id) FROM patients), "
        "'2345-7', 'Glucose', 99, 'mg/dL', 70, 110, NULL, now() FROM labs",
        f"DELETE FROM patients WHERE patient_id IN {some.format(20)}",
         compact=True)  # fmt: skip
    step(f"UPDATE labs SET abnormal_flag = NULL WHERE patient_id IN {some.format(30)}")

    # A refresh for a spec in which no interactive table serves them drops them ...
    plain = dataclasses.replace(
        hospital_built, spec=hospital_built.spec.model_copy(update={"interactive_tables": []})
    )
    hospital_target.close()
    execute(pg_dsn, f"UPDATE labs SET value_numeric = 7 WHERE patient_id IN {some.format(40)}")
    catch_up(hospital_built)
    hospital_target.connect()
    refresh(plain, target=hospital_target)
    assert not _recent_tables(hospital_target)
    # ... and the next publish, needing keys no refresh handed over, reads the table
    step(f"UPDATE labs SET value_numeric = 8 WHERE patient_id IN {some.format(50)}",
         handed_over=False)  # fmt: skip
    step(f"UPDATE labs SET value_numeric = 9 WHERE patient_id IN {some.format(60)}")

    # A dynamic table that leaves the spec leaves none of its refresh state behind; the
    # others keep theirs (recent rows, count summaries).
    def state() -> set[str]:
        return {r[0] for r in hospital_target.query(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = '_clinipipe' AND "
            "(starts_with(table_name, 'dt_recent__') OR starts_with(table_name, 'dt_counts__'))"
        )}  # fmt: skip

    before = state()
    assert any("recent_labs" in t for t in before) and any("patient_summary" in t for t in before)
    without = dataclasses.replace(hospital_built, spec=hospital_built.spec.model_copy(update={
        "dynamic_tables": [d for d in hospital_built.spec.dynamic_tables
                           if d.name != "recent_labs"],
        "interactive_tables": [t for t in hospital_built.spec.interactive_tables
                               if t.from_ != "recent_labs"],
    }))  # fmt: skip
    refresh(without, target=hospital_target)
    assert state() == {t for t in before if "recent_labs" not in t}


# --- readers in other processes -------------------------------------------------------------


def _reader_main(warehouse_path: str, total: int, stop: Any, out: Any, latest: Any, i: int) -> None:
    """Query until `stop`; every read must show sum(abnormal_labs) == `total` (each publish
    moves one unit between two patients of different partitions and adds a fake patient of
    value 0, so any mix of two generations' files breaks the sum or the row count)."""
    errors: list[str] = []
    counts: set[int] = set()
    queries = 0
    rng = random.Random(os.getpid())
    try:
        with ServingReader(warehouse_path, recheck_seconds=0.01) as reader:
            while not stop.is_set():
                try:
                    pid = rng.randint(1, 300)
                    [(count, total_now, dupes, hit)] = reader.query(
                        TABLE,
                        f"SELECT count(*), sum(abnormal_labs), count(*) - count(DISTINCT "
                        f"patient_id), (SELECT count(*) FROM {TABLE} WHERE patient_id = ?) "
                        f"FROM {TABLE}",
                        [pid],
                    )
                    if total_now != total or dupes != 0 or hit > 1:
                        errors.append(f"torn read: {count} {total_now} {dupes} {hit}")
                    counts.add(int(count))
                    latest[i] = int(count)
                    queries += 1
                    time.sleep(0.002)  # leave the (niced) publisher some CPU
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    out.put((sorted(counts), errors, queries))


def _simulate_refresh(target: DuckDBTarget, k: int, rng: random.Random, ids: list[int]) -> None:
    """What an incremental refresh of patient_summary does, in miniature: change the rows of
    a few keys, move the table's high-water mark one on and record those keys as changed
    there."""
    a, b = rng.sample(ids, 2)
    [(lsn,)] = target.query(
        "SELECT high_water_lsn + 1 FROM _clinipipe.dynamic_table_state "
        "WHERE name = 'patient_summary'"
    )
    target.execute_atomically([
        f"UPDATE _clinipipe.dynamic_table_state SET high_water_lsn = {lsn} "
        "WHERE name = 'patient_summary'",
        f"UPDATE derived.patient_summary SET abnormal_labs = abnormal_labs + 1 "
        f"WHERE patient_id = {a}",
        f"UPDATE derived.patient_summary SET abnormal_labs = abnormal_labs - 1 "
        f"WHERE patient_id = {b}",
        f"INSERT INTO derived.patient_summary (patient_id, encounters, abnormal_labs) "
        f"VALUES ({-k}, 0, 0)",
        "INSERT INTO _clinipipe.changed_keys (table_name, key_column, key_value, lsn) "
        f"VALUES ('labs', 'patient_id', '{a}', {lsn}), ('labs', 'patient_id', '{b}', {lsn}), "
        f"('patients', 'patient_id', '{-k}', {lsn})",
    ])  # fmt: skip


def test_readers_see_whole_generations_while_partitions_are_republished_and_killed(
    hospital_built: LoadedSpec, hospital_target: DuckDBTarget
) -> None:
    table = _table(hospital_built)
    base = publish_table(hospital_built, hospital_target, table, partitions=4)
    folder = base.path.parent
    [(total,)] = hospital_target.query("SELECT sum(abnormal_labs) FROM derived.patient_summary")
    ids = [r[0] for r in hospital_target.query("SELECT patient_id FROM derived.patient_summary")]
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    latest = ctx.Array("q", [-1, -1, -1], lock=False)
    readers = [
        ctx.Process(
            target=_reader_main, args=(str(hospital_target.path), total, stop, out, latest, i)
        )
        for i in range(3)
    ]
    for p in readers:
        p.start()
    published = {base.rows}

    def live_readers_saw(rows: int, live: list[int]) -> None:
        deadline = time.monotonic() + 120  # a safety net against a hang
        while any(latest[i] != rows for i in live):
            assert all(readers[i].is_alive() for i in live), "a reader died"
            assert time.monotonic() < deadline, f"readers stuck at {list(latest)}, not {rows}"
            time.sleep(0.005)

    rng = random.Random(3)
    live = [0, 1, 2]
    try:
        live_readers_saw(base.rows, live)
        kinds = set()
        for k in range(1, 10):
            _simulate_refresh(hospital_target, k, rng, ids)
            # every fourth publish compacts partitions (rewrites them), the others add a delta
            result = publish_table(
                hospital_built, hospital_target, table, compact_rows=0 if k % 4 == 0 else None
            )
            assert result.incremental and result.rows == base.rows + k
            kinds.add(bool(result.rewritten))
            published.add(result.rows)
            live_readers_saw(result.rows, live)
            if k == 4:  # a reader killed while it holds a generation: its locks go with it
                os.kill(readers[2].pid, signal.SIGKILL)
                readers[2].join(timeout=30)
                live = [0, 1]
        assert kinds == {True, False}
    finally:
        stop.set()
        results = [out.get(timeout=60) for _ in live]
        for p in readers:
            p.join(timeout=10)
    for counts, errors, queries in results:
        assert errors == []
        assert queries > 20
        assert set(counts) <= published
    # No reader left: the next publish keeps exactly the current generation's files.
    last = publish_table(hospital_built, hospital_target, table)
    manifest = Manifest.load(last.path)
    assert _files(folder) == {last.path.name, *manifest.files}


# --- a publisher killed mid-publish ---------------------------------------------------------


def _killed_publisher(spec: str, where: str) -> None:
    """Publish incrementally, but die (SIGKILL) at `where`: after the first new data file
    ("data") or after every data file, before the manifest ("manifest")."""
    if where == "data":
        write = serving_module._write_file

        def die_after(*args: Any, **kwargs: Any) -> None:
            write(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        serving_module._write_file = die_after  # type: ignore[assignment]
    else:

        def die(*args: Any, **kwargs: Any) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        publish_module.write_manifest = die  # type: ignore[assignment]
    loaded = load_spec(Path(spec))
    with open_target(loaded) as target:
        table = next(t for t in loaded.spec.interactive_tables if t.name == TABLE)
        publish_table(loaded, target, table, compact_rows=0)


def test_a_publisher_killed_mid_publish_leaves_the_previous_generation(
    hospital_built: LoadedSpec, hospital_project: Path
) -> None:
    table = _table(hospital_built)
    rng = random.Random(5)
    with open_target(hospital_built) as target:
        assert isinstance(target, DuckDBTarget)
        publish_table(hospital_built, target, table, partitions=4)
        ids = [r[0] for r in target.query("SELECT patient_id FROM derived.patient_summary")]
        _simulate_refresh(target, 1, rng, ids)
        before = publish_table(hospital_built, target, table)  # incremental: parts + a delta
        assert before.incremental
        _simulate_refresh(target, 2, rng, ids)
        path = target.path
    folder = serving_root(path) / TABLE
    reader = ServingReader(path, recheck_seconds=0)
    try:
        expected_before = reader.query(TABLE, ALL)
        assert len(expected_before) == before.rows
        for where in ("data", "manifest"):
            proc = mp.get_context("spawn").Process(
                target=_killed_publisher, args=(str(hospital_project), where)
            )
            proc.start()
            proc.join(timeout=120)
            assert proc.exitcode == -signal.SIGKILL
            assert read_current(folder) == before.path.name
            assert reader.generation(TABLE) == before.path.name
            assert reader.query(TABLE, ALL) == expected_before
        leftovers = _files(folder) - {before.path.name, *Manifest.load(before.path).files}
        assert leftovers, "the killed publishers wrote files nobody references"

        # The next publish works (incrementally: nothing was lost), cleans the leftovers up
        # and serves exactly the dynamic table. A reader that opens the table while that
        # publish has written its data files but not switched CURRENT gets the previous
        # generation, whole (none of the new files).
        seen_midway: list[list[tuple[Any, ...]]] = []
        real_write_manifest = publish_module.write_manifest

        def open_a_reader_first(folder: Path, manifest: Manifest) -> Path:
            with ServingReader(path, recheck_seconds=0) as fresh:
                seen_midway.append(fresh.query(TABLE, ALL))
            return real_write_manifest(folder, manifest)

        with open_target(hospital_built) as target, pytest.MonkeyPatch.context() as patch:
            assert isinstance(target, DuckDBTarget)
            patch.setattr(publish_module, "write_manifest", open_a_reader_first)
            after = publish_table(hospital_built, target, table)
            expected = target.query(DERIVED)
        assert seen_midway == [expected_before]
        assert after.incremental and after.generation > before.generation + 1
        assert leftovers <= set(after.removed)
        assert reader.query(TABLE, ALL) == expected
        assert len(expected) == before.rows + 1
    finally:
        reader.close()


def test_publish_through_publish_and_the_scheduler_still_serves_every_table(
    hospital_built: LoadedSpec, hospital_target: DuckDBTarget
) -> None:
    results = publish(hospital_built, hospital_target)
    assert {r.name for r in results} == {t.name for t in hospital_built.spec.interactive_tables}
    with ServingReader(hospital_target.path) as reader:
        for t in hospital_built.spec.interactive_tables:
            source = f"derived.{t.from_}"
            [(rows,)] = hospital_target.query(f"SELECT count(*) FROM {source}")
            assert reader.query(t.name, f"SELECT count(*) FROM {t.name}") == [(rows,)]
    census = next(
        r for r in publish(hospital_built, hospital_target) if r.name == "census_dashboard"
    )
    assert not census.incremental  # daily_census is refreshed in full: published in full
    assert read_current(serving_root(hospital_target.path) / "census_dashboard") == census.path.name


def test_partitioned_generations_of_an_encrypted_warehouse_are_encrypted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clinipipe.targets.serving_files import (
        ServingError,
        write_current,
        write_manifest,
        write_partitioned,
    )
    from tests.test_encryption import KEY, NAME, PLANTED, make_project, raw_bytes

    spec = make_project(tmp_path, "postgresql://clinipipe@127.0.0.1:1/none", monkeypatch, True)
    folder = tmp_path / "warehouse.serving" / "patients"
    folder.mkdir(parents=True)
    source = "SELECT * FROM raw.patients"
    with DuckDBTarget(load_spec(spec)) as target:
        target.execute_atomically([
            "CREATE SCHEMA raw",
            "CREATE TABLE raw.patients AS SELECT i AS id, 'p' || i AS name FROM range(900) r(i)",
        ])  # fmt: skip
        first = write_partitioned(target, folder, 1, "patients", source, ["id"], source={},
                                  partitions=3)  # fmt: skip
        assert len(first.manifest.parts) == 3
        write_manifest(folder, first.manifest)
        write_current(folder, "000000000001.json")
        target.execute_atomically([f"UPDATE raw.patients SET name = '{NAME}' WHERE id = 450"])
        second = write_partitioned(target, folder, 2, "patients", source, ["id"], source={},
                                   previous=first.manifest,
                                   changed_keys_sql="SELECT 450 AS k")  # fmt: skip
        assert second.incremental and second.manifest.delta is not None
        write_manifest(folder, second.manifest)
        write_current(folder, "000000000002.json")
    assert [p for p in PLANTED if p in raw_bytes(folder, "0*")] == []
    sql = "SELECT name FROM patients WHERE id = 450"
    with ServingReader(tmp_path / "warehouse.duckdb", encryption_key=KEY) as reader:
        assert reader.query("patients", sql) == [(NAME,)]
        assert reader.query("patients", "SELECT count(*) FROM patients") == [(900,)]
    with ServingReader(tmp_path / "warehouse.duckdb") as reader, pytest.raises(ServingError):
        reader.query("patients", sql)
    with ServingReader(tmp_path / "warehouse.duckdb", encryption_key="wrong") as reader:
        with pytest.raises(ServingError, match="encrypted") as raised:
            reader.query("patients", sql)
        assert "wrong" not in str(raised.value).replace("Wrong", "")


# --- publish --full, key floors -------------------------------------------------------------


def test_publish_full_rewrites_every_partition_and_serves_the_same_rows(
    hospital_built: LoadedSpec, hospital_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = str(hospital_project)
    table = _table(hospital_built)
    with open_target(hospital_built) as target:
        assert isinstance(target, DuckDBTarget)
        publish_table(hospital_built, target, table, partitions=4)
        ids = [r[0] for r in target.query("SELECT patient_id FROM derived.patient_summary")]
        _simulate_refresh(target, 1, random.Random(9), ids)
        path = target.path
    folder = serving_root(path) / TABLE

    code, out, err = cli(capsys, "-c", spec, "publish", TABLE, "--json")
    assert code == 0, err
    [incremental] = json.loads(out)
    assert incremental["incremental"] and incremental["changed_keys"] >= 3
    before = current_manifest(folder)
    assert before is not None and before.delta is not None and len(before.parts) == 4

    code, out, err = cli(capsys, "-c", spec, "publish", "--full", TABLE, "--json")
    assert code == 0, err
    [full] = json.loads(out)
    assert not full["incremental"] and full["changed_keys"] == 0
    assert full["rewritten_partitions"] == list(range(full["partitions"]))
    after = current_manifest(folder)
    assert after is not None and after.delta is None
    assert not set(after.parts) & set(before.parts)  # every partition file is new
    with open_target(hospital_built, read_only=True) as target:
        expected = target.query(DERIVED)
    with ServingReader(path, recheck_seconds=0) as reader:
        assert reader.query(TABLE, ALL) == expected

    code, out, err = cli(capsys, "-c", spec, "publish", "--full")
    assert code == 0, err
    assert "full" in out and "incremental" not in out and "census_dashboard" in out
    code, _, err = cli(capsys, "-c", spec, "publish", "--full", "nope")
    assert code == 2 and "no interactive table named 'nope'" in err
    code, out, _ = cli(capsys, "publish", "--help")
    assert code == 0 and "--full" in out


def _floor(target: DuckDBTarget) -> int:
    [(lsn,)] = target.query(f"SELECT lsn FROM _clinipipe.serving_key_floors WHERE name = '{TABLE}'")
    return int(lsn)


def test_a_failed_publish_keeps_its_key_floor_and_pruning_keeps_the_keys_it_needs(
    hospital_built: LoadedSpec, hospital_target: DuckDBTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(hospital_built)
    base = publish_table(hospital_built, hospital_target, table, partitions=4)
    floor = _floor(hospital_target)
    ids = [r[0] for r in hospital_target.query("SELECT patient_id FROM derived.patient_summary")]
    rng = random.Random(4)
    _simulate_refresh(hospital_target, 1, rng, ids)

    def fail(*args: Any, **kwargs: Any) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(publish_module, "write_manifest", fail)
    for k in range(2):  # publishing keeps failing
        with pytest.raises(OSError):
            publish_table(hospital_built, hospital_target, table)
        _simulate_refresh(hospital_target, 2 + k, rng, ids)
    monkeypatch.undo()
    assert read_current(base.path.parent) == base.path.name
    assert _floor(hospital_target) == floor, "a failed publish moved the key floor"

    # Every refresh prunes the changed keys its tables reflect: those a publish still needs
    # (lsn >= the floor) stay; older ones go.
    key = "('labs', 'patient_id', '1', 0)"
    hospital_target.execute_atomically([f"INSERT INTO _clinipipe.changed_keys (table_name, "
                                  f"key_column, key_value, lsn) VALUES {key}"])  # fmt: skip
    count = "SELECT count(*) FROM _clinipipe.changed_keys WHERE lsn {}"
    [(needed,)] = hospital_target.query(count.format(f">= {floor}"))
    assert needed >= 6
    hospital_target.prune_changed_keys(["patient_summary"])
    assert hospital_target.query(count.format(f">= {floor}")) == [(needed,)]
    assert hospital_target.query(count.format(f"< {floor}")) == [(0,)]

    after = publish_table(hospital_built, hospital_target, table)
    assert after.incremental and after.changed_keys >= 6
    with ServingReader(hospital_target.path, recheck_seconds=0) as reader:
        assert reader.query(TABLE, ALL) == hospital_target.query(DERIVED)
    assert _floor(hospital_target) > floor  # a publish that switched moves it


def test_a_table_whose_publishes_keep_failing_gives_its_key_floor_up(
    hospital_built: LoadedSpec, hospital_target: DuckDBTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clinipipe.pipeline.publish import PublishScheduler

    table = _table(hospital_built)
    publish_table(hospital_built, hospital_target, table, partitions=4)
    floor = _floor(hospital_target)
    ids = [r[0] for r in hospital_target.query("SELECT patient_id FROM derived.patient_summary")]
    _simulate_refresh(hospital_target, 1, random.Random(6), ids)

    def fail(*args: Any, **kwargs: Any) -> Path:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(publish_module, "write_manifest", fail)
        patch.setattr(publish_module, "due_publishes", lambda *a, **k: [TABLE])
        # Failing for less than release_floor_after: the floor stays.
        patient = PublishScheduler(retry_seconds=0, release_floor_after=3600)
        assert [n for n, _ in patient.step(hospital_built, hospital_target)[1]] == [TABLE]
        assert _floor(hospital_target) == floor
        # Failing for longer: given up, so pruning no longer keeps keys for it.
        impatient = PublishScheduler(retry_seconds=0, release_floor_after=0)
        assert [n for n, _ in impatient.step(hospital_built, hospital_target)[1]] == [TABLE]
        assert hospital_target.query(
            f"SELECT count(*) FROM _clinipipe.serving_key_floors WHERE name = '{TABLE}'"
        ) == [(0,)]
    hospital_target.prune_changed_keys(["patient_summary"])
    assert hospital_target.query("SELECT count(*) FROM _clinipipe.changed_keys") == [(0,)]

    after = publish_table(hospital_built, hospital_target, table)  # works again: in full
    assert not after.incremental and "not kept" in (after.why_full or "")
    with ServingReader(hospital_target.path, recheck_seconds=0) as reader:
        assert reader.query(TABLE, ALL) == hospital_target.query(DERIVED)
    assert _floor(hospital_target) > floor


@pytest.mark.parametrize("how", ["by position", "by join", "a column named rowid"])
def test_the_changed_rows_are_read_whatever_their_place_in_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """An incremental publish equals the table, whether the changed keys' rows were appended
    (as a refresh does), updated in place (early in the table), deleted, or have a NULL key."""
    from clinipipe.targets.serving_files import (
        manifest_name,
        write_current,
        write_manifest,
        write_partitioned,
    )
    from tests.test_encryption import make_project

    spec = make_project(tmp_path, "postgresql://clinipipe@127.0.0.1:1/none", monkeypatch, False)
    name = "t"
    folder = tmp_path / "warehouse.serving" / name
    folder.mkdir(parents=True)
    other = "rowid" if how == "a column named rowid" else "w"
    source_table = None if how == "by join" else '"raw"."t"'
    source = "SELECT * FROM raw.t"
    with DuckDBTarget(load_spec(spec)) as target:
        target.execute_atomically([
            "CREATE SCHEMA raw",
            f"CREATE TABLE raw.t AS SELECT CASE WHEN i = 0 THEN NULL ELSE i END AS id, "
            f"'v' || i AS v, i AS {other} FROM range(3000) r(i), range(2) c(j)",
        ])  # fmt: skip
        first = write_partitioned(target, folder, 1, name, source, ["id"], source={},
                                  partitions=3, source_table=source_table)  # fmt: skip
        write_manifest(folder, first.manifest)
        target.execute_atomically([
            # as a refresh: the rows of keys 5 and 2500 deleted, their new rows appended
            "CREATE TEMP TABLE moved AS SELECT id, v || '!' AS v, "
            f"{other} FROM raw.t WHERE id IN (5, 2500)",
            "DELETE FROM raw.t WHERE id IN (5, 2500)",
            "INSERT INTO raw.t SELECT * FROM temp.moved",
            # in place, early in the table; a key deleted; the NULL key changed
            "UPDATE raw.t SET v = 'changed' WHERE id = 1",
            "DELETE FROM raw.t WHERE id = 1700",
            "UPDATE raw.t SET v = 'null key' WHERE id IS NULL",
        ])  # fmt: skip
        changed = "SELECT * FROM (VALUES (5), (2500), (1), (1700), (NULL)) AS c(k)"
        second = write_partitioned(target, folder, 2, name, source, ["id"], source={},
                                   previous=first.manifest, changed_keys_sql=changed,
                                   source_table=source_table)  # fmt: skip
        assert second.incremental and second.manifest.delta_keys == 5
        assert second.delta_rows == 8 and second.manifest.parts == first.manifest.parts
        write_manifest(folder, second.manifest)
        write_current(folder, manifest_name(2))
        expected = target.query("SELECT * FROM raw.t ORDER BY ALL")
    with ServingReader(tmp_path / "warehouse.duckdb", recheck_seconds=0) as reader:
        assert reader.query(name, f"SELECT * FROM {name} ORDER BY ALL") == expected
        assert len(expected) == 5998
