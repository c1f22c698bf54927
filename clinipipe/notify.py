"""Webhook delivery shared by every kind of alert (PHI leaks, cost anomalies): a plain JSON or
PagerDuty Events v2 POST sent from a background thread.

This module knows nothing of what an alert says: it sends any `Notification` (an object that
renders its own JSON and PagerDuty bodies). It imports nothing from clinipipe, so every layer may
use it (`clinipipe.phi.alerts`, `clinipipe.cost.alerts`).

Guarantees:

* **Never blocks the caller.** `WebhookSender.send` puts the notification on a bounded queue and
  returns at once; when the queue is full it is dropped and counted (`AlertStats.dropped`). A
  dead or slow endpoint costs the caller nothing: retries, backoff and timeouts happen on the
  sender's own daemon thread.
* **Retried.** A network error, a timeout, HTTP 429 or a 5xx is retried up to `retries` times
  with exponential backoff (0.5 s, 1 s, 2 s, ... capped at 30 s; a 429's Retry-After is honoured
  up to that cap); any other 4xx is a permanent failure. Every notification ends counted exactly
  once as sent, failed or dropped.
* **No secrets.** The webhook URL (it often carries a token) and the routing key never appear
  in a message or an error: the endpoint is named by scheme and host only.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
BACKOFF_START, BACKOFF_CAP = 0.5, 30.0
FORMATS = ("json", "pagerduty")


class AlertConfigError(ValueError):
    """The alert settings cannot work (a variable is not set); the message says which."""


class Notification(Protocol):
    """What a sender can deliver: an alert that renders its own request bodies."""

    def json_body(self) -> dict[str, Any]:
        """The plain JSON webhook body."""
        ...

    def pagerduty_body(self, routing_key: str) -> dict[str, Any]:
        """A PagerDuty Events API v2 event carrying `routing_key`."""
        ...


def endpoint_name(url: str) -> str:
    """How messages name a webhook: scheme and host only (paths and queries carry tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def webhook_settings(
    env: Mapping[str, str],
    *,
    section: str,
    url_env: str,
    format: str,
    routing_key_env: str,
) -> tuple[str, str | None]:
    """(url, routing key) for a spec section (`phi.alerts`, `cost.alerts`) from `env`.

    Raises `AlertConfigError` naming the variable that is not set (never its value). Without a
    URL the PagerDuty format posts to PagerDuty's Events API."""
    url = env.get(url_env, "").strip()
    if not url:
        if format != "pagerduty":
            raise AlertConfigError(
                f"{section} is configured but {url_env} is not set: export the "
                "webhook URL in that variable (or in .env next to the spec)"
            )
        url = PAGERDUTY_EVENTS_URL
    routing_key = None
    if format == "pagerduty":
        routing_key = env.get(routing_key_env, "").strip()
        if not routing_key:
            raise AlertConfigError(
                f"{section}.format is pagerduty but {routing_key_env} is not set: "
                "export the PagerDuty integration key in that variable"
            )
    return url, routing_key


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


class WebhookSender:
    """Sends notifications to one webhook from a background daemon thread. Use `close()` (or a
    `with` block) to let queued ones go out (up to a deadline) and stop the thread.

    `label` names what is sent in event messages ("PHI alert", "cost alert"); `user_agent` and
    `thread_name` identify the sender."""

    label = "alert"
    user_agent = "clinipipe-alerts"
    thread_name = "clinipipe-alerts"

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
        if format not in FORMATS:
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
        self._queue: queue.Queue[Notification] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    # --- the caller's side ---------------------------------------------------------------------

    def send(self, alert: Notification) -> bool:
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

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the sender thread ---------------------------------------------------------------------

    def _event(self, message: str) -> None:
        if self._on_event is not None:
            with contextlib.suppress(Exception):  # a broken logger must not stop the sender
                self._on_event(message)

    def body(self, alert: Notification) -> bytes:
        """The request body for `alert` in this sender's format."""
        if self.format == "pagerduty":
            assert self._routing_key is not None
            data = alert.pagerduty_body(self._routing_key)
        else:
            data = alert.json_body()
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

    def _deliver(self, alert: Notification) -> bool:
        body = self.body(alert)
        headers = {"Content-Type": "application/json", "User-Agent": self.user_agent}
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
                    self._event(f"{self.label} rejected ({reason}); not retried")
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
        self._event(f"{self.label} not delivered ({reason}) after {attempt + 1} attempt(s)")
        return False


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None
