"""PHI leak alerts: a webhook (plain JSON or PagerDuty Events v2) sent from a background thread.

Guarantees:

* **Never blocks the caller.** `AlertSender.send` puts the alert on a bounded queue and returns
  at once; when the queue is full the alert is dropped and counted (`AlertStats.dropped`). A
  dead or slow endpoint costs the caller nothing: retries, backoff and timeouts happen on the
  sender's own daemon thread.
* **Retried.** A network error, a timeout, HTTP 429 or a 5xx is retried up to `retries` times
  with exponential backoff (0.5 s, 1 s, 2 s, ... capped at 30 s; a 429's Retry-After is honoured
  up to that cap); any other 4xx is a permanent failure. Every alert ends counted exactly once
  as sent, failed or dropped.
* **No PHI, no secrets.** An alert carries where a finding is (schema, table, column, row key),
  what it is (category, severity, confidence, detector) and its character offsets, never the
  text or an excerpt of it (the masked excerpt stays in `_clinipipe.phi_findings`). The webhook
  URL and the routing key come from the environment and never appear in a message: the
  endpoint is named by scheme and host only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import queue
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clinipipe.phi.scan import Finding, max_severity
from clinipipe.spec.model import PhiAlertsSpec

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
PAGERDUTY_SEVERITY = {"high": "critical", "medium": "error", "low": "warning"}
"""clinipipe severity -> PagerDuty Events v2 `payload.severity`."""

MAX_FINDINGS_PER_ALERT = 100
"""An alert lists at most this many findings (it says how many there were in all)."""

BACKOFF_START, BACKOFF_CAP = 0.5, 30.0
USER_AGENT = "clinipipe-phi-alerts"


class AlertConfigError(ValueError):
    """The alert settings cannot work (a variable is not set); the message says which."""


@dataclass(frozen=True)
class Alert:
    """One alert: the findings of one CDC batch (or one scan) that reached `min_severity`."""

    pipeline: str
    findings: tuple[Finding, ...]
    found_by: str = "cdc"
    context: Mapping[str, Any] = field(default_factory=dict)
    """Non-PHI facts about where the findings came from (e.g. the batch's slot and end LSN)."""
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    @property
    def severity(self) -> str:
        return max_severity(self.findings) or "low"

    @property
    def dedup_key(self) -> str:
        """Stable for the same set of findings (a re-sent alert deduplicates at PagerDuty)."""
        ids = sorted(f.finding_id for f in self.findings)
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]
        return f"clinipipe-phi-{self.pipeline}-{digest}"

    def summary(self) -> str:
        """One line (<= 1024 characters, PagerDuty's limit) naming categories and places."""
        categories = sorted({f.category for f in self.findings})
        places = sorted({f"{f.schema}.{f.table}.{f.column}" for f in self.findings})
        shown = ", ".join(places[:5]) + (f" and {len(places) - 5} more" if len(places) > 5 else "")
        count = len(self.findings)
        text = (
            f"PHI found where it must not be: {count} finding{'s' if count != 1 else ''} "
            f"({', '.join(categories)}; max severity {self.severity}) in {shown} "
            f"[pipeline {self.pipeline}]"
        )
        return text[:1024]

    def details(self) -> dict[str, Any]:
        """The structured part both formats carry (no text, no excerpt)."""
        counts: dict[str, int] = {}
        for f in self.findings:
            counts[f.category] = counts.get(f.category, 0) + 1
        return {
            "pipeline": self.pipeline,
            "found_by": self.found_by,
            "detected_at": self.created_at.isoformat(),
            "severity": self.severity,
            "finding_count": len(self.findings),
            "categories": counts,
            "findings_table": "_clinipipe.phi_findings",
            "context": dict(self.context),
            "findings": [f.alert_dict() for f in self.findings[:MAX_FINDINGS_PER_ALERT]],
            "truncated": len(self.findings) > MAX_FINDINGS_PER_ALERT,
        }


