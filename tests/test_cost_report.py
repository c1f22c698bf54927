"""`clinipipe cost report` over metering rows in a real DuckDB warehouse, and the golden SQL of
Snowflake's ACCOUNT_USAGE views (fakesnow cannot run ACCOUNT_USAGE)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from clinipipe.cost.metering import (
    Metered,
    anomalies_daily_sql,
    billed_hours,
    warehouse_metering_history_sql,
)
from clinipipe.cost.report import build_report
from clinipipe.cost.sizing import advise
from clinipipe.spec import load_spec
from clinipipe.spec.model import Spec
from clinipipe.targets.duckdb import DuckDBTarget
from clinipipe.targets.snowflake.core import SnowflakeDialect
from tests.helpers import cli, deploy_target_templates, example_text, write_spec

GOLDEN = Path(__file__).parent / "golden" / "cost"
UTC = dt.timezone.utc
INIT, CDC, SERVE = "CLINIPIPE_INIT_WH", "CLINIPIPE_CDC_WH", "CLINIPIPE_SERVE_WH"


def workload(now: dt.datetime) -> list[tuple[object, ...]]:
    """Two days ago: a 1-hour X6LARGE backfill (4 ranges of 15 min, one after another).
    Yesterday from 10:00: a CDC batch of 1 s every 10 s for 2 hours on XSMALL."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    b0 = day - dt.timedelta(days=2) + dt.timedelta(hours=3)
    rows: list[tuple[object, ...]] = []
    for i in range(4):
        s = b0 + dt.timedelta(minutes=15 * i)
        rows.append((f"b{i}", f"backfill:labs:{i}", INIT, "initialization", "X6LARGE", s,
                     s + dt.timedelta(minutes=15), 1000, 250_000_000))  # fmt: skip
    c0 = day - dt.timedelta(days=1) + dt.timedelta(hours=10)
    for i in range(720):
        s = c0 + dt.timedelta(seconds=10 * i)
        rows.append((f"c{i}", "cdc:batch", CDC, "incremental", "XSMALL", s,
                     s + dt.timedelta(seconds=1), 5, None))  # fmt: skip
    return rows


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A deployed DuckDB warehouse whose metering holds `workload`; the spec path."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, example_text())
    loaded = load_spec(spec)
    with DuckDBTarget(loaded) as target:
        deploy_target_templates(target, loaded)
        target.con.executemany(
            "INSERT INTO _clinipipe.metering (job_id, job, warehouse, warehouse_role, size, "
            "started_at, ended_at, rows_processed, bytes_processed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            workload(dt.datetime.now(UTC)),
        )
    yield spec


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Spec:
    """The example hospital's spec (no warehouse)."""
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    return load_spec(write_spec(tmp_path, example_text())).spec


def test_report_prices_the_metered_work_as_snowflake_bills_it(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "-c", str(project), "cost", "report", "--json")
    assert code == 0, err
    rep = json.loads(out)
    by = {w["name"]: w for w in rep["warehouses"]}
    assert set(by) == {INIT, CDC}
    # 3,600 s of ranges back to back + 60 s until auto-suspend, at 512 credits/hour
    assert by[INIT]["credits"] == pytest.approx(512 * 3660 / 3600)
    # one running period: first batch .. last batch end (7,191 s) + 60 s, at 1 credit/hour
    assert by[CDC]["credits"] == pytest.approx(7251 / 3600)
    assert by[CDC]["periods"] == 1 and by[CDC]["jobs"] == 720
    assert by[CDC]["idle_share"] == pytest.approx(1 - 720 / 7251)
    assert rep["one_off"]["credits"] == pytest.approx(by[INIT]["credits"])
    assert rep["steady"]["credits"] == pytest.approx(by[CDC]["credits"])
    assert rep["credit_price_usd"] == 3.0
    assert rep["total"]["usd"] == pytest.approx(3.0 * (by[INIT]["credits"] + by[CDC]["credits"]))
    # days: the backfill's day and the CDC day
    days = {d["warehouse"]: d["date"] for d in rep["daily"]}
    assert days[INIT] < days[CDC]
    # the comparison: MEDIUM always on = 4 x 730 credits a month
    always, right = rep["comparison"]
    assert always["kind"] == "always-on" and always["steady_month_credits"] == 2920
    assert always["backfill_hours"] == pytest.approx(128)  # 512 credit-hours at 4/hour
    # the smallest size that ends 512 credit-hours within 24 h: XXLARGE (32/hour, 16 h)
    assert right["kind"] == "auto-suspend" and right["size"] == "XXLARGE"
    assert right["backfill_hours"] == pytest.approx(16)
    assert right["one_off_credits"] == pytest.approx(512 + 32 * 60 / 3600)
    # projected month = steady credits per hour of the steady span x 730
    steady = rep["steady"]
    assert steady["projected_month_credits"] == pytest.approx(
        steady["credits"] / steady["hours"] * 730
    )
    assert always["saving"]["month_pct"] == pytest.approx(
        100 * (2920 - steady["projected_month_credits"]) / 2920
    )
    top = rep["top_jobs"]
    assert len(top) == 10 and top[0]["job"].startswith("backfill:labs:")
    assert top[0]["credits"] == pytest.approx(128)  # 15 min at 512/hour, alone
    assert {j["job"] for j in rep["by_job"]} == {"backfill:labs", "cdc:batch"}
    assert rep["sizing"]["auto_suspend"] in (30, 60, 120, 300, 600, 1800)


