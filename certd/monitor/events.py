"""Failures the rest of certd records in the event log (issue.failed, deploy.failed,
revoke.failed, ...) go through the same alerting path as the monitor's findings.

The forwarder follows the event log by id, so failures recorded by any process sharing the
store (the daemon, `certd renew` from a shell, the API) reach the notifiers. It starts at the
newest event when the daemon starts: history is not replayed on restart.

Ids are handed out when an event is written but become visible when its transaction commits,
and with several writers (PostgreSQL, several instances) a smaller id can commit after a
larger one. So the cursor is not "the last id seen": it is a floor below which every event
is settled (the floor moves up to events recorded more than SETTLE ago: no unit of work
stays open that long, so an id still missing below one of them never commits), and the
events above it that were already sent are remembered, so a late one is sent once and none
twice. Each call reads again what was recorded in the last SETTLE.

Every instance sharing the store runs a forwarder; an event to send is claimed first (the
lease `event:ID`), so one instance sends it, whichever reads it first."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from certd.model import SEVERITY_RANK, Event, Notification, Severity, utcnow
from certd.monitor.alerts import AlertBook
from certd.store.base import Store

log = logging.getLogger(__name__)

BATCH = 1000
SETTLE = timedelta(minutes=2)
CLAIM_FOR = timedelta(days=2)


class EventForwarder:
    def __init__(self, store: Store, alerts: AlertBook, *,
                 min_severity: Severity = Severity.ERROR,
                 clock: Callable[[], datetime] = utcnow, owner: str | None = None):
        self.store = store
        self.alerts = alerts
        self.min_rank = SEVERITY_RANK[min_severity]
        self.clock = clock
        self.after: int | None = None  # the floor: every event up to it is handled
        self._seen: set[int] = set()  # handled events above the floor
        self.owner = owner or f"events:{uuid.uuid4().hex}"

    async def _claim(self, event: Event) -> bool:
        """Of the instances sharing the store, the one that takes `event:ID` first sends it
        (a lease never released: it lasts CLAIM_FOR, past any instance's look-back)."""
        now = self.clock()
        return await self.store.acquire_lease(f"event:{event.id}", self.owner,
                                              max(now, event.at) + CLAIM_FOR, now)

    async def start(self) -> None:
        """Follow from the newest event on (call before anything records new ones)."""
        self.after = await self.store.last_event_id()
        self._seen.clear()

    async def forward(self) -> int:
        """Send what was recorded since the last call; returns how many events were sent."""
        if self.after is None:
            await self.start()
            return 0
        sent = 0
        settled_before = self.clock() - SETTLE
        floor, cursor = self.after, self.after
        for _ in range(100):  # bounded: at most 100 batches per call
            events = await self.store.events_since(cursor, BATCH)
            for event in events:
                cursor = event.id
                if event.id not in self._seen:
                    self._seen.add(event.id)
                    if (SEVERITY_RANK[event.severity] >= self.min_rank
                            and await self._claim(event)):
                        await self.alerts.notify(notification(event))
                        sent += 1
                if event.at < settled_before:
                    # recorded long ago: an id below it that is still missing belongs to a
                    # unit of work that never committed
                    floor = max(floor, event.id)
            if len(events) < BATCH:
                break
        self.after = floor
        self._seen = {i for i in self._seen if i > floor}
        return sent


def notification(event: Event) -> Notification:
    return Notification(event=event.kind, severity=event.severity, message=event.message,
                        certificate=event.certificate,
                        node=event.node, at=event.at)
