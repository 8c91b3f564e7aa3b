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
lease `event:ID`), so one instance sends it, whichever reads it first. Delivery is
at-least-once across instances: the claim lasts CLAIM_FOR, and once the notifiers took the
event it becomes the record that it was delivered (the lease extended to DELIVERED_FOR, past
any look-back). An instance that dies (or is cut off from the store) between its claim and
that record leaves a claim that expires; the others keep trying to claim an event they saw
claimed, every call until RETRY_WITHIN after it was recorded, and send it if its claim
expired undelivered. While its holder is alive nobody else sends it (it records delivery at
once: the notifiers queue, they do not send inline); a notifier error releases the claim, so
any instance (this one included) tries again, at most MAX_TRIES times per instance."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from certd.errors import StoreError
from certd.model import SEVERITY_RANK, Event, Notification, Severity, utcnow
from certd.monitor.alerts import AlertBook
from certd.store.base import Store

log = logging.getLogger(__name__)

BATCH = 1000
SETTLE = timedelta(minutes=2)
CLAIM_FOR = timedelta(minutes=1)  # a claim not turned into "delivered" by then: re-claimable
DELIVERED_FOR = timedelta(days=2)  # the record that an event was sent: past any look-back
RETRY_WITHIN = timedelta(minutes=10)  # after an event: how long the others watch its claim
MAX_TRIES = 3  # this instance's own deliveries of one event that the notifiers refused


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
        # events claimed by another instance, not known to be delivered: id -> event
        self._watched: dict[int, Event] = {}
        self._tries: dict[int, int] = {}  # id -> this instance's failed deliveries
        self._unrecorded: dict[int, Event] = {}  # sent, the "delivered" record not written
        self.owner = owner or f"events:{uuid.uuid4().hex}"

    async def _claim(self, event: Event) -> bool:
        """Of the instances sharing the store, the one that takes `event:ID` first sends it;
        a claim expires after CLAIM_FOR unless the event was delivered (`_delivered`)."""
        now = self.clock()
        return await self.store.acquire_lease(f"event:{event.id}", self.owner,
                                              now + CLAIM_FOR, now)

    async def _delivered(self, event: Event) -> None:
        """The notifiers took `event`: its claim becomes the record of that (the same
        owner's lease, extended), so no instance claims it again."""
        now = self.clock()
        if not await self.store.acquire_lease(f"event:{event.id}", self.owner,
                                              max(now, event.at) + DELIVERED_FOR, now):
            # held too long: our claim expired and another instance re-claimed it
            log.warning("alerts: event %d: claim expired before it was recorded as sent; "
                        "another instance may send it again", event.id)

    async def _send(self, event: Event) -> bool:
        """Claim `event` and send it; True if sent. An event claimed by another instance is
        watched (`_watched`) in case its holder dies before it is delivered."""
        if event.id in self._unrecorded:  # sent; only its record waits for the store
            return False
        if not await self._claim(event):
            self._watched[event.id] = event
            return False
        self._watched.pop(event.id, None)
        try:
            await self.alerts.notify(notification(event))
        except Exception:  # a notifier's bug: let any instance try again
            tries = self._tries[event.id] = self._tries.get(event.id, 0) + 1
            log.exception("alerts: event %d: not sent (try %d of %d)", event.id, tries,
                          MAX_TRIES)
            await self.store.release_lease(f"event:{event.id}", self.owner)
            if tries < MAX_TRIES:
                self._watched[event.id] = event
            return False
        self._tries.pop(event.id, None)
        self._unrecorded[event.id] = event
        try:
            await self._record()
        except StoreError as exc:  # kept: written by the next call
            log.warning("alerts: event %d sent; its record waits for the store: %s",
                        event.id, exc)
        return True

    async def _record(self) -> None:
        """Write the "delivered" record of what was sent (again after a store error)."""
        for event_id, event in list(self._unrecorded.items()):
            await self._delivered(event)
            del self._unrecorded[event_id]

    async def start(self) -> None:
        """Follow from the newest event on (call before anything records new ones)."""
        self.after = await self.store.last_event_id()
        self._seen.clear()

    async def forward(self) -> int:
        """Send what was recorded since the last call, and what another instance claimed
        but did not deliver; returns how many events were sent."""
        if self.after is None:
            await self.start()
            return 0
        await self._record()
        sent = 0
        now = self.clock()
        settled_before = now - SETTLE
        floor, cursor = self.after, self.after
        tried: set[int] = set()
        for _ in range(100):  # bounded: at most 100 batches per call
            events = await self.store.events_since(cursor, BATCH)
            for event in events:
                cursor = event.id
                if event.id not in self._seen:
                    if SEVERITY_RANK[event.severity] >= self.min_rank:
                        tried.add(event.id)
                        sent += await self._send(event)  # a store error: seen next call
                    self._seen.add(event.id)
                if event.at < settled_before:
                    # recorded long ago: an id below it that is still missing belongs to a
                    # unit of work that never committed
                    floor = max(floor, event.id)
            if len(events) < BATCH:
                break
        self.after = floor
        self._seen = {i for i in self._seen if i > floor}
        # claimed elsewhere: sent now only if that claim expired undelivered (its holder
        # died or was cut off); watched until RETRY_WITHIN after the event
        for event_id, event in sorted(self._watched.items()):
            if event.at < now - RETRY_WITHIN:
                del self._watched[event_id]
                self._tries.pop(event_id, None)
            elif event_id not in tried:
                sent += await self._send(event)
        return sent


def notification(event: Event) -> Notification:
    return Notification(event=event.kind, severity=event.severity, message=event.message,
                        certificate=event.certificate,
                        node=event.node, at=event.at)
