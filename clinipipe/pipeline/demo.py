"""`clinipipe demo`: the whole pipeline on this machine, in one command, cleaned up afterwards.

Steps (each through the functions the CLI commands use; `cdc start` as a child process, as it
runs in production): an embedded PostgreSQL (`source.embedded`), the example hospital spec
with short lags, synthetic data (`synth.run_synth`), deploy to a local DuckDB, backfill, then
`cdc start` while live clinical traffic runs on the source (admissions, lab results,
discharges, note edits; one ``ALTER TABLE labs ADD COLUMN`` mid-run; one SSN pasted into
``medications.frequency``, a column that holds no PHI by the spec) and, during that window, the
CDC benchmark (commit -> visible) and a short dashboard benchmark against the published
interactive tables; the PHI alert arrives at a local webhook. Then CDC is stopped cleanly and
the rest runs on the warehouse: freshness of the dynamic and interactive tables, a full PHI
scan, the Safe Harbor research schema (redact), a backup and its verification (reading every
object), the cost report. :func:`run_demo` returns the summary (:data:`SUMMARY_KEYS`).

Cleanup is guaranteed on every exit path (Ctrl-C included): the writer is stopped, `cdc
start` is stopped (SIGINT, killed after a timeout), the load processes are joined or
terminated, PostgreSQL is stopped and its data directory removed, and the project folder is
removed unless `keep` names it. The environment variables the demo sets are restored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import os
import random
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from clinipipe.pipeline.bench_run import bench_cdc, bench_dashboard, cdc_process, meter
from clinipipe.source.embedded import EmbeddedPostgres
from clinipipe.source.postgres import connect
from clinipipe.spec.loader import LoadedSpec, load_spec

MARKER = ".clinipipe-demo"
"""Marks a folder the demo made (only such a folder is replaced by a later `--keep` run)."""

LEAK = "BID; pt SSN 123-45-6789 per phone"
"""The planted leak: an SSN typed into medications.frequency (no PHI class in the spec)."""

ADDED_COLUMN = ("labs", "specimen_source")
NOTES_UP_TO = 5_000
"""Patients up to which the research schema includes the scrubbed clinical notes (above it
`clinipipe redact --policy safe_harbor` on a `--keep` project builds them)."""
ENV_KEYS = ("CLINIPIPE_SOURCE_DSN", "CLINIPIPE_HMAC_KEY", "CLINIPIPE_PHI_WEBHOOK_URL",
            "CLINIPIPE_DUCKDB_PATH", "CLINIPIPE_CONFIG")  # fmt: skip


class DemoError(Exception):
    """The demo cannot run as asked. `usage`: the request is wrong (exit 2)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class DemoOptions:
    patients: int = 20_000
    seconds: float = 60.0
    keep: Path | None = None
    seed: int = 7
    dashboard_qps: float = 50.0
    cdc_rate: float = 20.0
    """Rows/s of the CDC benchmark's writer (on top of the clinical traffic)."""


Step = Callable[[str, str], None]
"""on_step(name, detail): a step started (detail "") or finished (detail: its result)."""


def _spec_text(name: str) -> str:
    """The example hospital spec with lags short enough to see refreshes within the demo, and
    PHI alerts to the demo's local webhook."""
    text = resources.files("clinipipe").joinpath("_examples/hospital.yaml").read_text()
    text = re.sub(r"(?m)^name: .*$", f"name: {name}", text, count=1)
    text = text.replace("target_lag: 1 minute", "target_lag: 5 seconds")
    text = text.replace("target_lag: 5 minutes", "target_lag: 10 seconds")
    text = text.replace("target_lag: 10 minutes", "target_lag: 10 seconds")
    alerts = "  alerts: {webhook_url_env: CLINIPIPE_PHI_WEBHOOK_URL, format: json}\n"
    return text.replace("  hmac_key_env: CLINIPIPE_HMAC_KEY\n",
                        "  hmac_key_env: CLINIPIPE_HMAC_KEY\n" + alerts, 1)  # fmt: skip


