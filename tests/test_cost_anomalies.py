"""Cost anomalies: the detector on spend series, the budget forecast, and a runaway backfill
raising an alert at a loopback webhook (tests.test_alerts' receiver) within seconds."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from clinipipe.cost.anomalies import (
    CostWatch,
    RunningJob,
    SpendSeries,
    find_anomalies,
    runaway_anomalies,
    sender_for,
    series_anomalies,
)
from clinipipe.cost.detect import DAILY, HOURLY, detect
from clinipipe.cost.metering import Metered
from clinipipe.spec import load_spec
from clinipipe.spec.model import Spec
from clinipipe.targets.duckdb import DuckDBTarget
from tests.helpers import cli, deploy_target_templates, example_text, write_spec
from tests.test_alerts import Hook, hook  # noqa: F401 - the loopback webhook fixture

UTC = dt.timezone.utc
BUDGET = "monthly_budget_credits: 1000"
CDC = "CLINIPIPE_CDC_WH"


def daily_spend(n: int, seed: int = 7) -> np.ndarray:
    """n days of ~10 credits with a weekly pattern (weekends at half) and 8 % noise."""
    rng = np.random.default_rng(seed)
    weekday = np.arange(n) % 7
    return 10.0 * np.where(weekday >= 5, 0.5, 1.0) * np.exp(rng.normal(0, 0.08, n))


def test_a_spike_is_flagged_on_its_day_and_a_quiet_series_is_not() -> None:
    x = daily_spend(60)
    assert detect(x, DAILY) == []
    x[45] *= 3
    flags = detect(x, DAILY)
    assert [(f.index, f.kind) for f in flags] == [(45, "spike")]
    assert flags[0].expected == pytest.approx(10.0, rel=0.2)


def test_a_weekend_at_half_is_not_a_drop_and_a_weekend_spike_is_seen() -> None:
    x = daily_spend(60)
    x[47] *= 2.5  # day 47 is a weekend day (index % 7 == 5): 2.5 x 5 credits = 12.5
    assert 47 % 7 == 5
    assert [(f.index, f.kind) for f in detect(x, DAILY)] == [(47, "spike")]


def test_a_level_shift_is_flagged_within_its_points() -> None:
    x = daily_spend(70)
    x[50:] *= 1.8
    flags = detect(x, DAILY)
    assert flags and 50 <= flags[0].index <= 50 + DAILY.shift_points
    assert "level_shift" in {f.kind for f in flags}
    assert all(f.index >= 50 for f in flags)


def test_an_hourly_spike_is_flagged_in_its_hour() -> None:
    rng = np.random.default_rng(3)
    hours = np.arange(24 * 20)
    profile = 1 + 0.6 * np.sin(np.pi * np.clip((hours % 24 - 7) / 12, 0, 1))
    x = 2.0 * profile * np.exp(rng.normal(0, 0.08, len(hours)))
    x[400] *= 4
    assert [(f.index, f.kind) for f in detect(x, HOURLY, hourly=True)] == [(400, "spike")]


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Spec:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    return load_spec(write_spec(tmp_path, example_text())).spec


def test_todays_spike_is_open_and_an_old_one_is_not(spec: Spec) -> None:
    now = dt.datetime(2025, 12, 4, 18, tzinfo=UTC).timestamp()
    edges = (now // 86400 + 1) * 86400 - 86400 * np.arange(60, -1, -1)
    x = daily_spend(60)
    x[30] *= 4
    x[59] *= 4  # today
    found = series_anomalies(SpendSeries(CDC, "incremental", "day", edges, x), 5.0, now)
    assert [(a.kind, a.open) for a in found] == [("spike", False), ("spike", True)]
    assert found[1].at.startswith("2025-12-04") and CDC in found[1].message


def test_the_month_forecast_over_the_budget_is_an_open_anomaly(spec: Spec) -> None:
    # 40 credits a day on the CDC warehouse since the 1st: a 30-day month forecasts ~1,200
    now = dt.datetime(2025, 11, 20, 12, tzinfo=UTC)
    rows = []
    for d in range(19):
        day = dt.datetime(2025, 11, 1 + d, tzinfo=UTC)
        rows.append((f"j{d}", "cdc:batch", CDC, "incremental", "XSMALL", day,
                     day + dt.timedelta(hours=24) - dt.timedelta(seconds=60), 1, None))  # fmt: skip
    metered = Metered.from_rows(rows)
    assert not [a for a in find_anomalies(spec, metered, now.timestamp()) if a.kind == "budget"]
    rows = [(*r[:4], "MEDIUM", *r[5:]) for r in rows]  # 4 credits/hour: 96 a day
    found = find_anomalies(spec, Metered.from_rows(rows), now.timestamp())
    budget = [a for a in found if a.kind == "budget"]
    assert len(budget) == 1 and budget[0].open
    assert budget[0].expected == 1000 and budget[0].actual == pytest.approx(96 * 30, rel=0.05)


def test_runaway_projection_uses_progress() -> None:
    now = 10_000.0
    job = RunningJob("backfill:r1", "INIT", "X6LARGE", now - 1800, 0.25)
    assert job.credits_so_far(now) == pytest.approx(256)
    assert job.projected(now) == pytest.approx(1024)
    assert runaway_anomalies([job], now, 2000) == []
    [found] = runaway_anomalies([job], now, 1000)
    assert found.kind == "runaway" and found.open and found.job == "backfill:r1"


COST_SETTINGS = BUDGET + "\n  max_job_credits: 100\n  alerts: {webhook_url_env: COST_HOOK}"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: Hook) -> Iterator[Path]:  # noqa: F811
    """A deployed DuckDB warehouse with a running backfill: started 30 min ago on X6LARGE
    (256 credits so far), 1 of 100 ranges done a minute ago (projected 25,600 credits)."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.setenv("COST_HOOK", hook.url)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, example_text(**{BUDGET: COST_SETTINGS}))
    loaded = load_spec(spec)
    now = dt.datetime.now(UTC)
    with DuckDBTarget(loaded) as target:
        deploy_target_templates(target, loaded)
        con = target.con
        con.execute(
            "INSERT INTO _clinipipe.backfill_runs VALUES ('r1', 'slot', '0/1', 'labs', ?, NULL)",
            [now - dt.timedelta(minutes=30)],
        )
        con.execute("INSERT INTO _clinipipe.backfill_plan SELECT 'r1', 'labs', i, i * 10, "
                    "i * 10 + 10 FROM range(100) r(i)")  # fmt: skip
        con.execute(
            "INSERT INTO _clinipipe.backfill_ranges VALUES ('r1', 'labs', 0, 10, 10, ?, ?)",
            [now - dt.timedelta(minutes=30), now - dt.timedelta(minutes=1)],
        )
    yield spec


