"""Promises of the command line that had no test (issue 22): no patient value in an unexpected
error (with or without --verbose), no password in any command's output, --verbose itself,
Ctrl-C on `cdc start`, and the figures of `cdc status`."""

from __future__ import annotations

import json
import os
import signal
import statistics
from pathlib import Path

import duckdb
import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from clinipipe.source.pgoutput import lsn_to_int
from tests.helpers import CliProcess, assert_target_equals_source, cli, execute

PLANTED_NAME = "Zyxwandersmith"
PLANTED_CITY = "Quellhavenport"


def _outputs_hold_no_value(value: str, *texts: str) -> None:
    for text in texts:
        assert value not in text, f"a patient value reached the output: {text[-600:]}"


def test_an_unexpected_conversion_error_prints_no_patient_value(
    hospital_project: Path,
    pg_dsn: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A conversion error no layer expected (pyarrow's, quoting the value it could not parse)
    in the backfill and in CDC: every output, with and without --verbose, holds no patient
    value; --verbose adds a traceback, and only --verbose does."""
    from clinipipe.source.pgoutput import TableChanges
    from clinipipe.targets.duckdb import DuckDBTarget

    execute(pg_dsn, f"UPDATE patients SET last_name = '{PLANTED_NAME}' WHERE patient_id = 1")
    real_load = DuckDBTarget.load_range

    def load_converting(self: DuckDBTarget, schema: object, work: object, stream: object) -> int:
        if schema.name == "patients":  # type: ignore[attr-defined]
            for batch in stream.batches:  # type: ignore[attr-defined]
                key = pc.cast(batch["patient_id"], pa.string())  # typed or text transport
                planted = batch.filter(pc.equal(key, "1"))
                pc.cast(planted["last_name"], pa.int32())  # ArrowInvalid quoting the name
        return real_load(self, schema, work, stream)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr(DuckDBTarget, "load_range", load_converting)
        for verbose in ([], ["--verbose"]):
            code, out, err = cli(capsys, *verbose, "-c", str(hospital_project), "backfill",
                                 "--force", "--workers", "1")  # fmt: skip
            assert code == 1, out + err
            assert "internal error: ArrowInvalid" in err, err
            assert ("Traceback (most recent call last)" in err) == bool(verbose), err
            if verbose:  # the frame that failed is named; the message is scrubbed
                assert "load_converting" in err and "'…'" in err, err
            else:
                assert "--verbose" in err
            _outputs_hold_no_value(PLANTED_NAME, out, err)

    code, out, err = cli(capsys, "-c", str(hospital_project), "backfill", "--force")
    assert code == 0, out + err
    execute(pg_dsn, f"UPDATE patients SET city = '{PLANTED_CITY}' WHERE patient_id = 2")
    real_arrow = TableChanges.to_arrow

    def arrow_converting(self: TableChanges) -> pa.Table:
        table = real_arrow(self)
        if self.relation.name == "patients":
            pc.cast(table["city"], pa.int32())  # ArrowInvalid quoting the city
        return table

    with monkeypatch.context() as patch:
        patch.setattr(TableChanges, "to_arrow", arrow_converting)
        for verbose in ([], ["-v"]):
            code, out, err = cli(capsys, *verbose, "-c", str(hospital_project), "cdc", "start",
                                 "--until-caught-up")  # fmt: skip
            assert code == 1, out + err
            assert "internal error: ArrowInvalid" in err, err
            assert ("Traceback (most recent call last)" in err) == bool(verbose), err
            if verbose:
                assert "arrow_converting" in err, err
            _outputs_hold_no_value(PLANTED_CITY, out, err)
    # Nothing of the failed batch was applied; a run without the fault applies it.
    code, out, err = cli(capsys, "-c", str(hospital_project), "cdc", "start", "--until-caught-up")
    assert code == 0, out + err
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")


def test_verbose_changes_nothing_when_all_goes_well(
    hospital_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "--verbose", "-c", str(hospital_project), "backfill", "--json")
    assert code == 0 and json.loads(out)["status"] == "loaded", out + err
    assert "Traceback" not in err and "internal error" not in err


PASSWORD = "Pa55-SECRET-w0rd"


def test_no_command_prints_the_source_password(
    hospital_project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source is unreachable and its DSN carries a password (URI and keyword forms):
    whatever each command prints (errors included, --verbose included), the password is never
    in it; the commands that need the source fail with the DSN shown masked."""
    for command in (["backfill"], ["cdc", "start", "--until-caught-up"]):
        code, out, err = cli(capsys, "-q", "-c", str(hospital_project), *command)
        assert code == 0, out + err
    monkeypatch.setenv("CLINIPIPE_HMAC_KEY", "test-only-hmac-key-0123456789abcdef")
    uri = f"postgresql://clinipipe:{PASSWORD}@127.0.0.1:1/nowhere"
    keywords = f"host=127.0.0.1 port=1 dbname=nowhere user=clinipipe password={PASSWORD}"
    needs_source = [["cdc", "start", "--until-caught-up", "--retry-for", "0"], ["cdc", "status"],
                    ["cdc", "status", "--json"], ["backfill", "--force"]]  # fmt: skip
    warehouse_only = [
        ["scan"],
        ["refresh", "patient_summary"],
        ["status"],
        ["redact", "--policy", "safe_harbor"],
        ["dashboard", "patient_overview", "-p", "patient_id=1"],
    ]
    runs = [(uri, c, v) for c in needs_source for v in ([], ["--verbose"])]
    runs += [(keywords, c, []) for c in needs_source]
    runs += [(uri, c, []) for c in warehouse_only]
    for dsn, command, verbose in runs:
        monkeypatch.setenv("CLINIPIPE_SOURCE_DSN", dsn)
        code, out, err = cli(capsys, *verbose, "-c", str(hospital_project), *command)
        assert PASSWORD not in out + err, (command, out + err)
        assert "Traceback" not in err, (command, err)
        if command in needs_source:
            assert code == 1 and "cannot connect to the source" in err, (command, err)
            assert "****" in err, (command, err)  # the DSN is shown, masked


def _slot_confirmed(dsn: str) -> int:
    with psycopg2.connect(dsn) as con, con.cursor() as cur:
        cur.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
            "WHERE slot_name = 'clinipipe_slot'"
        )
        row = cur.fetchone()
    con.close()
    assert row is not None
    return lsn_to_int(row[0])


def test_ctrl_c_on_cdc_start_exits_0_with_the_checkpoint_saved(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "-q", "-c", str(hospital_project), "backfill")
    assert code == 0, out + err
    env = {**os.environ, "CLINIPIPE_SOURCE_DSN": pg_dsn}
    child = CliProcess(["-c", str(hospital_project), "cdc", "start", "--json"], env)
    child.wait_for_line(r"^Streaming from slot")
    execute(pg_dsn, "UPDATE labs SET unit = 'mmol/L' WHERE lab_id <= 40")
    applied = child.wait_for_line(r"^applied 40 changes \(1 transactions\) up to ")
    child.proc.send_signal(signal.SIGINT)
    code, out, err = child.finish()
    assert code == 0, err
    assert "Traceback" not in err and "interrupted" not in err
    summary = json.loads(out)
    assert summary["changes"] == 40 and summary["batches"] == 1
    up_to = applied.rsplit(" ", 1)[1].strip()
    assert summary["end_lsn"] == up_to
    with duckdb.connect(str(hospital_project.parent / "warehouse.duckdb"), read_only=True) as con:
        [(checkpoint,)] = con.execute("SELECT lsn FROM _clinipipe.cdc_checkpoints").fetchall()
    assert checkpoint == lsn_to_int(up_to)
    assert _slot_confirmed(pg_dsn) >= checkpoint  # ... and confirmed to PostgreSQL
    assert_target_equals_source(pg_dsn, hospital_project.parent / "warehouse.duckdb")


def test_cdc_status_figures_are_those_of_the_applied_batches(
    hospital_project: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three batches of known sizes: `cdc status` reports the last one, the checkpoint, and
    latency percentiles computed from exactly the latencies recorded for those batches."""
    code, out, err = cli(capsys, "-q", "-c", str(hospital_project), "backfill")
    assert code == 0, out + err
    ends = []
    for n in (5, 7, 11):
        execute(pg_dsn, f"UPDATE labs SET unit = 'u{n}' WHERE lab_id <= {n}")
        code, out, err = cli(capsys, "-q", "-c", str(hospital_project), "cdc", "start",
                             "--until-caught-up", "--json")  # fmt: skip
        assert code == 0, out + err
        data = json.loads(out)
        assert data["changes"] == n and data["batches"] == 1
        ends.append(data["end_lsn"])
    code, out, err = cli(capsys, "-c", str(hospital_project), "cdc", "status", "--json")
    assert code == 0, out + err
    status = json.loads(out)
    assert status["last_batch_changes"] == 11
    assert status["checkpoint_lsn"] == ends[-1]
    assert lsn_to_int(status["confirmed_lsn"]) >= lsn_to_int(ends[-1])
    assert status["lag_bytes"] >= 0 and status["lag_warning"] is False
    with duckdb.connect(str(hospital_project.parent / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT changes, latencies_ms FROM _clinipipe.cdc_batches ORDER BY applied_at"
        ).fetchall()
    assert [r[0] for r in rows] == [5, 7, 11]
    latencies = sorted(x for _, ls in rows for x in ls)
    assert len(latencies) == 3 and all(x > 0 for x in latencies)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    figures = status["latency_ms"]
    assert figures == {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}
    assert figures["p50"] == pytest.approx(latencies[1])  # the median of three
    assert latencies[0] <= figures["p50"] <= figures["p95"] <= figures["p99"] <= latencies[2]
