"""Failures the rest of certd records in the event log (issue.failed, deploy.failed,
revoke.failed, ...) go through the same alerting path as the monitor's findings.

The forwarder follows the event log by id, so failures recorded by any process sharing the
store (the daemon, `certd renew` from a shell, the API) reach the notifiers. It starts at the
newest event when the daemon starts: history is not replayed on restart."""

from __future__ import annotations

import logging

from certd.model import SEVERITY_RANK, Event, Notification, Severity
from certd.monitor.alerts import AlertBook
from certd.store.base import Store

log = logging.getLogger(__name__)

BATCH = 1000


class EventForwarder:
    def __init__(self, store: Store, alerts: AlertBook, *,
                 min_severity: Severity = Severity.ERROR):
        self.store = store
        self.alerts = alerts
        self.min_rank = SEVERITY_RANK[min_severity]
        self.after: int | None = None

    async def start(self) -> None:
        """Follow from the newest event on (call before anything records new ones)."""
        self.after = await self.store.last_event_id()

    async def forward(self) -> int:
        """Send what was recorded since the last call; returns how many events were sent."""
        if self.after is None:
            await self.start()
            return 0
        sent = 0
        for _ in range(100):  # bounded: at most 100 batches per call
            events = await self.store.events_since(self.after, BATCH)
            for event in events:
                self.after = event.id
                if SEVERITY_RANK[event.severity] >= self.min_rank:
                    await self.alerts.notify(notification(event))
                    sent += 1
            if len(events) < BATCH:
                break
        return sent


def notification(event: Event) -> Notification:
    return Notification(event=event.kind, severity=event.severity, message=event.message,
                        certificate=event.certificate,
                        node=event.node, at=event.at)