def test_a_runaway_backfill_alerts_the_webhook_within_seconds(
    project: Path,
    hook: Hook,  # noqa: F811
) -> None:
    loaded = load_spec(project)
    sender = sender_for(loaded)
    assert sender is not None
    watch = CostWatch(sender, interval_seconds=60)
    started = time.monotonic()
    with DuckDBTarget(loaded, read_only=True) as target:
        context = SimpleNamespace(loaded=loaded, target=target, now=dt.datetime.now(UTC))
        watch.run(context)
        watch.run(context)  # within the interval: no second check, no second alert
    assert hook.arrived.wait(5), "no alert arrived"
    elapsed = time.monotonic() - started
    assert elapsed < 5
    sender.close()
    assert len(hook.bodies) == 1
    body = hook.bodies[0]
    assert body["event"] == "cost_anomaly" and "runaway" in str(body["summary"])
    [anomaly] = body["anomalies"]  # type: ignore[misc]
    assert anomaly["kind"] == "runaway" and anomaly["job"] == "backfill:r1"
    assert anomaly["actual"] == pytest.approx(25_600, rel=0.01)
    assert "T0K3N" not in json.dumps(body)
    # the same anomaly found again is not sent again
    with DuckDBTarget(loaded, read_only=True) as target:
        assert [a.kind for a in watch.check(loaded, target)] == ["runaway"]
    assert len(watch.sent) == 1 and sender.stats.queued == 1


def test_cost_anomalies_exits_3_and_alerts_while_a_runaway_is_open(
    project: Path,
    hook: Hook,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = cli(capsys, "-c", str(project), "cost", "anomalies", "--json")
    assert code == 3, err
    data = json.loads(out)
    assert data["open"] == 1 and data["anomalies"][0]["kind"] == "runaway"
    assert hook.arrived.wait(5) and hook.bodies[0]["event"] == "cost_anomaly"
    with DuckDBTarget(load_spec(project)) as target:  # the backfill completes
        target.con.execute("UPDATE _clinipipe.backfill_runs SET completed_at = now()")
    code, out, err = cli(capsys, "-c", str(project), "cost", "anomalies")
    assert code == 0, err
    assert "none" in out


def test_cost_anomalies_names_a_missing_webhook_variable(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COST_HOOK")
    code, _, err = cli(capsys, "-c", str(project), "cost", "anomalies")
    assert code == 2 and "COST_HOOK is not set" in err
