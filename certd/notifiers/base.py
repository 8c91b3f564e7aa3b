"""The Notifier Protocol and what every notifier shares: the payload, the one-line summary.

Every notifier renders the same `Notification` (certd/model.py); the webhook payload below is a
contract receivers are written against:

    {"event": "finding", "severity": "warning", "certificate": "shop", "domain":
     "shop.example.com", "node": "web/fe2", "check": "expiry", "days_remaining": 12.0,
     "not_after": "2025-07-01T00:00:00+00:00", "message": "certificate expires in 12.0 days",
     "at": "2025-06-19T00:00:00+00:00",
     "text": ":warning: certd: shop.example.com on web/fe2: certificate expires in 12.0 days (warning)"}

With `alerts.group_window`, the notices of a window reach each notifier as digests: one per
severity, plus one for what was resolved (certd/monitor/alerts.py). A digest of ONE notice is
sent exactly as above. A digest of several is a `Digest`; its webhook body keeps every key
above (`certificate`, `domain`, `node`, `check`, `days_remaining`, `not_after` are null) and
adds `count` (notices in the digest), `events` (how many of each event) and `items` (each
notice's fields as above, without `text`; at most ITEMS_LIMIT, `count` is the total):

    {"event": "digest", "severity": "warning", "count": 100,
     "events": {"finding": 98, "reminder": 2}, "message": "100 warning alerts: 98 new, 2 reminders",
     "certificate": null, "domain": null, "node": null, "check": null,
     "days_remaining": null, "not_after": null, "at": "2025-06-19T00:00:30+00:00",
     "items": [{"event": "finding", "severity": "warning", "certificate": "shop", ...}, ...],
     "text": ":warning: certd: 100 warning alerts: 98 new, 2 reminders\\n• shop.example.com on
              web/fe2: certificate expires in 12.0 days\\n• ... (20 lines)\\n… and 80 more"}

A digest of what cleared has severity "info", events {"resolved": N} and the message
"N findings resolved".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from certd.model import SEVERITY_RANK, Notification, Severity
from certd.text import one_line


class Notifier(Protocol):
    """Delivers notifications to people (a chat webhook, a mailbox, the log).

    - `send` delivers one notification, or one `Digest` of several, or raises NotifyError (`transient=True` when a retry
      may help: timeouts, 5xx, refused connections); it does not retry by itself — the
      AlertBook (certd/monitor/alerts.py) retries, deduplicates and filters by `min_severity`.
    - Safe for concurrent use from one event loop; `send` never blocks the loop.
    - Never logs or returns secrets (passwords, tokens in headers).
    - `close` releases what the notifier opened itself (not the shared HTTP session, which
      its owner closes).
    """

    name: str  # 'webhook[hooks.example.org]', 'email[smtp.example.org]', 'log'
    min_severity: Severity

    async def send(self, notification: Notification | Digest) -> None: ...

    async def close(self) -> None: ...


def wants(notifier: Notifier, severity: Severity) -> bool:
    """Whether a notice routed at `severity` reaches this notifier."""
    return SEVERITY_RANK[severity] >= SEVERITY_RANK[notifier.min_severity]


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


# digests ------------------------------------------------------------------------------------
TEXT_LINES = 20  # notices listed in a chat text or a log line; "… and N more" after that
ITEMS_LIMIT = 1000  # notices carried in a webhook digest's `items` (`count` is the total)


@dataclass(frozen=True)
class Digest:
    """Several notices of one severity (or all 'resolved' ones) from one `group_window`, for
    one notifier. Never empty; a single notice is sent as itself, not as a digest."""

    severity: Severity
    items: tuple[Notification, ...]
    at: datetime

    event = "digest"

    @property
    def resolved(self) -> bool:
        return all(n.event == "resolved" for n in self.items)

    @property
    def events(self) -> dict[str, int]:
        return dict(Counter(n.event for n in self.items))


def _event_words(event: str, count: int) -> str:
    if event == "finding":
        return f"{count} new"
    if event in ("reminder", "resolved"):
        return f"{count} {event}" + ("s" if count != 1 and event == "reminder" else "")
    return f"{count} {event}"


def digest_counts(d: Digest) -> str:
    """'98 new, 2 reminders', '2 new, 1 deploy.failed', '100 resolved'."""
    return ", ".join(_event_words(e, c) for e, c in d.events.items())


def digest_title(d: Digest) -> str:
    """'100 warning alerts: 98 new, 2 reminders', '100 findings resolved'."""
    if d.resolved:
        return f"{len(d.items)} findings resolved"
    return f"{len(d.items)} {d.severity.value} alerts: {digest_counts(d)}"


def item_line(n: Notification) -> str:
    """One notice inside a digest: 'shop.example.com on web/fe2: expires in 12.0 days'
    (with ' (reminder)' or ' (deploy.failed)' for events other than a new finding)."""
    tag = "" if n.event in ("finding", "resolved") else f" ({n.event})"
    return one_line(f"{subject(n)}: {n.message}{tag}", 300)


def digest_lines(d: Digest, limit: int = TEXT_LINES, bullet: str = "") -> list[str]:
    """The first `limit` item lines (each after `bullet`), then '… and N more'."""
    lines = [bullet + item_line(n) for n in d.items[:limit]]
    if len(d.items) > limit:
        lines.append(f"… and {len(d.items) - limit} more")
    return lines


def digest_summary(d: Digest, limit: int = TEXT_LINES) -> str:
    """One line (for the log): the title, then the first `limit` items separated by '; '."""
    return one_line(f"{digest_title(d)}: " + "; ".join(digest_lines(d, limit)),
                    200 + 310 * (limit + 1))


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def digest_text(d: Digest) -> str:
    """The Slack-compatible `text` of a digest: a title line and one line per item (the first
    TEXT_LINES), escaped as `slack_text`."""
    emoji = ":white_check_mark:" if d.resolved else _EMOJI[d.severity]
    lines = [f"{emoji} certd: {digest_title(d)}", *digest_lines(d, bullet="• ")]
    return _slack_escape("\n".join(lines))


def digest_payload(d: Digest) -> dict[str, Any]:
    """The webhook's JSON body for a digest (see the module docstring)."""
    items = []
    for n in d.items[:ITEMS_LIMIT]:
        item = payload(n)
        del item["text"]
        items.append(item)
    return {
        "event": "digest",
        "severity": d.severity.value,
        "count": len(d.items),
        "events": d.events,
        "message": digest_title(d),
        "certificate": None, "domain": None, "node": None, "check": None,
        "days_remaining": None, "not_after": None,
        "at": _iso(d.at),
        "items": items,
        "text": digest_text(d),
    }


def body(n: Notification | Digest) -> dict[str, Any]:
    """The webhook body of a notice or a digest."""
    return digest_payload(n) if isinstance(n, Digest) else payload(n)


def what(n: Notification | Digest) -> str:
    """For log lines about delivery: 'finding shop.example.com on web/fe2',
    'digest of 100 warning alerts: 98 new, 2 reminders'."""
    if isinstance(n, Digest):
        return f"digest of {digest_title(n)}"
    return f"{n.event} {subject(n)}"
