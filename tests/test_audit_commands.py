"""Every state-changing command appends one entry to the audit log (issue 14, item 6): backfill,
cdc start / stop, refresh, publish, scan, cdc reset, on the embedded PostgreSQL and a DuckDB
warehouse. Entries hold names, counts and outcomes, never a row value or a secret.

Documented choices tested here: a command refused before it changes anything records nothing
(an unknown dynamic table, exit 2); one that fails or is interrupted after it began records
outcome ``failed`` with the error's class (an interrupted backfill); work that committed but
could not be recorded exits 1 saying so; a warehouse without the audit log refuses to work
until `clinipipe deploy` adds it.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from clinipipe.backup import audit
from clinipipe.cli.app import run
from clinipipe.spec import load_spec
from clinipipe.synth import run_synth
from clinipipe.targets.duckdb import DuckDBTarget
from tests.helpers import CliProcess, cli, example_text, execute, write_spec
from tests.test_snowflake_pipeline import fake  # noqa: F401  (the fakesnow fixture)

PASSWORD = "Pw-audit-7Q4xZr2"  # in the DSN (trust authentication ignores it): a secret
HMAC_KEY = "hmac-audit-test-key-5k2v9Wq1"
PLANTED_NAME = "Quillfeatherstonaugh"  # a patient's last name: PHI
PLANTED_SSN = "078-05-1120"  # in a clinical note, streamed by CDC: PHI


@pytest.fixture
def project(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, str]]:
    """A deployed hospital whose DSN carries a password, with PHI planted before the backfill;
    (spec path, DSN)."""
    user, rest = pg_dsn.removeprefix("postgresql://").split("@", 1)
    dsn = f"postgresql://{user}:{PASSWORD}@{rest}"
    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
    monkeypatch.setenv("CLINIPIPE_HMAC_KEY", HMAC_KEY)
    monkeypatch.delenv("CLINIPIPE_DUCKDB_PATH", raising=False)
    run_synth(pg_dsn, patients=200, seed=5)
    execute(pg_dsn, f"UPDATE patients SET last_name = '{PLANTED_NAME}' WHERE patient_id = "
                    "(SELECT min(patient_id) FROM patients)")  # fmt: skip
    spec = write_spec(tmp_path, example_text())
    assert run(["-q", "-c", str(spec), "deploy"]) == 0
    yield spec, dsn


def log_entries(capsys: pytest.CaptureFixture[str], spec: Path) -> list[dict[str, Any]]:
    code, out, err = cli(capsys, "-c", str(spec), "audit", "log", "--json")
    assert code == 0, err
    entries = json.loads(out)
    # the fixture's deploy comes first, recorded by pipeline/deploy.py itself
    assert entries and entries[0]["action"] == "deploy", entries[:1]
    assert (
        entries[0]["detail"]["outcome"] == "ok" and entries[0]["detail"]["counts"]["templates"] > 0
    )
    return [e for e in entries if e["action"] != "deploy"]


def ok(capsys: pytest.CaptureFixture[str], spec: Path, *args: str) -> str:
    code, out, err = cli(capsys, "-c", str(spec), *args)
    assert code == 0, err
    return out


def test_each_command_appends_one_entry_in_order_without_phi_or_secrets(
    project: tuple[Path, str], pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, _ = project
    backfill = json.loads(ok(capsys, spec, "backfill", "--json"))
    execute(pg_dsn, f"UPDATE clinical_notes SET note_text = 'Seen {PLANTED_NAME}, SSN "
                    f"{PLANTED_SSN}' WHERE note_id = (SELECT min(note_id) FROM clinical_notes)",
            f"UPDATE patients SET first_name = '{PLANTED_NAME}' WHERE patient_id = "
            "(SELECT max(patient_id) FROM patients)")  # fmt: skip
    ok(capsys, spec, "cdc", "start", "--until-caught-up")
    refreshed = json.loads(ok(capsys, spec, "refresh", "--full", "--json"))
    published = json.loads(ok(capsys, spec, "publish", "--json"))
    code, out, err = cli(capsys, "-c", str(spec), "scan", "--json")
    assert code in (0, 3), err  # 3: findings at or above fail_on (a finding is not a failure)
    scan = json.loads(out)
    ok(capsys, spec, "cdc", "reset", "--yes")

    entries = log_entries(capsys, spec)
    assert [e["action"] for e in entries] == [
        "backfill", "cdc start", "cdc stop", "refresh --full", "publish", "scan", "cdc reset",
    ]  # fmt: skip
    assert [e["detail"]["outcome"] for e in entries] == ["ok"] * 7
    digest = load_spec(spec).digest
    assert all(e["detail"]["spec_digest"] == digest for e in entries)
    assert all(e["actor"] for e in entries)
    by = {e["action"]: e["detail"] for e in entries}

    assert by["backfill"]["counts"]["rows"] == backfill["rows"] > 0
    assert by["backfill"]["counts"]["tables"] == 7 and by["backfill"]["complete"] is True
    assert "raw.patients" in by["backfill"]["objects"]
    assert by["cdc start"]["slot"] == "clinipipe_slot"
    stop = by["cdc stop"]["counts"]
    assert stop["changes"] >= 2 and stop["batches"] >= 1
    assert by["cdc stop"]["end_lsn"] != by["cdc stop"]["start_lsn"]
    assert by["refresh --full"]["objects"] == [f"derived.{r['name']}" for r in refreshed]
    assert by["refresh --full"]["counts"]["succeeded"] == len(refreshed) == 3
    assert by["publish"]["objects"] == [f"serving.{p['name']}" for p in published]
    assert by["publish"]["counts"]["rows"] == sum(p["rows"] for p in published)
    assert by["scan"]["objects"] == ["_clinipipe.phi_findings"]
    assert by["scan"]["counts"]["findings"] == len(scan["findings"])
    assert "slots_dropped" in by["cdc reset"]["counts"]
    assert by["cdc reset"]["counts"]["slots_dropped"] == 1

    code, out, err = cli(capsys, "-c", str(spec), "audit", "verify")
    assert code == 0 and "chain intact" in out, out + err
    raw = json.dumps(log_entries(capsys, spec))
    with duckdb.connect(str(spec.parent / "warehouse.duckdb"), read_only=True) as con:
        stored = con.execute("SELECT string_agg(object || detail, '|') "
                             "FROM _clinipipe.audit_log").fetchone()[0]  # fmt: skip
    for text in (raw, stored):
        for secret in (PLANTED_NAME, PLANTED_SSN, PLANTED_SSN.replace("-", ""), PASSWORD,
                       HMAC_KEY):  # fmt: skip
            assert secret not in text


def test_refused_commands_record_nothing_and_an_interrupted_backfill_records_failed(
    project: tuple[Path, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _ = project
    code, _, err = cli(capsys, "-c", str(spec), "refresh", "no_such_table")
    assert code == 2 and "no dynamic table" in err
    code, _, err = cli(capsys, "-c", str(spec), "publish", "no_such_table")
    assert code == 2
    code, _, err = cli(capsys, "-c", str(spec), "cdc", "start", "--until-caught-up")
    assert code == 1 and "clinipipe backfill" in err  # no backfill yet: refused
    assert log_entries(capsys, spec) == []

    # SIGINT after the first range committed: the backfill stops and keeps that range.
    real = DuckDBTarget.load_range
    sent: list[bool] = []

    def load_then_interrupt(self: DuckDBTarget, *args: Any, **kwargs: Any) -> int:
        rows = real(self, *args, **kwargs)
        if not sent:  # once: the backfill's handler is in place until its ranges are done
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return rows

    monkeypatch.setattr(DuckDBTarget, "load_range", load_then_interrupt)
    code, _, err = cli(capsys, "-c", str(spec), "backfill", "--workers", "1", "--range-pages", "1")
    assert code == 130 and "--resume" in err, err
    monkeypatch.setattr(DuckDBTarget, "load_range", real)
    [failed] = log_entries(capsys, spec)
    assert failed["action"] == "backfill"
    assert failed["detail"]["outcome"] == "failed"
    assert failed["detail"]["error"] == "BackfillInterrupted"
    assert failed["detail"]["complete"] is False and failed["detail"]["counts"]["rows"] > 0
    code, _, err = cli(capsys, "-c", str(spec), "backfill")
    assert code == 1 and "--resume" in err  # refused: an interrupted backfill to resume
    ok(capsys, spec, "backfill", "--resume")
    entries = log_entries(capsys, spec)
    assert [(e["action"], e["detail"]["outcome"]) for e in entries] == [
        ("backfill", "failed"), ("backfill", "ok")
    ]  # fmt: skip
    assert entries[1]["detail"]["status"] == "resumed" and entries[1]["detail"]["complete"]
    assert cli(capsys, "-c", str(spec), "audit", "verify")[0] == 0


def test_work_done_but_not_audited_exits_1_and_says_so(
    project: tuple[Path, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh commits first; an append that then fails does not hide it: exit 1, naming
    what was done and that it is not in the log."""
    spec, _ = project
    ok(capsys, spec, "backfill")
    real = audit.append

    def broken(*args: Any, **kwargs: Any) -> audit.AuditEntry:
        raise audit.TargetError("IO Error: disk full")

    monkeypatch.setattr(audit, "append", broken)
    code, _, err = cli(capsys, "-c", str(spec), "refresh", "patient_summary")
    assert code == 1, err
    assert "`refresh` finished (outcome ok) and its work is committed" in err
    assert "NOT in _clinipipe.audit_log" in err and "Traceback" not in err
    monkeypatch.setattr(audit, "append", real)
    with duckdb.connect(str(spec.parent / "warehouse.duckdb"), read_only=True) as con:
        (done,) = con.execute("SELECT count(*) FROM _clinipipe.dynamic_table_refresh_history "
                              "WHERE name = 'patient_summary' AND state = 'SUCCEEDED'"
                              ).fetchone()  # fmt: skip
    assert done == 1
    assert [e["action"] for e in log_entries(capsys, spec)] == ["backfill"]