# --- the PHI alert receiver -----------------------------------------------------------------------


class _Alerts(http.server.ThreadingHTTPServer):
    received = 0


class _AlertHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)  # the alert names places and categories, never values
        assert isinstance(self.server, _Alerts)
        self.server.received += 1
        self.send_response(202)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@contextlib.contextmanager
def _alert_receiver() -> Iterator[_Alerts]:
    server = _Alerts(("127.0.0.1", 0), _AlertHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# --- live clinical traffic ------------------------------------------------------------------------


class ClinicalTraffic(threading.Thread):
    """Every 0.2 s one source transaction: an admission, two lab results, the discharge of an
    earlier admission and a note edit. At `add_column_at` seconds: ``ALTER TABLE labs ADD
    COLUMN specimen_source`` (later lab results fill it); at `leak_at`: the planted SSN.
    `counts` says what committed; `error` the exception type that stopped it."""

    def __init__(self, dsn: str, seconds: float, *, add_column_at: float, leak_at: float) -> None:
        super().__init__(daemon=True, name="clinipipe-demo-traffic")
        self.dsn, self.seconds = dsn, seconds
        self.add_column_at, self.leak_at = add_column_at, leak_at
        self.stop = threading.Event()
        self.counts = {"admissions": 0, "lab_results": 0, "discharges": 0, "note_edits": 0}
        self.column_added = False
        self.leak_planted = False
        self.error: str | None = None

    def run(self) -> None:
        rng = random.Random(11)
        try:
            con = connect(self.dsn, application_name="clinipipe-demo")
        except Exception as exc:
            self.error = type(exc).__name__
            return
        try:
            with con.cursor() as cur:
                cur.execute("SELECT encounter_id, patient_id FROM encounters "
                            "ORDER BY random() LIMIT 2000")  # fmt: skip
                pool = cur.fetchall()
                cur.execute("SELECT note_id FROM clinical_notes ORDER BY random() LIMIT 2000")
                notes = [r[0] for r in cur.fetchall()]
                cur.execute("SELECT (SELECT coalesce(max(encounter_id), 0) FROM encounters), "
                            "(SELECT coalesce(max(lab_id), 0) FROM labs)")  # fmt: skip
                row = cur.fetchone()
                assert row is not None
                next_encounter, next_lab = int(row[0]) + 1, int(row[1]) + 1
            con.commit()
            admitted: list[int] = []
            start = time.monotonic()
            tick = 0
            while not self.stop.is_set() and time.monotonic() - start < self.seconds:
                elapsed = time.monotonic() - start
                with con.cursor() as cur:
                    if not self.column_added and elapsed >= self.add_column_at:
                        cur.execute("ALTER TABLE labs ADD COLUMN specimen_source text "
                                    "DEFAULT 'venous blood'")  # fmt: skip
                        con.commit()
                        self.column_added = True
                    if not self.leak_planted and elapsed >= self.leak_at:
                        cur.execute("UPDATE medications SET frequency = %s WHERE "
                                    "medication_id = (SELECT min(medication_id) FROM medications)",
                                    (LEAK,))  # fmt: skip
                        self.leak_planted = True
                    encounter, patient = rng.choice(pool)
                    cur.execute(
                        "INSERT INTO encounters (encounter_id, patient_id, provider_id, "
                        "encounter_type, department, admit_ts, discharge_ts, primary_dx, "
                        "account_number) SELECT %s, patient_id, provider_id, 'inpatient', "
                        "department, now(), NULL, primary_dx, %s FROM encounters "
                        "WHERE encounter_id = %s",
                        (next_encounter, f"DEMO{next_encounter % 10**9}", encounter),
                    )
                    admitted.append(next_encounter)
                    next_encounter += 1
                    columns = ", specimen_source" if self.column_added else ""
                    value = ", 'arterial blood'" if self.column_added else ""
                    for _ in range(2):
                        encounter, patient = rng.choice(pool)
                        cur.execute(
                            "INSERT INTO labs (lab_id, encounter_id, patient_id, loinc_code, "
                            "test_name, value_numeric, unit, ref_low, ref_high, abnormal_flag, "
                            f"collected_ts{columns}) VALUES (%s, %s, %s, '2951-2', 'Sodium', "
                            f"%s, 'mmol/L', 135, 145, NULL, now(){value})",
                            (next_lab, encounter, patient, rng.randint(130, 150)),
                        )
                        next_lab += 1
                    if len(admitted) > 3:
                        cur.execute("UPDATE encounters SET discharge_ts = now() "
                                    "WHERE encounter_id = %s", (admitted.pop(0),))  # fmt: skip
                        self.counts["discharges"] += 1
                    cur.execute("UPDATE clinical_notes SET note_text = note_text || %s "
                                "WHERE note_id = %s",
                                ("\nAddendum: reviewed, stable.", rng.choice(notes)))  # fmt: skip
                con.commit()
                self.counts["admissions"] += 1
                self.counts["lab_results"] += 2
                self.counts["note_edits"] += 1
                tick += 1
                time.sleep(max(0.0, start + tick * 0.2 - time.monotonic()))
        except Exception as exc:  # the type only: a message may quote a value
            self.error = type(exc).__name__
            with contextlib.suppress(Exception):
                con.rollback()
        finally:
            con.close()


# --- the demo -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    for key in ENV_KEYS:
        os.environ.pop(key, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _project_dir(keep: Path | None) -> Path:
    if keep is None:
        return Path(tempfile.mkdtemp(prefix="clinipipe-demo-"))
    folder = keep.expanduser().resolve()
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            raise DemoError(f"{folder} exists and was not made by clinipipe demo; choose another "
                            "--keep folder", usage=True)  # fmt: skip
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _source_counts(dsn: str, tables: list[str]) -> dict[str, int]:
    con = connect(dsn, application_name="clinipipe-demo")
    try:
        with con.cursor() as cur:
            counts = {}
            for table in tables:
                cur.execute(f'SELECT count(*) FROM "{table}"')
                row = cur.fetchone()
                counts[table] = int(row[0]) if row else 0
        return counts
    finally:
        con.close()


def _wait_caught_up(dsn: str, slot: str, timeout: float) -> bool:
    """Wait until the slot confirmed everything committed on the source so far."""
    con = connect(dsn, application_name="clinipipe-demo")
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute("SELECT pg_current_wal_insert_lsn()")
            row = cur.fetchone()
            assert row is not None
            goal = row[0]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                cur.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                            "WHERE slot_name = %s", (goal, slot))  # fmt: skip
                found = cur.fetchone()
                if found and found[0]:
                    return True
                time.sleep(0.1)
            return False
    finally:
        con.close()


def run_demo(options: DemoOptions, on_step: Step) -> dict[str, Any]:
    """Run the demo; return its summary. Cleans up on every exit (module docstring)."""
    if options.patients < 100 or options.seconds < 5:
        raise DemoError("--patients must be >= 100 and --seconds >= 5", usage=True)
    with _ctrl_c_remembered(on_step) as step:
        return _run(options, step)


def _run(options: DemoOptions, on_step: Step) -> dict[str, Any]:
    began = time.monotonic()
    project = _project_dir(options.keep)
    summary: dict[str, Any] = {"patients": options.patients, "seconds_of_traffic": options.seconds}
    try:
        (project / MARKER).touch()
        on_step("project", str(project))
        on_step("PostgreSQL", "")
        with EmbeddedPostgres() as pg, _alert_receiver() as alerts:
            on_step("PostgreSQL", f"{pg.server_version_num // 10000} on {pg.host}:{pg.port} "
                    f"(pid {pg.pid})")  # fmt: skip
            webhook = f"http://127.0.0.1:{alerts.server_port}/phi"
            env = {"CLINIPIPE_SOURCE_DSN": pg.dsn, "CLINIPIPE_HMAC_KEY": secrets.token_hex(32),
                   "CLINIPIPE_PHI_WEBHOOK_URL": webhook}  # fmt: skip
            (project / "clinipipe.yaml").write_text(_spec_text("demo_hospital"), encoding="utf-8")
            (project / ".env").write_text(
                "# Written by clinipipe demo. The demo's PostgreSQL is gone once it ended: point\n"
                "# CLINIPIPE_SOURCE_DSN at a server of yours to go on from this warehouse.\n"
                + "".join(f"{k}={v}\n" for k, v in env.items() if k != "CLINIPIPE_PHI_WEBHOOK_URL"),
                encoding="utf-8",
            )  # fmt: skip
            (project / ".env").chmod(0o600)
            with _environment(env):
                _pipeline(options, project, pg.dsn, alerts, summary, on_step)
        summary["seconds"] = round(time.monotonic() - began, 1)
        summary["project"] = str(project) if options.keep is not None else None
        return summary
    finally:
        if options.keep is None:
            shutil.rmtree(project, ignore_errors=True)


@contextlib.contextmanager
def _ctrl_c_remembered(on_step: Step) -> Iterator[Step]:
    """`on_step`, raising KeyboardInterrupt at every step once Ctrl-C was pressed. DuckDB's
    Python client checks for signals inside a query and may consume a Ctrl-C that arrives as
    the query ends (the query completes, no exception): the flag set here outlives that, so
    the demo stops at the next step instead of running on, and a failure after Ctrl-C (DuckDB
    raises RuntimeError for an interrupted query) is an interruption. Main thread only; the
    previous SIGINT handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield on_step
        return
    pressed = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        pressed.set()
        raise KeyboardInterrupt

    def step(name: str, detail: str) -> None:
        if pressed.is_set():
            raise KeyboardInterrupt
        on_step(name, detail)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield step
    except Exception:
        if pressed.is_set():  # e.g. DuckDB's "Query interrupted": the demo was interrupted
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


def _timed(on_step: Step, name: str) -> Callable[[str], None]:
    on_step(name, "")
    started = time.monotonic()

    def done(detail: str) -> None:
        on_step(name, f"{detail} ({time.monotonic() - started:.1f} s)")

    return done


def _pipeline(options: DemoOptions, project: Path, dsn: str, alerts: _Alerts,
              summary: dict[str, Any], on_step: Step) -> None:  # fmt: skip
    from clinipipe.pipeline.backfill import BackfillInterrupted, BackfillOptions, run_backfill
    from clinipipe.pipeline.deploy import deploy
    from clinipipe.synth import run_synth

    done = _timed(on_step, "synthesize")
    synth = run_synth(dsn, options.patients, options.seed)
    done(f"{sum(synth.rows.values()):,} rows")
    loaded = load_spec(project / "clinipipe.yaml")
    tables = [t.name for t in loaded.spec.source.tables]
    counts = _source_counts(dsn, tables)

    done = _timed(on_step, "deploy")
    result = deploy(loaded)
    done(f"{result.statements_run} statements")

    done = _timed(on_step, "backfill")
    try:
        backfill = run_backfill(loaded, BackfillOptions(workers=2))
    except BackfillInterrupted:
        raise KeyboardInterrupt from None
    seconds = max(backfill.seconds, 1e-9)
    summary["backfill"] = {
        "source_rows": counts,
        "loaded_rows": {t.table: t.rows for t in backfill.tables.values()},
        "rows": backfill.rows,
        "seconds": round(backfill.seconds, 2),
        "rows_per_second": round(backfill.rows / seconds),
        "mb_per_second": round(backfill.bytes / 1e6 / seconds, 1),
    }
    done(f"{backfill.rows:,} rows, {backfill.rows / seconds:,.0f} rows/s")
    _live(options, loaded, dsn, alerts, summary, on_step)
    _afterwards(loaded, summary, on_step)


def _live(options: DemoOptions, loaded: LoadedSpec, dsn: str, alerts: _Alerts,
          summary: dict[str, Any], on_step: Step) -> None:  # fmt: skip
    """CDC with live traffic, the CDC and dashboard benchmarks inside the window."""
    window = options.seconds
    done = _timed(on_step, "cdc start")
    with cdc_process(loaded, timeout=60) as pid:
        done(f"streaming (pid {pid})")
        traffic = ClinicalTraffic(dsn, window, add_column_at=window / 3, leak_at=window / 2)
        started = dt.datetime.now(dt.timezone.utc)
        traffic.start()
        try:
            t0 = time.monotonic()
            done = _timed(on_step, "traffic + CDC bench")
            cdc_seconds = max(3.0, window * 0.5)
            summary["cdc_bench"] = bench_cdc(loaded, rate=options.cdc_rate, seconds=cdc_seconds,
                                             settle=30, serving_wait=8)  # fmt: skip
            target = summary["cdc_bench"]["target"]
            done(f"p50 {target['p50']} ms, p99 {target['p99']} ms")
            board_seconds = max(2.0, min(10.0, window - (time.monotonic() - t0) - 2))
            done = _timed(on_step, "dashboard bench")
            summary["dashboard_bench"] = bench_dashboard(
                loaded, rate=options.dashboard_qps, seconds=board_seconds, processes=1,
                warmup=0.5)  # fmt: skip
            done(f"p99 {summary['dashboard_bench']['latency_ms']['p99']} ms")
            done = _timed(on_step, "rest of the traffic window")
            while traffic.is_alive():
                traffic.join(timeout=0.2)
            done(", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in traffic.counts.items()))
        finally:
            traffic.stop.set()
            traffic.join()
        if traffic.error:
            raise DemoError(f"the clinical traffic writer failed ({traffic.error})")
        done = _timed(on_step, "catch up and stop CDC")
        _wait_caught_up(dsn, loaded.spec.source.slot, 60)
        deadline = time.monotonic() + 10  # the alert is sent in the background
        while alerts.received == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    done("stopped cleanly")
    summary["traffic"] = {**traffic.counts, "column_added": traffic.column_added,
                          "leak_planted": traffic.leak_planted}  # fmt: skip
    summary["phi_alerts_received"] = alerts.received
    # The benchmarks ran while CDC held the warehouse: meter them now.
    for key, job, role in (("cdc_bench", "bench:cdc", "incremental"),
                           ("dashboard_bench", "bench:dashboard", "interactive")):  # fmt: skip
        from clinipipe.targets.metering import CpuClock

        if not summary[key]["metering"]["recorded"]:
            rows = summary[key].get("rows", summary[key].get("completed"))
            summary[key]["metering"] = meter(loaded, job, role, started, rows, None, CpuClock())


def _afterwards(loaded: LoadedSpec, summary: dict[str, Any], on_step: Step) -> None:
    from clinipipe.backup.service import (
        BackupOptions,
        backup_encryption_key,
        create_backup,
        open_store,
    )
    from clinipipe.backup.verify import verify_store
    from clinipipe.cost.report import build_report
    from clinipipe.pipeline.operations import cost_inputs
    from clinipipe.pipeline.publish import interactive_status
    from clinipipe.pipeline.redact import RedactOptions, redact
    from clinipipe.pipeline.refresh import dynamic_table_status
    from clinipipe.pipeline.scan import ScanOptions, run_scan
    from clinipipe.targets import open_target

    table, column = ADDED_COLUMN
    with open_target(loaded) as target:
        described = target.query(
            "SELECT column_name FROM information_schema.columns "
            f"WHERE table_schema = 'raw' AND table_name = '{table}'"
        )
        summary["added_column"] = {"table": table, "column": column,
                                   "in_warehouse": column in {r[0] for r in described}}  # fmt: skip
        summary["dynamic_tables"] = [
            {"name": s.name, "lag_seconds": s.lag_seconds,
             "target_lag_seconds": s.target_lag_seconds, "behind": s.behind,
             "refreshes": len(target.query(
                 "SELECT 1 FROM _clinipipe.dynamic_table_refresh_history "
                 f"WHERE name = '{s.name}' AND state = 'SUCCEEDED'"))}
            for s in dynamic_table_status(loaded, target)
        ]  # fmt: skip
        summary["interactive_tables"] = [
            {"name": s.name, "lag_seconds": s.lag_seconds,
             "target_lag_seconds": s.target_lag_seconds,
             "generation": s.last.generation if s.last else None}
            for s in interactive_status(loaded, target)
        ]  # fmt: skip
        done = _timed(on_step, "PHI scan")
        report = run_scan(loaded, ScanOptions(sample=None), target=target)  # every row
        planted = [f for f in report.findings
                   if (f.table, f.column) == ("medications", "frequency")]  # fmt: skip
        summary["phi"] = {
            "findings": len(report.findings),
            "by_severity": report.counts()["severity"],
            "planted_leak_found": bool(planted),
            "planted_leak": {"table": "medications", "column": "frequency",
                             "categories": sorted({f.category for f in planted})},
            "alerts_received": summary.pop("phi_alerts_received"),
        }  # fmt: skip
        done(f"{len(report.findings):,} findings, planted leak "
             + ("found" if planted else "NOT found"))  # fmt: skip
        done = _timed(on_step, "redact (Safe Harbor)")
        # Free-text notes go through the detectors row by row (~1,500 notes/s on 2 cores):
        # above NOTES_UP_TO patients they would not fit the demo's 3 minutes.
        notes = int(summary["patients"]) <= NOTES_UP_TO
        tables = None if notes else [t for t in (x.name for x in loaded.spec.source.tables)
                                     if t != "clinical_notes"]  # fmt: skip
        redacted = redact(loaded, RedactOptions(policy="safe_harbor", tables=tables),
                          target=target)  # fmt: skip
        summary["redact"] = {"schema": redacted.schema, "tables": len(redacted.tables),
                             "rows": sum(t.rows for t in redacted.tables),
                             "clean": redacted.clean,
                             "left_out": [] if notes else ["clinical_notes"]}  # fmt: skip
        done(
            f"{len(redacted.tables)} tables in {redacted.schema}, "
            + ("final scan clean" if redacted.clean else "final scan found PHI")
        )
        done = _timed(on_step, "backup + verify")
        backup = create_backup(loaded, target, BackupOptions())
    report_v = verify_store(open_store(loaded), backup_id=backup.backup_id, read_data=True,
                            encryption_key=backup_encryption_key(loaded))  # fmt: skip
    summary["backup"] = {"id": backup.backup_id, "tables": len(backup.tables),
                         "bytes": backup.bytes_written, "verified": report_v.ok,
                         "objects_checked": report_v.objects,
                         "problems": [p.message for p in report_v.problems]}  # fmt: skip
    done(f"{backup.backup_id}: " + ("verified" if report_v.ok else "PROBLEMS"))
    done = _timed(on_step, "cost report")
    now = dt.datetime.now(dt.timezone.utc)
    got = cost_inputs(loaded, 1, now)
    cost = build_report(loaded.spec, got.metered, start=got.start, end=got.end,
                        compare="MEDIUM", backfill_hours=24.0, billed=got.billed)  # fmt: skip
    data = cost.as_dict()
    summary["cost"] = {
        "credit_price_usd": data["credit_price_usd"],
        "warehouses": [{"role": w["role"], "name": w["name"], "size": w["size"],
                        "credits": round(w["credits"], 4), "usd": round(w["usd"], 2)}
                       for w in data["warehouses"]],
        "total_credits": round(data["total"]["credits"], 4),
        "total_usd": round(data["total"]["usd"], 2),
        "first_year_credits": round(data["first_year"]["credits"], 2),
        "single_warehouse": [{"kind": s["kind"], "size": s["size"],
                              "first_year_credits": round(s["first_year_credits"], 2),
                              "saving_first_year_pct": s["saving"]["first_year_pct"]}
                             for s in data["comparison"]],
    }  # fmt: skip
    done(f"{data['total']['credits']:.3f} credits")
