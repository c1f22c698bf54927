"""`clinipipe bench`: the measurement pieces, and real `--json` output validated against the
schema written in docs/BENCH_JSON.md, with numbers that could be wrong."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from clinipipe.bench.cdc_latency import Transaction, parse_rate, visible_latencies
from clinipipe.bench.histogram import histogram
from clinipipe.bench.loadgen import offered_rate, percentiles, run_open_loop
from clinipipe.bench.schema import validate
from clinipipe.cli.app import run
from tests.helpers import REPO

SCHEMA = json.loads(
    re.search(r"## Schema\s+```json\n(.*?)```", (REPO / "docs/BENCH_JSON.md").read_text(),
              re.S).group(1)  # type: ignore[union-attr]
)  # fmt: skip
ORDER = ("p50", "p95", "p99", "p99_9", "max")


def test_offered_load_rates_and_percentiles() -> None:
    assert offered_rate(users=1000, think_seconds=5.0) == 200.0
    assert offered_rate(qps=50) == 50.0
    with pytest.raises(ValueError):
        offered_rate(qps=10, users=5, think_seconds=1)
    assert parse_rate("1000/min") == pytest.approx(1000 / 60)
    assert parse_rate("20000/s") == 20000.0 and parse_rate("20,000") == 20000.0
    with pytest.raises(ValueError):
        parse_rate("fast")
    cuts = percentiles([float(v) for v in range(1, 1001)])
    assert cuts is not None and [cuts[k] for k in ORDER] == sorted(cuts[k] for k in ORDER)
    assert cuts["p50"] == pytest.approx(500.5) and cuts["p99_9"] == pytest.approx(999.001)
    buckets = histogram([0.45, 0.46, 3.0, 3000.0])
    assert [b.count for b in buckets] == [2, 1, 1] and buckets[-1].cumulative == 4
    assert all(b.low_ms <= v < b.high_ms for b, v in zip(buckets, (0.45, 3.0, 3000.0), strict=True))


def test_open_loop_latency_counts_from_the_due_time() -> None:
    """A server that stalls once for 300 ms: the requests due during the stall wait for it,
    and open-loop latencies show that queueing (a closed loop would hide it)."""
    import threading
    import time

    gate = threading.Lock()

    def request(i: int) -> tuple[str, object]:
        def call() -> None:
            with gate:  # one request at a time: the server
                time.sleep(0.3 if i == 5 else 0.001)

        return "q", call

    result = run_open_loop(request, rate=50, seconds=1.0, workers=8)
    assert result.sent == 50 and result.error_count == 0
    lat = sorted(result.latencies_ms["q"])
    assert lat[-1] >= 250  # the stalled request
    assert sum(1 for v in lat if v > 100) >= 5  # and the ones due behind it
    assert 0 < result.achieved_rate <= 55


def test_visible_latency_joins_commits_with_observed_positions() -> None:
    txs = [Transaction(1, 2, 0.0, 10.0, 100), Transaction(3, 1, 0.0, 11.0, 200),
           Transaction(4, 1, 0.0, 12.0, 300)]  # fmt: skip
    ms, missing = visible_latencies(txs, positions=[(10.5, 150), (11.25, 250)])
    assert ms == [500.0, 500.0, 250.0] and missing == 1
    ms, missing = visible_latencies(txs, first_seen={2: 10.1, 4: 12.5})
    assert ms == pytest.approx([100.0, 100.0, 500.0]) and missing == 1


def test_the_schema_catches_a_wrong_document() -> None:
    assert validate({"schema_version": 1}, SCHEMA)  # missing fields
    good = {"schema_version": 1, "command": "bench cdc", "clinipipe_version": "x",
            "finished_at": "t", "machine": {"cpus": 2, "platform": "p", "python": "3",
                                            "load_average_before": [0.1],
                                            "load_average_after": [0.2]}}  # fmt: skip
    assert validate(good, SCHEMA) == []
    assert validate({**good, "schema_version": 2}, SCHEMA)
    assert validate({**good, "machine": {**good["machine"], "cpus": "2"}}, SCHEMA)


def _sorted(section: dict) -> bool:
    values = [section[k] for k in ORDER]
    return all(v is not None and v >= 0 for v in values) and values == sorted(values)


def test_bench_all_json_is_valid_and_measures(
    hospital_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = hospital_project
    assert run(["-q", "-c", str(spec), "backfill"]) == 0
    assert run(["-q", "-c", str(spec), "cdc", "start", "--until-caught-up"]) == 0  # publishes
    env = {k: v for k, v in os.environ.items() if k != "CLINIPIPE_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "clinipipe", "-c", str(spec), "bench", "all", "--json",
         "--duration", "2", "--qps", "40", "--rate", "100/s"],
        env=env, capture_output=True, text=True, timeout=240, cwd=spec.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert validate(doc, SCHEMA) == []
    assert doc["command"] == "bench all"

    board = doc["dashboard"]
    assert board["errors"] == 0 and board["completed"] == board["requests"] > 0
    assert 0.8 * 40 <= board["achieved_rate"] <= 1.2 * 40
    assert _sorted(board["latency_ms"]) and board["latency_ms"]["count"] == board["completed"]
    assert set(board["dashboards"]) == {"patient_overview", "recent_labs_of_patient",
                                        "census_by_department"}  # fmt: skip
    assert sum(b["count"] for b in board["latency_ms"]["histogram"]) == board["completed"]

    cdc = doc["cdc"]
    assert cdc["applied_all"] and cdc["cdc_process"] == "started"
    assert cdc["rows"] == cdc["rows_deleted_after"] == pytest.approx(200, rel=0.1)
    assert cdc["achieved_rate"] > 0 and _sorted(cdc["target"])
    assert cdc["target"]["count"] == cdc["rows"] and cdc["target"]["p50"] > 0

    backfill = doc["backfill"]
    with duckdb.connect(str(spec.parent / "warehouse.duckdb"), read_only=True) as con:
        loaded = con.execute("SELECT sum(rows_processed) FROM _clinipipe.metering "
                             "WHERE job LIKE 'backfill:%'").fetchone()  # fmt: skip
        metered = con.execute("SELECT job, rows_processed FROM _clinipipe.metering "
                              "WHERE job LIKE 'bench:%' ORDER BY job").fetchall()  # fmt: skip
    assert loaded is not None and backfill["rows"] == loaded[0] > 0  # the same rows, freshly
    assert backfill["rows_per_second"] > 0 and backfill["mb_per_second"] > 0
    assert [job for job, _ in metered] == ["bench:backfill", "bench:cdc", "bench:dashboard"]
    assert all(section["metering"]["recorded"] for section in (board, cdc, backfill))
    assert dict(metered)["bench:cdc"] == cdc["rows"]

    # The same document as Rich tables (what runs without --json).
    from clinipipe.cli.bench import _print
    from clinipipe.cli.output import out

    capsys.readouterr()
    width = out._width  # None: follow COLUMNS / the terminal (setting `width` would fix it)
    out.width = 160  # a terminal's width, not the 80 columns of a pipe
    try:
        _print(doc)
    finally:
        out._width = width
    shown = capsys.readouterr().out
    for title in ("Dashboards: offered 40.0/s", "CDC commit -> visible", "Fresh backfill",
                  "census_by_department", "target (raw)", "Dashboard latency (all)"):  # fmt: skip
        assert title in shown, title