def test_a_warehouse_deployed_before_the_audit_log_refuses_until_deploy_adds_it(
    project: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """As deployed by a clinipipe whose template 07 had no audit log: commands refuse before
    changing anything and name `clinipipe deploy`, which (07 changed) creates the table."""
    spec, _ = project
    warehouse = spec.parent / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.execute("DROP TABLE _clinipipe.audit_log")
        con.execute("UPDATE _clinipipe.deployed_templates SET template_digest = 'older' "
                    "WHERE template LIKE '07-%'")  # fmt: skip
    code, _, err = cli(capsys, "-c", str(spec), "backfill")
    assert code == 1 and "no audit log" in err and "clinipipe deploy" in err, err
    with duckdb.connect(str(warehouse), read_only=True) as con:
        (runs,) = con.execute("SELECT count(*) FROM _clinipipe.backfill_runs").fetchone()
    assert runs == 0  # refused before it changed anything
    ok(capsys, spec, "deploy")
    ok(capsys, spec, "backfill")
    assert [e["action"] for e in log_entries(capsys, spec)] == ["backfill"]


def test_deploy_hook_records_templates_and_statements(
    project: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit.record_deploy`, the call `pipeline/deploy.py` makes after `apply_deployment`."""
    spec, _ = project
    loaded = load_spec(spec)
    with DuckDBTarget(loaded) as target:
        entry = audit.record_deploy(target, spec_digest=loaded.digest,
                                    templates=["01-setup-environment.sql", "07-backups.sql"],
                                    statements=12, changes=1, deployment_id="d1")  # fmt: skip
    assert entry.action == "deploy" and entry.object == "01-setup-environment.sql, 07-backups.sql"
    assert entry.detail["counts"] == {"templates": 2, "statements": 12, "changes": 1}
    assert entry.detail["outcome"] == "ok" and entry.detail["deployment_id"] == "d1"
    code, out, _ = cli(capsys, "-c", str(spec), "audit", "log", "--json")
    assert code == 0 and json.loads(out)[-1]["entry_hash"] == entry.entry_hash


def test_commands_run_by_a_running_cdc_start_are_audited_and_its_own_refreshes_are_not(
    project: tuple[Path, str], pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`refresh` and `publish` asked of a running `cdc start` (over its control socket) append
    one entry each, between its start and its stop; the refreshes and publishes the loop
    schedules itself (after every batch) append none."""
    spec, dsn = project
    ok(capsys, spec, "backfill")
    child = CliProcess(["-c", str(spec), "cdc", "start", "--batch-ms", "50"],
                       {**os.environ, "CLINIPIPE_SOURCE_DSN": dsn})  # fmt: skip
    try:
        child.wait_for_line(r"^Streaming from slot")
        execute(pg_dsn, "UPDATE labs SET unit = unit || '.' WHERE lab_id <= 25")
        child.wait_for_line(r"^applied 25 changes ")
        for args in (("refresh", "patient_summary"), ("publish", "lab_dashboard")):
            code, _, err = cli(capsys, "-c", str(spec), *args)
            assert code == 0 and "`cdc start` owns the warehouse: asked it" in err, err
        execute(pg_dsn, "UPDATE labs SET unit = unit || '.' WHERE lab_id <= 25")
        child.wait_for_line(r"^applied 25 changes ")
    finally:
        child.proc.send_signal(signal.SIGTERM)
        code, _, err = child.finish()
    assert code == 0, err
    entries = log_entries(capsys, spec)
    assert [(e["action"], e["object"], e["detail"]["outcome"]) for e in entries] == [
        ("backfill", entries[0]["object"], "ok"),
        ("cdc start", entries[1]["object"], "ok"),
        ("refresh", "derived.patient_summary", "ok"),
        ("publish", "serving.lab_dashboard", "ok"),
        ("cdc stop", entries[1]["object"], "ok"),
    ]
    assert entries[4]["detail"]["counts"]["changes"] == 50
    assert entries[4]["detail"]["counts"]["refreshes"] > 0  # scheduled ones: not in the log


@pytest.mark.usefixtures("fake")
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_snowflake_backfill_cdc_and_reset_append_a_verifiable_chain(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same entries on Snowflake (fakesnow), written and read through target methods."""
    from clinipipe.pipeline.backfill import BackfillOptions, run_backfill
    from clinipipe.pipeline.cdc import CdcOptions, run_cdc
    from clinipipe.pipeline.deploy import deploy
    from clinipipe.pipeline.operations import cdc_reset
    from clinipipe.targets.snowflake import SnowflakeTarget
    from tests.helpers import snowflake_text

    monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", pg_dsn)
    monkeypatch.setenv("SNOWFLAKE_PASSWORD", PASSWORD)
    run_synth(pg_dsn, patients=100, seed=3)
    loaded = load_spec(write_spec(tmp_path, snowflake_text()))
    deploy(loaded)
    summary = run_backfill(loaded, BackfillOptions(workers=2, pages_per_range=32))
    execute(pg_dsn, f"UPDATE patients SET last_name = '{PLANTED_NAME}' WHERE patient_id = 1")
    run_cdc(loaded, CdcOptions(until_caught_up=True, max_seconds=120))
    assert cdc_reset(loaded) is True
    with SnowflakeTarget(loaded) as target:
        entries = audit.entries(target)
        assert audit.verify(target).ok
    assert [(e.action, e.detail["outcome"]) for e in entries] == [
        ("deploy", "ok"), ("backfill", "ok"), ("cdc start", "ok"), ("cdc stop", "ok"),
        ("cdc reset", "ok"),
    ]  # fmt: skip
    assert entries[1].detail["counts"]["rows"] == summary.rows
    assert entries[3].detail["counts"]["changes"] == 1
    text = json.dumps([e.as_dict() for e in entries])
    assert PLANTED_NAME not in text and PASSWORD not in text