def test_report_as_csv_and_as_tables_with_the_daily_chart(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "-c", str(project), "cost", "report", "--csv", "--by", "day")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["warehouse"] for r in rows} == {INIT, CDC}
    assert sum(float(r["credits"]) for r in rows) == pytest.approx(512 * 3660 / 3600 + 7251 / 3600)
    code, out, err = cli(capsys, "-c", str(project), "cost", "report", "--days", "7")
    assert code == 0, err
    assert INIT in out and CDC in out and "Daily spend" in out and "█" in out
    flat = " ".join(out.split())
    assert "MEDIUM" in flat and "XXLARGE" in flat and "Sizing advice" in flat


def test_report_refuses_a_bad_compare_and_by(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "-c", str(project), "cost", "report", "--compare", "single:HUGE")
    assert code == 2 and "unknown warehouse size" in err
    code, _, err = cli(capsys, "-c", str(project), "cost", "report", "--by", "table")
    assert code == 2 and "--by" in err


def test_snowflake_account_usage_sql_is_golden() -> None:
    since = dt.datetime(2025, 12, 1, tzinfo=UTC)
    sql = warehouse_metering_history_sql(SnowflakeDialect(), ["clinipipe_cdc_wh", INIT], since)
    sql += ";\n\n" + anomalies_daily_sql(SnowflakeDialect(), since.date()) + ";\n"
    golden = GOLDEN / "account_usage.sql"
    assert sql == golden.read_text()


def test_billed_hours_replace_the_model_per_warehouse_and_day(spec: Spec) -> None:
    now = dt.datetime(2025, 12, 4, 12, tzinfo=UTC)
    metered = Metered.from_rows(workload(now))
    hours = billed_hours([
        (dt.datetime(2025, 12, 2, 3, tzinfo=UTC), "clinipipe_init_wh", 600.0, 590.0, 500.0),
        (dt.datetime(2025, 12, 3, 10, tzinfo=UTC), CDC, 1.5, 1.5, 0.25),
    ])  # fmt: skip
    rep = build_report(spec, metered, start=now - dt.timedelta(days=6), end=now, billed=hours)
    by = {w.name: w for w in rep.warehouses}
    assert by[INIT].credits == 600.0 and by[INIT].idle_credits == pytest.approx(100.0)
    assert by[CDC].credits == 1.5 and by[CDC].idle_share == pytest.approx(1.25 / 1.5)
    assert "ACCOUNT_USAGE" in rep.source
    assert {(d.date, d.warehouse) for d in rep.daily} == {("2025-12-02", INIT), ("2025-12-03", CDC)}


def test_sizing_uses_the_scaling_measured_at_two_sizes(spec: Spec) -> None:
    t0 = dt.datetime(2025, 12, 1, tzinfo=UTC)
    rows = []
    # 1 GB in 1,000 s on MEDIUM (4/h); 1 GB in 500 s on LARGE (8/h): perfect scaling
    rows.append(("a", "backfill:labs:0", INIT, "initialization", "MEDIUM", t0,
                 t0 + dt.timedelta(seconds=1000), 1, 1e9))  # fmt: skip
    t1 = t0 + dt.timedelta(hours=1)
    rows.append(("b", "backfill:labs:0", INIT, "initialization", "LARGE", t1,
                 t1 + dt.timedelta(seconds=500), 1, 1e9))  # fmt: skip
    advice = advise(spec, Metered.from_rows(rows), deadline_hours=0.05)
    assert advice.scaling_measured and advice.scaling_alpha == pytest.approx(1.0)
    # 1 GB at 2 MB/s on LARGE; within 0.05 h (180 s) needs 5.56 MB/s: XLARGE (4 MB/s) is too
    # slow, XXLARGE (8 MB/s) ends in 125 s
    assert advice.initialization_size == "XXLARGE"
    assert advice.initialization_hours == pytest.approx(125 / 3600)
    assert advice.initialization_credits == pytest.approx(32 * 125 / 3600)


def test_the_days_add_up_to_the_warehouse_totals_when_a_minimum_runs_past_now(spec: Spec) -> None:
    """A 5 s job that ended 10 s before the report's end: its 60 s minimum runs past the end.
    Each warehouse's total and its days are both billed up to the end, so they agree (a real
    run showed the days 8.5 credits above the total on X6LARGE before)."""
    end = dt.datetime(2026, 12, 4, 22, 12, 40, tzinfo=UTC)
    job_end = end - dt.timedelta(seconds=10)
    metered = Metered.from_rows([
        ("j1", "refresh:x:full", INIT, "initialization", "X6LARGE",
         job_end - dt.timedelta(seconds=5), job_end, 1, None),
    ])  # fmt: skip
    start = end.replace(hour=0, minute=0, second=0)
    rep = build_report(spec, metered, start=start, end=end)
    (wh,) = rep.warehouses
    assert wh.credits == pytest.approx(512 * 15 / 3600)  # 15 s billed so far, not the 60 s
    assert sum(d.credits for d in rep.daily) == pytest.approx(wh.credits)