def json_body(alert: Alert) -> dict[str, Any]:
    """The plain JSON webhook body."""
    return {
        "source": "clinipipe",
        "event": "phi_leak",
        "summary": alert.summary(),
        "dedup_key": alert.dedup_key,
        **alert.details(),
    }


def pagerduty_body(alert: Alert, routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 `trigger` event."""
    places = sorted({f"{f.schema}.{f.table}" for f in alert.findings})
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.dedup_key,
        "client": "clinipipe",
        "payload": {
            "summary": alert.summary(),
            "source": f"clinipipe/{alert.pipeline}",
            "severity": PAGERDUTY_SEVERITY[alert.severity],
            "timestamp": alert.created_at.isoformat(),
            "component": places[0] if len(places) == 1 else "multiple tables",
            "group": "phi-scan",
            "class": "phi_leak",
            "custom_details": alert.details(),
        },
    }


def endpoint_name(url: str) -> str:
    """How messages name a webhook: scheme and host only (paths and queries carry tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


@dataclass
class AlertStats:
    """What happened to the alerts handed to a sender. sent + failed + dropped + pending
    equals queued."""

    queued: int = 0
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    attempts: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


Poster = Callable[[str, bytes, Mapping[str, str], float], tuple[int, Mapping[str, str]]]


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> tuple[int, Any]:
    """POST `body`; return (HTTP status, response headers). Network errors raise OSError."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(65536)
            return response.status, response.headers
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers


class AlertSender:
    """Sends alerts to one webhook from a background daemon thread. Use `close()` (or a
    `with` block) to let queued alerts go out (up to a deadline) and stop the thread."""

    def __init__(
        self,
        url: str,
        *,
        format: str = "json",
        routing_key: str | None = None,
        timeout_seconds: float = 5.0,
        retries: int = 3,
        queue_size: int = 100,
        backoff_start: float = BACKOFF_START,
        backoff_cap: float = BACKOFF_CAP,
        post: Poster | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if format not in ("json", "pagerduty"):
            raise AlertConfigError(f"unknown alert format {format!r}: use json or pagerduty")
        if format == "pagerduty" and not routing_key:
            raise AlertConfigError("the PagerDuty format needs a routing key")
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise AlertConfigError("the webhook URL must start with http:// or https://")
        self.url = url
        self.endpoint = endpoint_name(url)
        self.format = format
        self._routing_key = routing_key
        self.timeout = timeout_seconds
        self.retries = retries
        self.backoff_start, self.backoff_cap = backoff_start, backoff_cap
        self._post = post or _post
        self._on_event = on_event
        self.stats = AlertStats()
        self._queue: queue.Queue[Alert] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._thread = threading.Thread(target=self._run, name="clinipipe-phi-alerts", daemon=True)
        self._thread.start()

    @classmethod
    def from_spec(cls, spec: PhiAlertsSpec, env: Mapping[str, str], **options: Any) -> AlertSender:
        """A sender for the spec's `phi.alerts`, its secrets read from `env`.

        Raises `AlertConfigError` naming the variable that is not set (never its value).
        """
        url = env.get(spec.webhook_url_env, "").strip()
        if not url:
            if spec.format != "pagerduty":
                raise AlertConfigError(
                    f"phi.alerts is configured but {spec.webhook_url_env} is not set: export the "
                    "webhook URL in that variable (or in .env next to the spec)"
                )
            url = PAGERDUTY_EVENTS_URL
        routing_key = None
        if spec.format == "pagerduty":
            routing_key = env.get(spec.routing_key_env, "").strip()
            if not routing_key:
                raise AlertConfigError(
                    f"phi.alerts.format is pagerduty but {spec.routing_key_env} is not set: "
                    "export the PagerDuty integration key in that variable"
                )
        return cls(
            url,
            format=spec.format,
            routing_key=routing_key,
            timeout_seconds=spec.timeout_seconds,
            retries=spec.retries,
            queue_size=spec.queue_size,
            **options,
        )

    # --- the caller's side ---------------------------------------------------------------------

    def send(self, alert: Alert) -> bool:
        """Queue `alert`; never blocks. False (and counted as dropped) when the queue is full
        or the sender is closed."""
        with self._lock:
            self.stats.queued += 1
            if self._stop.is_set():
                self.stats.dropped += 1
                return False
            try:
                self._queue.put_nowait(alert)
            except queue.Full:
                self.stats.dropped += 1
                self._event(f"alert queue full ({self._queue.maxsize}): an alert was dropped")
                return False
            return True

    def flush(self, timeout: float) -> bool:
        """Wait until every queued alert is sent or has failed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy or not self._queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def close(self, drain_seconds: float | None = None) -> AlertStats:
        """Give queued alerts up to `drain_seconds` (default: one timeout plus a second) to go
        out, then stop; alerts still queued are counted as dropped. Idempotent."""
        if drain_seconds is None:
            drain_seconds = self.timeout + 1.0
        if not self._stop.is_set():
            self.flush(drain_seconds)
            self._stop.set()
            self._thread.join(self.timeout + 1.0)
            with self._lock:
                while True:
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        break
                    self.stats.dropped += 1
        return self.stats

    def __enter__(self) -> AlertSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the sender thread ---------------------------------------------------------------------

    def _event(self, message: str) -> None:
        if self._on_event is not None:
            with contextlib.suppress(Exception):  # a broken logger must not stop the sender
                self._on_event(message)

    def body(self, alert: Alert) -> bytes:
        """The request body for `alert` in this sender's format."""
        if self.format == "pagerduty":
            assert self._routing_key is not None
            data = pagerduty_body(alert, self._routing_key)
        else:
            data = json_body(alert)
        return json.dumps(data, default=str).encode()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alert = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._lock:
                self._busy += 1
            try:
                ok = self._deliver(alert)
            except Exception as exc:  # never let the thread die
                ok = False
                self._record_error(f"internal error: {type(exc).__name__}")
            with self._idle:
                self._busy -= 1
                if ok:
                    self.stats.sent += 1
                else:
                    self.stats.failed += 1
                self._idle.notify_all()

    def _record_error(self, reason: str) -> None:
        with self._lock:
            self.stats.last_error = reason

    def _deliver(self, alert: Alert) -> bool:
        body = self.body(alert)
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        delay = self.backoff_start
        for attempt in range(self.retries + 1):
            with self._lock:
                self.stats.attempts += 1
            retry_after: float | None = None
            try:
                status, response_headers = self._post(self.url, body, headers, self.timeout)
            except (OSError, ValueError) as exc:  # refused, timeout, DNS, TLS
                cause = getattr(exc, "reason", None)  # URLError wraps the socket's error
                kind = type(cause if isinstance(cause, BaseException) else exc).__name__
                reason = f"{self.endpoint}: {kind}"
                status = None
            else:
                if 200 <= status < 300:
                    return True
                reason = f"{self.endpoint} answered HTTP {status}"
                if status != 429 and status < 500:
                    self._record_error(reason)
                    self._event(f"PHI alert rejected ({reason}); not retried")
                    return False
                retry_after = _retry_after(response_headers)
            self._record_error(reason)
            if attempt == self.retries:
                break
            wait = min(self.backoff_cap, retry_after if retry_after is not None else delay)
            wait *= 1 + random.uniform(0, 0.1)  # jitter
            if self._stop.wait(wait):
                break
            delay = min(self.backoff_cap, delay * 2)
        self._event(f"PHI alert not delivered ({reason}) after {attempt + 1} attempt(s)")
        return False


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def alert_for(
    findings: Sequence[Finding],
    pipeline: str,
    min_severity: str,
    *,
    found_by: str = "cdc",
    context: Mapping[str, Any] | None = None,
) -> Alert | None:
    """The alert for `findings` at or above `min_severity`, or None when there is none."""
    from clinipipe.phi.categories import severity_rank

    floor = severity_rank(min_severity)
    kept = tuple(f for f in findings if severity_rank(f.severity) >= floor)
    if not kept:
        return None
    return Alert(pipeline, kept, found_by, dict(context or {}))
