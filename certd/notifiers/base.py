"""The Notifier Protocol and what every notifier shares: the payload, the one-line summary.

Every notifier renders the same `Notification` (certd/model.py); the webhook payload below is a
contract receivers are written against:

    {"event": "finding", "severity": "warning", "certificate": "shop", "domain":
     "shop.example.com", "node": "web/fe2", "check": "expiry", "days_remaining": 12.0,
     "not_after": "2025-07-01T00:00:00+00:00", "message": "certificate expires in 12.0 days",
     "at": "2025-06-19T00:00:00+00:00",
     "text": ":warning: certd: shop.example.com on web/fe2: certificate expires in 12.0 days (warning)"}
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Protocol

from certd.model import SEVERITY_RANK, Notification, Severity


class Notifier(Protocol):
    """Delivers notifications to people (a chat webhook, a mailbox, the log).

    - `send` delivers one notification or raises NotifyError (`transient=True` when a retry
      may help: timeouts, 5xx, refused connections); it does not retry by itself — the
      AlertBook (certd/monitor/alerts.py) retries, deduplicates and filters by `min_severity`.
    - Safe for concurrent use from one event loop; `send` never blocks the loop.
    - Never logs or returns secrets (passwords, tokens in headers).
    - `close` releases what the notifier opened itself (not the shared HTTP session, which
      its owner closes).
    """

    name: str  # 'webhook[hooks.example.org]', 'email[smtp.example.org]', 'log'
    min_severity: Severity

    async def send(self, notification: Notification) -> None: ...

    async def close(self) -> None: ...


def wants(notifier: Notifier, severity: Severity) -> bool:
    """Whether a notice routed at `severity` reaches this notifier."""
    return SEVERITY_RANK[severity] >= SEVERITY_RANK[notifier.min_severity]


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


def one_line(text: str, limit: int = 300) -> str:
    """`text` with control characters (CR, LF, TAB, ...) folded to one space, cut to `limit`:
    safe in a subject line, a log line, a chat message."""
    flat = _CONTROL.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


def subject(n: Notification) -> str:
    """'shop.example.com on web/fe2', 'shop on web/fe2', 'shop', or 'certd'."""
    what = n.domain or n.certificate or "certd"
    return f"{what} on {n.node}" if n.node else what


def summary(n: Notification) -> str:
    """One line: 'shop.example.com on web/fe2: certificate expires in 12.0 days (warning)'."""
    label = n.severity.value
    if n.event == "reminder":
        label += ", reminder"
    elif n.event not in ("finding", "resolved"):
        label += f", {n.event}"
    return one_line(f"{subject(n)}: {n.message} ({label})", 500)


_EMOJI = {
    Severity.INFO: ":information_source:",
    Severity.WARNING: ":warning:",
    Severity.ERROR: ":x:",
    Severity.CRITICAL: ":rotating_light:",
}


def slack_text(n: Notification) -> str:
    """The Slack-compatible `text`: one line, with &, < and > escaped as Slack asks (so a
    message cannot smuggle '<!channel>' or a link)."""
    emoji = ":white_check_mark:" if n.event == "resolved" else _EMOJI[n.severity]
    line = f"{emoji} certd: {summary(n)}"
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(n: Notification) -> dict[str, Any]:
    """The webhook's JSON body (see the module docstring)."""
    return {
        "event": n.event,
        "severity": n.severity.value,
        "certificate": n.certificate,
        "domain": n.domain,
        "node": n.node,
        "check": n.check,
        "days_remaining": n.days_remaining,
        "not_after": _iso(n.not_after),
        "message": n.message,
        "at": _iso(n.at),
        "text": slack_text(n),
    }
