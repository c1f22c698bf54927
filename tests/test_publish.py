"""Interactive tables on DuckDB: publish (writer) and ServingReader (readers in other processes)."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from clinipipe.pipeline import publish as publish_module
from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
from clinipipe.pipeline.publish import (
    GENERATION_RE,
    PublishError,
    generation_name,
    publish,
    read_current,
    serving_root,
)
from clinipipe.pipeline.refresh import refresh
from clinipipe.serving import ServingReader
from clinipipe.spec import LoadedSpec, load_spec
from clinipipe.targets import open_target
from clinipipe.targets.duckdb import DuckDBTarget

TABLE = "patient_dashboard"


@pytest.fixture
def built(hospital_project: Path) -> LoadedSpec:
    """The hospital project, backfilled and its dynamic tables refreshed."""
    loaded = load_spec(hospital_project)
    run_backfill(loaded, BackfillOptions())
    refresh(loaded)
    return loaded


@pytest.fixture
def warehouse(built: LoadedSpec) -> Iterator[DuckDBTarget]:
    with open_target(built) as target:
        assert isinstance(target, DuckDBTarget)
        yield target


def generation_files(target: DuckDBTarget) -> list[str]:
    folder = serving_root(target.path) / TABLE
    return sorted(p.name for p in folder.iterdir() if GENERATION_RE.match(p.name))


def test_publish_copies_the_dynamic_table_sorted_and_records_it(
    built: LoadedSpec, warehouse: DuckDBTarget
) -> None:
    [result] = publish(built, warehouse)
    assert result.name == TABLE and result.generation == 1
    assert result.path == serving_root(warehouse.path) / TABLE / generation_name(1)
    assert read_current(result.path.parent) == result.path.name
    expected = warehouse.query("SELECT * FROM derived.patient_summary ORDER BY patient_id")
    assert result.rows == len(expected) == 300

    with ServingReader(warehouse.path) as reader:
        assert reader.query(TABLE, f"SELECT * FROM {TABLE}") == expected
        pid = expected[17][0]
        assert reader.query(TABLE, f"SELECT * FROM {TABLE} WHERE patient_id = ?", [pid]) == [
            expected[17]
        ]
    # Stored sorted: the file's physical order is the cluster order.
    con = duckdb.connect(str(result.path), read_only=True)
    try:
        ids = [r[0] for r in con.execute(f"SELECT patient_id FROM {TABLE}").fetchall()]
    finally:
        con.close()
    assert ids == sorted(ids)

    [(gen, rows, source_ts)] = warehouse.query(
        "SELECT generation, rows, source_data_timestamp FROM _clinipipe.interactive_publishes"
    )
    assert (gen, rows) == (1, 300) and source_ts == result.source_data_timestamp is not None
    [(role, metered)] = warehouse.query(
        "SELECT warehouse_role, rows_processed FROM _clinipipe.metering "
        f"WHERE job = 'publish:{TABLE}'"
    )
    assert (role, metered) == ("interactive", 300)

    second = publish(built, warehouse, [TABLE])[0]
    assert second.generation == 2 and second.removed == (generation_name(1),)
    assert generation_files(warehouse) == [generation_name(2)]
    with pytest.raises(PublishError, match="no interactive table"):
        publish(built, warehouse, ["nope"])


# --- readers in other processes -------------------------------------------------------------


def _reader_main(warehouse: str, ids: list[int], stop: Any, out: Any) -> None:
    """Hammer the interactive table until `stop`; report (observed counts, errors, queries)."""
    counts: set[int] = set()
    errors: list[str] = []
    queries = 0
    rng = random.Random(os.getpid())
    try:
        with ServingReader(warehouse, recheck_seconds=0.02) as reader:
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
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    out.put((sorted(counts), errors, queries))


def test_readers_in_other_processes_see_whole_generations_only(
    built: LoadedSpec, warehouse: DuckDBTarget
) -> None:
    base = publish(built, warehouse)[0].rows
    published = {base}
    ids = [r[0] for r in warehouse.query("SELECT patient_id FROM derived.patient_summary")]
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    readers = [
        ctx.Process(target=_reader_main, args=(str(warehouse.path), ids, stop, out))
        for _ in range(3)
    ]
    for p in readers:
        p.start()
    try:
        time.sleep(1.5)  # let the readers start (spawn imports) and read generation 1
        for k in range(1, 16):
            # Generation k + 1 has base + k(k+1)/2 rows: k more fake patients than the last.
            done = (k - 1) * k // 2
            warehouse.con.execute(
                "INSERT INTO derived.patient_summary (patient_id) "
                f"SELECT -i FROM range({done + 1}, {done + k + 1}) r(i)"
            )
            result = publish(built, warehouse)[0]
            assert result.rows == base + k * (k + 1) // 2
            published.add(result.rows)
            time.sleep(0.1)
        time.sleep(0.3)
        # (c) readers moved on: one more publish deletes everything they released.
        publish(built, warehouse)
        assert len(generation_files(warehouse)) <= 3
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
    assert len(seen) >= 5, "readers should follow the publishes"
    assert max(seen) == max(published)
    # Once no reader is left, the next publish leaves only the current generation.
    publish(built, warehouse)
    assert generation_files(warehouse) == [read_current(serving_root(warehouse.path) / TABLE)]


# --- crashes --------------------------------------------------------------------------------


def _crashing_publisher(spec: str) -> None:
    """Publish, but die (SIGKILL) after the new file is written and before CURRENT moves."""

    def die(folder: Path, file_name: str) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    publish_module.write_current = die  # type: ignore[assignment]
    loaded = load_spec(Path(spec))
    with open_target(loaded) as target:
        publish(loaded, target)


def test_a_crashed_publish_leaves_readers_on_the_previous_generation(
    built: LoadedSpec, hospital_project: Path
) -> None:
    with open_target(built) as target:
        assert isinstance(target, DuckDBTarget)
        first = publish(built, target)[0]
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
        assert (folder / generation_name(2)).exists()  # written, never referenced
        assert read_current(folder) == first.path.name
        assert reader.generation(TABLE) == first.path.name
        assert reader.query(TABLE, f"SELECT count(*) FROM {TABLE}") == [(first.rows,)]

        # 2. A torn file (a crash mid-write, as the disk left it).
        (folder / generation_name(3)).write_bytes(b"\0" * 5000)
        assert reader.query(TABLE, f"SELECT count(*) FROM {TABLE}") == [(first.rows,)]

        # The next publish works, skips the abandoned numbers and cleans them up; the old
        # generation stays while this reader holds it.
        with open_target(built) as target:
            assert isinstance(target, DuckDBTarget)
            target.con.execute("DELETE FROM derived.patient_summary WHERE patient_id % 2 = 0")
            after = publish(built, target)[0]
        assert after.generation == 4
        assert set(after.removed) == {generation_name(2), generation_name(3)}
        assert (folder / first.path.name).exists()
        assert reader.query(TABLE, f"SELECT count(*) FROM {TABLE}") == [(after.rows,)]
        assert after.rows < first.rows
    finally:
        reader.close()
    with open_target(built) as target:
        assert isinstance(target, DuckDBTarget)
        publish(built, target)
        assert generation_files(target) == [generation_name(5)]
