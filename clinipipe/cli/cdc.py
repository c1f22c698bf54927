"""`cdc start|status|reset`: change data capture by logical replication."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from clinipipe.cli.output import ExitCode, err, info, out, print_json
from clinipipe.cli.state import State

if TYPE_CHECKING:
    from clinipipe.pipeline.scan import CdcScanner  # PHI scan
    from clinipipe.spec import LoadedSpec  # PHI scan


def register(app: typer.Typer) -> None:
    cdc = typer.Typer(help="Change data capture by logical replication.", no_args_is_help=True)
    cdc.command("start")(start)
    cdc.command("status")(status)
    cdc.command("reset")(reset)
    app.add_typer(cdc, name="cdc")


def start(
    ctx: typer.Context,
    max_seconds: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds.")
    ] = None,
    until_caught_up: Annotated[
        bool, typer.Option("--until-caught-up", help="Stop once everything committed is applied.")
    ] = False,
    batch_rows: Annotated[
        int, typer.Option(min=1, help="Flush a batch at this many changes.")
    ] = 50_000,
    batch_ms: Annotated[int, typer.Option(min=1, help="Flush a batch after this many ms.")] = 1000,
    retry_for: Annotated[
        float,
        typer.Option(
            "--retry-for",
            min=0,
            help="Seconds to keep retrying a source that cannot be reached (connection refused, "
            "restarting) before exiting 1; 0: give up at once.",
        ),
    ] = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port).",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address the metrics endpoint listens on.")
    ] = "127.0.0.1",
) -> None:
    """Stream changes into the warehouse on the incremental warehouse, exactly once.

    While it runs it owns the warehouse and answers the other commands (status, refresh,
    publish, scan, redact) over a control socket next to it (mode 0600). SIGTERM or Ctrl-C:
    the current batch is finished, what is due is refreshed and published, exit 0 (3 when a
    table is paused).

    Examples:

      clinipipe cdc start

      clinipipe cdc start --until-caught-up --json

      clinipipe cdc start --metrics-port 9187"""
    from clinipipe.pipeline.cdc import CdcError, CdcLoop, CdcOptions
    from clinipipe.source.pgoutput import lsn_to_str

    state: State = ctx.obj
    loaded = state.spec()
    options = CdcOptions(max_seconds, until_caught_up, batch_rows, batch_ms, retry_for)
    scanner = _phi_scanner(loaded)  # PHI scan of every batch

    def on_batch(batch: object) -> None:
        from clinipipe.targets.base import CdcBatch

        assert isinstance(batch, CdcBatch)
        info(f"applied {batch.changes:,} changes ({len(batch.commit_times)} transactions) "
             f"up to {lsn_to_str(batch.end_lsn)}")  # fmt: skip
        found = scanner.on_batch(batch)  # PHI scan: never raises, alerts in the background
        if found:
            err.print(f"PHI found in this batch: {len(found)} finding(s), see "
                      "_clinipipe.phi_findings", style="red", markup=False)  # fmt: skip

    def on_staged(part: object) -> None:
        from clinipipe.targets.base import CdcBatch

        assert isinstance(part, CdcBatch)
        info(f"staged {part.changes:,} changes of a large transaction (committed with its batch)")
        found = scanner.on_batch(part, committed=False)  # staged ahead of its batch
        if found:
            err.print(f"PHI found in these changes: {len(found)} finding(s), see "
                      "_clinipipe.phi_findings", style="red", markup=False)  # fmt: skip

    service = _Service(loaded, scanner)  # control socket and metrics (after-batch jobs)
    try:
        service.start(metrics_port, metrics_host)  # first: "already running" before any lock
        _report_unscanned(scanner)
        info(f"Streaming from slot {loaded.spec.source.slot}; Ctrl-C stops after the current "
             "batch.")  # fmt: skip
        loop = CdcLoop(loaded, options, on_batch=on_batch, on_staged=on_staged,
                       on_event=lambda m: err.print(m, style="yellow", markup=False))  # fmt: skip
        for job in service.jobs:  # after the built-in refresh and publish jobs
            loop.register(job)
        summary = loop.run()
    except CdcError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.FAILURE) from None
    finally:
        service.close()
        phi_stats = _close_phi_scanner(scanner)  # PHI scan
    data = {
        "batches": summary.batches,
        "changes": summary.changes,
        "transactions": summary.transactions,
        "skipped_transactions": summary.skipped_transactions,
        "start_lsn": lsn_to_str(summary.start_lsn),
        "end_lsn": lsn_to_str(summary.end_lsn),
        "seconds": round(summary.seconds, 3),
        "refreshes": summary.refreshes,
        "publishes": summary.publishes,
        "publish_failures": summary.publish_failures,
        "phi_scan": phi_stats,  # PHI scan
        "paused_tables": summary.paused,
    }
    for failure in summary.publish_failures:
        err.print(f"warning: publish of interactive table {failure}", style="yellow", markup=False)
    if as_json:
        print_json(data)
    else:
        out.print(
            f"Applied {summary.changes:,} changes in {summary.batches} batches "
            f"({summary.transactions} transactions) from {data['start_lsn']} to {data['end_lsn']}."
        )
    for table, reason in summary.paused.items():
        err.print(f"error: table {table} is paused, its changes are not applied: {reason}",
                  style="red", markup=False)  # fmt: skip
    if summary.paused:
        raise typer.Exit(ExitCode.FOUND)


# --- the service: control socket and metrics (clinipipe.pipeline.control, .metrics) ------------


class _Service:
    """What `cdc start` serves while it runs: the control socket (other commands' requests,
    answered by the `ControlRequests` after-batch job) and, with --metrics-port, the metrics
    endpoint (fed by the `MetricsJob` after-batch job). `jobs` are registered with the loop."""

    def __init__(self, loaded: LoadedSpec, scanner: CdcScanner) -> None:
        self.loaded = loaded
        self.scanner = scanner
        self.jobs: list[Any] = []
        self.server: Any = None
        self.metrics: Any = None
        self.cost_sender: Any = None
        self.verify_sender: Any = None

    def start(self, metrics_port: int | None, metrics_host: str) -> None:
        """Exit 1 when another `cdc start` runs for this warehouse or the metrics port is
        taken; a socket that cannot be created is only a warning (CDC runs without it)."""
        from clinipipe.pipeline.control import ControlError, ControlRequests, ControlServer
        from clinipipe.pipeline.operations import HANDLERS

        server = ControlServer(self.loaded)
        try:
            server.start()
        except ControlError as exc:
            err.print(f"error: {exc}", style="red", markup=False)
            raise typer.Exit(ExitCode.FAILURE) from None
        except OSError as exc:
            err.print(
                f"warning: no control socket at {server.path} ({exc.strerror or exc}): other "
                "commands cannot reach the warehouse while CDC runs",
                style="yellow",
                markup=False,
            )
        else:
            self.server = server
            self.jobs.append(ControlRequests(server, HANDLERS))
            info(f"Control socket {server.path}: status, refresh, publish, scan and redact are "
                 "answered between batches")  # fmt: skip
        if metrics_port is not None:
            from clinipipe.pipeline.metrics import MetricsServer  # prometheus: only when asked

            scanner = self.scanner
            metrics = MetricsServer(
                metrics_port, metrics_host, phi_findings=lambda: scanner.stats.findings
            )
            try:
                metrics.start()
            except OSError as exc:
                err.print(f"error: cannot serve metrics on {metrics_host}:{metrics_port}: "
                          f"{exc.strerror or exc}", style="red", markup=False)  # fmt: skip
                raise typer.Exit(ExitCode.FAILURE) from None
            self.metrics = metrics
            self.jobs.append(metrics.job)
            info(f"Metrics at {metrics.url}")
        self._watch_cost()
        self._schedule_verify()

    def _schedule_verify(self) -> None:
        """With `verify.every` in the spec, a `VerifyJob` runs a sampled verify that often;
        differences are alerted to `verify.alerts` (exit 2 when a variable it names is unset)."""
        from clinipipe.notify import AlertConfigError
        from clinipipe.pipeline.cdc.after_batch import VerifyJob
        from clinipipe.pipeline.verify import VerifyAlert, VerifyReport, verify_sender

        settings = self.loaded.spec.verify
        if settings.every is None or settings.every.seconds is None:
            return
        try:
            sender = verify_sender(
                self.loaded, on_event=lambda m: err.print(f"warning: {m}", markup=False)
            )
        except AlertConfigError as exc:
            err.print(f"error: {exc}", style="red", markup=False)
            raise typer.Exit(ExitCode.USAGE) from None
        self.verify_sender = sender
        pipeline = self.loaded.spec.name

        def on_report(report: VerifyReport) -> None:
            counts = report.counts()
            if report.outcome == "differences":
                err.print(f"verify {report.run_id[:12]}: {report.differences} difference(s) "
                          "between the source and the warehouse, see _clinipipe.verify_runs",
                          style="red", markup=False)  # fmt: skip
                if sender is not None:
                    sender.send(VerifyAlert(pipeline, report))
            elif report.outcome == "cdc_behind":
                err.print(f"verify {report.run_id[:12]}: not verified ({report.message})",
                          style="yellow", markup=False)  # fmt: skip
            else:
                info(f"verify {report.run_id[:12]}: equal ({counts['rows']:,} rows sampled, "
                     f"{counts['keys_not_checked']} changed keys not checked)")  # fmt: skip

        self.jobs.append(VerifyJob(settings.every.seconds, settings.sample, on_report))
        alerts = f"alerts to {sender.endpoint}" if sender is not None else "no alerts"
        info(f"Verify of {settings.sample:g}% of the key ranges every {settings.every.text}; "
             f"{alerts}")  # fmt: skip

    def _watch_cost(self) -> None:
        """With `cost.alerts` in the spec, a `CostWatch` job checks spend anomalies and runaway
        jobs every 5 minutes and alerts the webhook (exit 2 when a variable it names is unset)."""
        from clinipipe.cost.anomalies import AlertConfigError, CostWatch, sender_for

        try:
            sender = sender_for(
                self.loaded, on_event=lambda m: err.print(f"warning: {m}", markup=False)
            )
        except AlertConfigError as exc:
            err.print(f"error: {exc}", style="red", markup=False)
            raise typer.Exit(ExitCode.USAGE) from None
        if sender is not None:
            self.cost_sender = sender
            self.jobs.append(CostWatch(sender))
            info("Cost anomalies are checked every 5 minutes and sent to cost.alerts")

    def close(self) -> None:
        """Fail what is still queued, remove the socket, stop the endpoint."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.cost_sender is not None:
            self.cost_sender.close()
            self.cost_sender = None
        if self.verify_sender is not None:
            self.verify_sender.close()
            self.verify_sender = None


