"""Metering (issue 15, behaviour 1): every kind of job writes one `_clinipipe.metering` row with
warehouse, size, start <= end, rows and clinipipe's own CPU seconds; one implementation of the
row (`TargetCore.metering_insert_sql`); a deploy adds `cpu_seconds` to an older table."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import duckdb
import pytest

from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
from clinipipe.spec import load_spec
from clinipipe.targets.duckdb import DuckDBTarget
from clinipipe.targets.metering import CpuClock, MeteringRow
from tests.helpers import catch_up, cli, deploy_target_templates, example_text, execute, write_spec

KEY = "metering-test-key-0123456789-abcdefghij"
KINDS = ("backfill", "cdc", "refresh", "publish", "phi-scan", "redact", "backup", "restore")


def test_every_kind_of_job_is_metered_with_cpu_seconds(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("CLINIPIPE_HMAC_KEY", KEY)
    spec = str(hospital_project)
    run_backfill(load_spec(hospital_project), BackfillOptions(workers=2))
    execute(pg_dsn, "UPDATE patients SET city = city || 'x' WHERE patient_id <= 20")
    catch_up(hospital_project)
    for args in (["refresh"], ["publish"], ["redact", "--policy", "safe_harbor"]):
        code, _, err = cli(capsys, "-c", spec, *args, "--json")
        assert code == 0, (args, err)
    code, _, err = cli(capsys, "-c", spec, "scan", "--json")
    assert code in (0, 3), err  # 3: the raw tables hold PHI (findings), the scan still ran
    code, out, err = cli(capsys, "-c", spec, "backup", "create", "--json")
    assert code == 0, err
    backup_id = json.loads(out)["backup_id"]
    code, _, err = cli(capsys, "-c", spec, "backup", "restore", backup_id, "--to", "restored")
    assert code == 0, err

    incremental = load_spec(hospital_project).spec.warehouses.incremental
    with duckdb.connect(str(hospital_project.parent / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT job, warehouse, warehouse_role, size, started_at, ended_at, rows_processed, "
            "bytes_processed, cpu_seconds FROM _clinipipe.metering"
        ).fetchall()
    by_kind: dict[str, list[tuple[object, ...]]] = {}
    for row in rows:
        by_kind.setdefault(str(row[0]).split(":")[0], []).append(row)
    assert set(KINDS) <= set(by_kind), sorted(by_kind)
    for kind in KINDS:
        for job, warehouse, role, size, started, ended, n, _nbytes, cpu in by_kind[kind]:
            assert warehouse and role and size, job
            assert started <= ended, job
            assert n is not None and n >= 0, job
            assert cpu is not None and cpu >= 0, job
    # The backfill's worker threads parse every row: their CPU is more than nothing.
    assert sum(r[8] for r in by_kind["backfill"]) > 0
    assert sum(r[6] for r in by_kind["cdc"]) >= 20
    for kind in ("backup", "restore"):
        [(job, warehouse, role, size, *_)] = by_kind[kind]
        assert job.endswith(backup_id) and role == "incremental", job
        assert (warehouse, size) == (incremental.name, incremental.size)
    assert by_kind["backup"][0][7] > 0  # bytes written to the store

    code, out, err = cli(capsys, "-c", spec, "cost", "report", "--by", "job", "--json")
    assert code in (0, 3), err
    report = json.loads(out)
    cpu = {j["job"].split(":")[0]: j["cpu_seconds"] for j in report["by_job"]}
    assert all(cpu[k] is not None for k in KINDS), cpu

    # The report of this real run (synth, backfill, CDC, refresh, publish...): both warehouses
    # of the dual setup, the single-warehouse comparison and the daily chart.
    loaded = load_spec(hospital_project)
    init, cdc_wh = (loaded.spec.warehouses.initialization, loaded.spec.warehouses.incremental)
    names = {w["name"] for w in report["warehouses"]}
    assert {init.name.upper(), cdc_wh.name.upper()} <= names, names
    kinds = [c["kind"] for c in report["comparison"]]
    assert kinds == ["always-on", "auto-suspend"], kinds
    assert report["one_off"]["credits"] > 0 and report["steady"]["credits"] > 0
    monkeypatch.setenv("COLUMNS", "120")
    code, out, err = cli(capsys, "-c", spec, "cost", "report")
    assert code in (0, 3), err
    for shown in ("Per warehouse", init.name.upper(), cdc_wh.name.upper(),
                  "Against one single warehouse", "Daily spend", "█"):  # fmt: skip
        assert shown in out, (shown, out)


def test_deploy_adds_cpu_seconds_to_an_older_metering_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", "postgresql://clinipipe@127.0.0.1:1/none")
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    loaded = load_spec(write_spec(tmp_path, example_text()))
    with DuckDBTarget(loaded) as target:  # the metering table as an earlier clinipipe made it
        target.con.execute("CREATE SCHEMA IF NOT EXISTS _clinipipe")
        target.con.execute(
            "CREATE TABLE _clinipipe.metering (job_id VARCHAR PRIMARY KEY, job VARCHAR NOT NULL, "
            "warehouse VARCHAR NOT NULL, warehouse_role VARCHAR NOT NULL, size VARCHAR NOT NULL, "
            "started_at TIMESTAMPTZ NOT NULL, ended_at TIMESTAMPTZ NOT NULL, "
            "rows_processed BIGINT, bytes_processed BIGINT)"
        )
        target.con.execute(
            "INSERT INTO _clinipipe.metering VALUES ('old', 'cdc:batch', 'WH', 'incremental', "
            "'XSMALL', now(), now(), 1, NULL)"
        )
        deploy_target_templates(target, loaded)
        started = ended = target.query("SELECT now()")[0][0]
        row = MeteringRow("cdc:batch", "WH", "incremental", "XSMALL", started, ended, 2, None, 0.25)
        target.execute_atomically([target.metering_insert_sql(row)])
    # Reopened (a WAL replay of the ALTER and the COMMENT): the old row reads NULL.
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        got = con.execute(
            "SELECT job_id, cpu_seconds FROM _clinipipe.metering ORDER BY rows_processed"
        ).fetchall()
        [(column_type, comment)] = con.execute(
            "SELECT data_type, comment FROM duckdb_columns() WHERE schema_name = '_clinipipe' "
            "AND table_name = 'metering' AND column_name = 'cpu_seconds'"
        ).fetchall()
    assert got == [("old", None), (row.job_id, 0.25)]
    assert column_type == "DOUBLE" and "not the warehouse" in comment


def test_cpu_clock_measures_its_own_thread_only() -> None:
    clock = CpuClock()
    sum(i * i for i in range(200_000))  # some CPU in this thread
    mine = clock.seconds()
    assert mine is not None and mine > 0
    other: list[float | None] = []
    thread = threading.Thread(target=lambda: other.append(clock.seconds()))
    thread.start()
    thread.join()
    assert other == [None]  # another thread's CPU time would mean nothing: not measured
