"""PHI alerts against a real HTTP server on loopback: shape, retries, a dead endpoint, a full
queue, and no PHI or secret anywhere."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clinipipe.phi.alerts import (
    PAGERDUTY_EVENTS_URL,
    Alert,
    AlertConfigError,
    AlertSender,
    alert_for,
    endpoint_name,
)
from clinipipe.phi.scan import Finding
from clinipipe.spec.model import PhiAlertsSpec


@dataclass
class Hook:
    """A webhook receiver on 127.0.0.1: answers each POST with the next status of `script`
    (then 200), records every body, and can hold requests unanswered (`hold`)."""

    url: str
    bodies: list[dict[str, object]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    hold: threading.Event | None = None
    """When set: every request is held, unanswered, until this event is set (or 120 s pass,
    which `held_too_long` records: a test that needed that long has failed)."""
    holding: threading.Event = field(default_factory=threading.Event)
    """Set once a request is being held."""
    held_too_long: bool = False


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state.hold is not None:
                state.holding.set()
                if not state.hold.wait(120):
                    state.held_too_long = True
            status = state.script.pop(0) if state.script else 200
            state.raw.append(body)
            state.statuses.append(status)
            if status == 200:
                state.bodies.append(json.loads(body))
                state.arrived.set()
            try:
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
            except OSError:  # the client gave up on a held request
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T0K3N-secret-path"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        if state.hold is not None:
            state.hold.set()  # let held requests go before shutting down
        server.shutdown()
        server.server_close()


def dead_url() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def finding(severity: str = "high", category: str = "SSN", row: str = "lab_id=7") -> Finding:
    return Finding("raw", "labs", "test_name", row, category, severity, 0.97, "ssn",
                   "…SSN is [SSN] per…", 7, 18, "cdc")  # fmt: skip


def alert(*findings: Finding) -> Alert:
    return Alert("general_hospital", findings or (finding(),), "cdc", {"end_lsn": "0/16B3748"})


def test_json_alert_arrives_with_its_shape(hook: Hook) -> None:
    with AlertSender(hook.url) as sender:
        assert sender.send(alert(finding(), finding("medium", "PHONE", "lab_id=9")))
        assert sender.flush(10)
    assert sender.stats.sent == 1 and sender.stats.failed == sender.stats.dropped == 0
    body = hook.bodies[0]
    assert body["source"] == "clinipipe" and body["event"] == "phi_leak"
    assert body["severity"] == "high" and body["finding_count"] == 2
    assert body["categories"] == {"SSN": 1, "PHONE": 1}
    assert body["context"] == {"end_lsn": "0/16B3748"}
    first = body["findings"][0]  # type: ignore[index]
    assert {k: first[k] for k in ("schema", "table", "column", "row_key", "category")} == {
        "schema": "raw", "table": "labs", "column": "test_name", "row_key": "lab_id=7",
        "category": "SSN",
    }  # fmt: skip
    assert first["start"] == 7 and first["end"] == 18 and len(first["finding_id"]) == 32
    assert "masked_excerpt" not in first  # an alert leaves the hospital: no text at all
    assert "raw.labs.test_name" in str(body["summary"])


def test_pagerduty_events_v2_shape(hook: Hook) -> None:
    spec = PhiAlertsSpec(format="pagerduty")
    env = {"CLINIPIPE_PHI_WEBHOOK_URL": hook.url, "PAGERDUTY_ROUTING_KEY": "R0UTINGKEY"}
    with AlertSender.from_spec(spec, env) as sender:
        sender.send(alert(finding("medium", "PHONE")))
        assert sender.flush(10)
    body = hook.bodies[0]
    assert body["routing_key"] == "R0UTINGKEY" and body["event_action"] == "trigger"
    assert str(body["dedup_key"]).startswith("clinipipe-phi-general_hospital-")
    payload = body["payload"]
    assert isinstance(payload, dict)
    assert payload["severity"] == "error"  # medium
    assert payload["source"] == "clinipipe/general_hospital" and payload["component"] == "raw.labs"
    assert len(payload["summary"]) <= 1024 and payload["custom_details"]["finding_count"] == 1
    # The same findings deduplicate at PagerDuty.
    assert alert(finding("medium", "PHONE")).dedup_key == body["dedup_key"]


def test_retried_after_a_500_and_a_429(hook: Hook) -> None:
    hook.script = [500, 503, 429]
    with AlertSender(hook.url, retries=3, backoff_start=0.05) as sender:
        sender.send(alert())
        assert hook.arrived.wait(10)
        assert sender.flush(5)
    assert hook.statuses == [500, 503, 429, 200]
    assert sender.stats.sent == 1 and sender.stats.attempts == 4 and sender.stats.failed == 0
    assert len(hook.bodies) == 1


def test_gives_up_after_the_retries_and_a_4xx_is_not_retried(hook: Hook) -> None:
    hook.script = [500, 500, 500, 400]
    with AlertSender(hook.url, retries=2, backoff_start=0.01) as sender:
        sender.send(alert())
        sender.send(alert(finding(row="lab_id=8")))
        assert sender.flush(10)
    assert hook.statuses == [500, 500, 500, 400]
    assert sender.stats.sent == 0 and sender.stats.failed == 2 and sender.stats.attempts == 4
    assert sender.stats.last_error is not None and "HTTP 400" in sender.stats.last_error
    assert "T0K3N" not in sender.stats.last_error  # the URL's path is never shown


def test_a_hanging_endpoint_never_blocks_the_caller(hook: Hook) -> None:
    """Fifty sends return while the endpoint holds the first request unanswered."""
    hook.hold = threading.Event()
    sender = AlertSender(hook.url, timeout_seconds=600, retries=0, queue_size=3)
    assert sender.send(alert())
    assert hook.holding.wait(60)  # the sender is now stuck on the network ...
    accepted: list[bool] = []

    def fifty() -> None:
        accepted.extend(sender.send(alert(finding(row=f"lab_id={i}"))) for i in range(50))

    caller = threading.Thread(target=fifty, daemon=True)
    caller.start()
    caller.join(60)  # (a safety net only: a blocking send would wait for the 600 s timeout)
    assert not caller.is_alive(), "send() waited on the network"
    # ... and still is: the held request neither answered nor failed while the sends returned.
    assert not hook.hold.is_set() and not hook.statuses
    assert sender.stats.attempts == 1 and sender.stats.failed == 0
    assert accepted.count(True) == 3 and accepted.count(False) == 47  # the queue holds 3
    hook.hold.set()
    assert sender.flush(30)
    stats = sender.close()
    assert not hook.held_too_long
    assert stats.queued == 51 and stats.sent == 4 and stats.dropped == 47


def test_a_dead_endpoint_never_blocks_the_caller() -> None:
    events: list[str] = []
    sender = AlertSender(dead_url(), retries=5, backoff_start=0.2, queue_size=3,
                         on_event=events.append)  # fmt: skip
    accepted = [sender.send(alert(finding(row=f"lab_id={i}"))) for i in range(50)]
    stats = sender.close(drain_seconds=0.5)
    assert accepted.count(False) >= 46  # the queue holds 3 (one more may be in flight)
    assert stats.queued == 50
    assert stats.sent == 0 and stats.failed + stats.dropped == 50
    assert stats.last_error is not None and "ConnectionRefusedError" in stats.last_error
    assert any("dropped" in e for e in events)


def test_a_slow_endpoint_is_cut_by_the_timeout(hook: Hook) -> None:
    """The request fails by its timeout while the endpoint still holds it: the sender never
    waits for the endpoint's answer."""
    hook.hold = threading.Event()
    sender = AlertSender(hook.url, timeout_seconds=0.3, retries=0)
    sender.send(alert())
    assert sender.flush(60)  # the failure came ...
    assert hook.holding.is_set() and not hook.hold.is_set()  # ... the answer never did
    stats = sender.close()
    assert stats.failed == 1 and stats.sent == 0 and not hook.statuses
    assert stats.last_error is not None and "TimeoutError" in stats.last_error