# --- PHI scanners on every batch (clinipipe.pipeline.scan) -------------------------------------


def _phi_scanner(loaded: LoadedSpec) -> CdcScanner:
    """The scanner `cdc start` runs on every batch; a configuration problem exits 2 before
    anything streams."""
    from clinipipe.pipeline.scan import CdcScanner, ScanError

    def warn(message: str) -> None:
        err.print(f"warning: {message}", style="yellow", markup=False)

    try:
        scanner = CdcScanner(loaded, on_event=warn)
    except ScanError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.USAGE if exc.usage else ExitCode.FAILURE) from None
    alerts = "no alerts (phi.alerts not set)"
    if scanner.sender is not None:
        alerts = f"alerts to {scanner.sender.endpoint} ({scanner.sender.format})"
    info(f"PHI scan of every batch of {len(scanner.watched)} tables; {alerts}")
    return scanner


def _report_unscanned(scanner: CdcScanner) -> None:
    """Warn about CDC batches applied but never PHI-scanned (a previous `cdc start` stopped
    between applying and scanning them, or a scan failed). `TargetError` from an old
    warehouse is an error (exit 1) saying to deploy."""
    from clinipipe.source.pgoutput import lsn_to_str
    from clinipipe.targets.base import TargetError

    try:
        count, first, last = scanner.start()
    except TargetError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.FAILURE) from None
    if count:
        assert first is not None and last is not None
        err.print(
            f"warning: {count:,} CDC batch(es) applied from {lsn_to_str(first)} to "
            f"{lsn_to_str(last)} were never PHI-scanned (CDC stopped between applying and "
            "scanning them, or their scan failed): run `clinipipe scan --full` to cover them",
            style="yellow",
            markup=False,
        )


