"""PHI leak alerts: a webhook (plain JSON or PagerDuty Events v2) sent from a background thread.

The delivery (queue, thread, retries, timeouts) is `clinipipe.notify.WebhookSender`, shared with
the cost alerts; this module says what a PHI alert contains. Guarantees:

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

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clinipipe.notify import (
    BACKOFF_CAP,
    BACKOFF_START,
    PAGERDUTY_EVENTS_URL,
    AlertConfigError,
    AlertStats,
    WebhookSender,
    endpoint_name,
    webhook_settings,
)
from clinipipe.phi.scan import Finding, max_severity
from clinipipe.spec.model import PhiAlertsSpec

__all__ = [
    "BACKOFF_CAP",
    "BACKOFF_START",
    "PAGERDUTY_EVENTS_URL",
    "Alert",
    "AlertConfigError",
    "AlertSender",
    "AlertStats",
    "alert_for",
    "endpoint_name",
    "json_body",
    "pagerduty_body",
]

PAGERDUTY_SEVERITY = {"high": "critical", "medium": "error", "low": "warning"}
"""clinipipe severity -> PagerDuty Events v2 `payload.severity`."""

MAX_FINDINGS_PER_ALERT = 100
"""An alert lists at most this many findings (it says how many there were in all)."""

USER_AGENT = "clinipipe-phi-alerts"


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

    def json_body(self) -> dict[str, Any]:
        """The plain JSON webhook body (`clinipipe.notify.Notification`)."""
        return json_body(self)

    def pagerduty_body(self, routing_key: str) -> dict[str, Any]:
        """The PagerDuty Events v2 body (`clinipipe.notify.Notification`)."""
        return pagerduty_body(self, routing_key)


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


class AlertSender(WebhookSender):
    """Sends PHI alerts to one webhook (`clinipipe.notify.WebhookSender`: a background thread,
    a bounded queue, retries). Use `close()` (or a `with` block) to let queued alerts go out."""

    label = "PHI alert"
    user_agent = USER_AGENT
    thread_name = "clinipipe-phi-alerts"

    @classmethod
    def from_spec(cls, spec: PhiAlertsSpec, env: Mapping[str, str], **options: Any) -> AlertSender:
        """A sender for the spec's `phi.alerts`, its secrets read from `env`.

        Raises `AlertConfigError` naming the variable that is not set (never its value).
        """
        url, routing_key = webhook_settings(
            env,
            section="phi.alerts",
            url_env=spec.webhook_url_env,
            format=spec.format,
            routing_key_env=spec.routing_key_env,
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