def test_configuration_errors_name_the_variable_not_the_value() -> None:
    with pytest.raises(AlertConfigError, match="CLINIPIPE_PHI_WEBHOOK_URL is not set"):
        AlertSender.from_spec(PhiAlertsSpec(), {})
    with pytest.raises(AlertConfigError, match="PD_KEY is not set"):
        AlertSender.from_spec(PhiAlertsSpec(format="pagerduty", routing_key_env="PD_KEY"), {})
    with pytest.raises(AlertConfigError, match="http"):
        AlertSender.from_spec(PhiAlertsSpec(), {"CLINIPIPE_PHI_WEBHOOK_URL": "ftp://x/y"})
    sender = AlertSender.from_spec(
        PhiAlertsSpec(format="pagerduty"), {"PAGERDUTY_ROUTING_KEY": "k"}
    )
    assert sender.url == PAGERDUTY_EVENTS_URL  # no URL: PagerDuty's Events API
    sender.close(0)
    assert endpoint_name("https://hooks.example.org:8443/services/T0K3N?x=1") == (
        "https://hooks.example.org:8443"
    )


def test_alert_for_keeps_findings_at_or_above_the_minimum() -> None:
    low, high = finding("low", "DATE"), finding("high")
    assert alert_for([low], "p", "medium") is None
    made = alert_for([low, high], "p", "medium", context={"slot": "s"})
    assert made is not None and made.findings == (high,) and made.context == {"slot": "s"}