def _close_phi_scanner(scanner: CdcScanner) -> dict[str, object]:
    """Stop the scanner (queued alerts get a bounded time to go out); its stats, with a
    warning when alerts failed or were dropped or a batch could not be scanned."""
    stats = scanner.close()
    alerts = stats.alerts or {}
    if alerts.get("failed") or alerts.get("dropped"):
        err.print(
            f"warning: PHI alerts: {alerts.get('sent', 0)} sent, {alerts.get('failed', 0)} "
            f"failed, {alerts.get('dropped', 0)} dropped (last error: "
            f"{alerts.get('last_error') or '-'}); every finding is in _clinipipe.phi_findings",
            style="yellow",
            markup=False,
        )
    if stats.errors:
        err.print(
            f"warning: the PHI scan failed on {stats.errors} batch(es) ({stats.last_error}); "
            "run `clinipipe scan` to cover them",
            style="yellow",
            markup=False,
        )
    return stats.as_dict()


# --- end PHI scanners -------------------------------------------------------------------------


def status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Slot, confirmed position, lag, last batch and commit-to-apply latency percentiles.

    While `cdc start` runs it answers (with its live counters under `running`); otherwise the
    warehouse is opened read-only. The JSON has the same keys either way. Exit 3 when the slot
    holds back more WAL than source.lag_warning_mb or a table is paused; 1 when the slot is
    missing or invalidated.

    Examples:

      clinipipe cdc status

      clinipipe cdc status --json"""
    from clinipipe.pipeline.operations import cdc_status

    state: State = ctx.obj
    loaded = state.spec()
    slot = loaded.spec.source.slot
    data = cdc_status(loaded, notify=state.notify)
    lag, paused = data["lag_bytes"], data["paused_tables"]
    if as_json:
        print_json(data)
    else:
        out.print(_status_table(data))
    if data["lag_warning"]:
        err.print(
            f"warning: the slot holds back {lag / 1024 / 1024:,.0f} MB of WAL (more than "
            f"source.lag_warning_mb = {loaded.spec.source.lag_warning_mb}); is `clinipipe cdc "
            "start` running?",
            style="yellow",
        )
    if not data["slot_exists"] and not data["backfill_completed"]:
        err.print(
            f"replication slot {slot!r} is missing: no backfill yet. Run `clinipipe backfill` "
            "(it creates the slot), then `clinipipe cdc start`",
            style="red",
        )
        raise typer.Exit(ExitCode.FAILURE)
    if not data["slot_exists"] or data["slot_status"] == "lost":
        err.print(
            f"replication slot {slot!r} is "
            f"{'missing' if not data['slot_exists'] else 'invalidated'}: changes since the "
            "last checkpoint cannot be streamed. Run `clinipipe cdc reset "
            "--yes`, then `clinipipe backfill`",
            style="red",
        )
        raise typer.Exit(ExitCode.FAILURE)
    for table, reason in paused.items():
        err.print(f"paused: {table}: {reason}", style="yellow", markup=False)
    if data["lag_warning"] or paused:
        raise typer.Exit(ExitCode.FOUND)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} bytes"


def _ms(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _status_table(data: dict[str, Any]) -> Table:
    """`cdc status` for people: one readable line per fact (80 columns)."""
    table = Table(title=f"CDC for slot {data['slot']}", show_header=False, box=box.SIMPLE)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", overflow="fold")
    running = data["running"]
    if running is None:
        table.add_row("cdc start", "not running")
    else:
        live = running.get("stats") or {}
        rate = live.get("changes_per_second")
        facts = [f"running (pid {running.get('pid')})"]
        if live.get("state"):
            facts.append(str(live["state"]))
        if live.get("changes") is not None:
            facts.append(f"{live['changes']:,} changes in {live.get('batches', 0):,} batches")
        if rate:
            facts.append(f"{rate:,.1f} changes/s")
        table.add_row("cdc start", ", ".join(facts))
    if data["slot_exists"]:
        active = "in use" if data["slot_active"] else "not in use"
        table.add_row("slot", f"{data['slot_status']}, {active}")
    else:
        table.add_row("slot", "missing")
    table.add_row("confirmed", data["confirmed_lsn"] or "-")
    table.add_row("checkpoint", data["checkpoint_lsn"] or "-")
    lag = _bytes(data["lag_bytes"]) + ("  (above lag_warning_mb)" if data["lag_warning"] else "")
    table.add_row("lag", lag)
    last = data["last_batch_at"]
    if last is None:
        table.add_row("last batch", "-")
    else:
        when = last.astimezone() if isinstance(last, dt.datetime) else last
        shown = f"{when:%Y-%m-%d %H:%M:%S}" if isinstance(when, dt.datetime) else str(when)
        table.add_row("last batch", f"{shown}, {data['last_batch_changes']:,} changes")
    latency = data["latency_ms"]
    table.add_row(
        "latency",
        "-" if latency is None else
        f"p50 {_ms(latency['p50'])} · p95 {_ms(latency['p95'])} · p99 {_ms(latency['p99'])}",
    )  # fmt: skip
    paused = data["paused_tables"]
    table.add_row("paused", ", ".join(sorted(paused)) if paused else "none")
    return table


def reset(
    ctx: typer.Context,
    yes: Annotated[
        bool, typer.Option("--yes", help="Really drop the slot and checkpoints.")
    ] = False,
) -> None:
    """Drop the replication slot, the CDC checkpoints and the backfill's record (before a
    fresh backfill). Refused while `cdc start` runs. Recorded in the audit log.

    Examples:

      clinipipe cdc reset --yes && clinipipe backfill"""
    from clinipipe.pipeline import control
    from clinipipe.pipeline.operations import cdc_reset

    if not yes:
        err.print(
            "cdc reset drops the replication slot and forgets every checkpoint and the "
            "backfill: afterwards, reload with `clinipipe backfill`. Run again with --yes to "
            "proceed.",
            style="yellow",
        )
        raise typer.Exit(ExitCode.USAGE)
    state: State = ctx.obj
    loaded = state.spec()
    try:
        running = control.hello(loaded)
    except control.ControlError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(ExitCode.FAILURE) from None
    if running is not None:
        err.print(
            f"error: `cdc start` is running (pid {running.pid}): stop it first (Ctrl-C, or "
            "`systemctl stop`), then reset",
            style="red",
            markup=False,
        )
        raise typer.Exit(ExitCode.FAILURE)
    slot = loaded.spec.source.slot
    dropped = cdc_reset(loaded)
    out.print(
        f"{'Dropped' if dropped else 'No'} replication slot {slot}; checkpoints cleared. "
        "Next: `clinipipe backfill`."
    )
