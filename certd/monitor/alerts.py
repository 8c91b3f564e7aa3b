"""Alert dedupe above the notifiers: who hears what, once, and when it clears.

`AlertBook.update(findings)` compares a sweep's findings with the active alerts in the store,
one row per `Finding.key` (check|domain|node):

- a new finding, or one whose severity changed -> a 'finding' notice;
- the same severity, last notice at least `repeat` ago -> a 'reminder';
- an active alert whose key is missing from `findings` (and inside `scope`, so a partial
  sweep does not clear what it did not look at) -> a 'resolved' notice, severity info.

Delivery is AT-MOST-ONCE per notice: the decision is written to the store first, then the
notices are queued. A crash in between, or a notifier that still fails after its retries,
loses that notice; the next reminder (after `repeat`) is the safety net. The other choice
(at-least-once) would re-send every notice of a sweep that crashed half-way, to everyone.

Routing: a notice goes to the notifiers whose `min_severity` is at most its severity; a
severity change goes to those that heard the old or hear the new level; 'resolved' goes to
the notifiers that heard the last notice (min_severity <= notified_severity), not by its own
info severity. Sends never block the caller: each notifier has its own bounded queue and
workers (a hanging webhook does not delay the e-mail), transient failures are retried
`retries` times with `retry_delays` backoff, and what cannot be delivered is logged.

Digests (`group_window` > 0): what is dispatched to a notifier waits in that notifier's
buffer until `group_window` after the first notice of the batch; then the buffer goes out as
one message per severity, plus one for everything 'resolved' (certd/notifiers/base.py:
`Digest`). A group of one goes out as the plain notice, so a lone finding reads as before.
`drain()` flushes at once (`certd check` does not wait a window before it exits). Grouping is
only about delivery: the decisions, and the dedupe state in the store, are the same.

Findings with check 'pending' (a (certificate, node) pair whose deployment has not finished:
certd/monitor/runner.py) are recorded as alerts, so the API and `certd check` show them, but
never notify: not when they appear, not as reminders, not when they clear.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from certd.errors import NotifyError
from certd.model import SEVERITY_RANK, Alert, Finding, Notification, Severity, utcnow
from certd.notifiers.base import Digest, Notifier, subject, wants, what
from certd.store.base import Store

log = logging.getLogger(__name__)

PENDING = "pending"  # the check id of a pair not judged yet: recorded, never notified


@dataclass
class _Lane:
    """One notifier's queue and workers."""

    notifier: Notifier
    queue: asyncio.Queue[Notification | Digest]
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    dropped: int = 0
    buffer: list[Notification] = field(default_factory=list)  # waiting for the window
    timer: asyncio.TimerHandle | None = None


class AlertBook:
    def __init__(self, store: Store, notifiers: list[Notifier], *, repeat: timedelta,
                 retries: int, clock: Callable[[], datetime] = utcnow,
                 retry_delays: Sequence[float] = (1, 5, 30), queue_size: int = 1000,
                 workers: int = 4, keep_resolved: timedelta = timedelta(days=30),
                 group_window: timedelta = timedelta(0)):
        self.store = store
        self.notifiers = list(notifiers)
        self.repeat = repeat
        self.retries = retries
        self.clock = clock
        self.retry_delays = tuple(retry_delays) or (0,)
        self.keep_resolved = keep_resolved
        self.group_window = group_window.total_seconds()
        self._workers = workers
        self._lanes = [_Lane(n, asyncio.Queue(queue_size)) for n in self.notifiers]
        self._lock = asyncio.Lock()  # one update() at a time: read, decide, write
        self._recent: dict[tuple[str, str | None, str | None], datetime] = {}

    async def update(self, findings: Iterable[Finding], *,
                     scope: Callable[[Finding], bool] | None = None) -> list[Notification]:
        """Record a sweep's findings; returns the notices decided (and queued to every
        notifier that takes them). `scope(finding)` says whether an active alert was inside
        what this sweep looked at; None: everything was."""
        async with self._lock:
            now = self.clock()
            current: dict[str, Finding] = {}
            for f in findings:  # one finding per key, the most severe
                seen = current.get(f.key)
                if seen is None or SEVERITY_RANK[f.severity] > SEVERITY_RANK[seen.severity]:
                    current[f.key] = f
            active = {a.finding.key: a for a in await self.store.active_alerts()}
            rows: list[Alert] = []
            notices: list[tuple[Notification, Severity]] = []
            for key, f in current.items():
                old = active.get(key)
                if f.check == PENDING:  # shown, never notified
                    rows.append(Alert(f, old.first_seen if old else now, now))
                elif old is None:
                    rows.append(Alert(f, now, now, now, f.severity))
                    notices.append((_notice("finding", f, now), f.severity))
                elif old.notified_severity != f.severity:
                    rows.append(replace(old, finding=f, last_seen=now, notified_at=now,
                                        notified_severity=f.severity))
                    route = max(f.severity, old.notified_severity or f.severity,
                                key=SEVERITY_RANK.__getitem__)
                    notices.append((_notice("finding", f, now), route))
                elif old.notified_at is None or now - old.notified_at >= self.repeat:
                    rows.append(replace(old, finding=f, last_seen=now, notified_at=now))
                    notices.append((_notice("reminder", f, now), f.severity))
                else:
                    rows.append(replace(old, finding=f, last_seen=now))
            gone = [a for key, a in active.items()
                    if key not in current and (scope is None or scope(a.finding))]
            for a in gone:
                if a.finding.check == PENDING:
                    continue  # cleared silently, as it came
                n = _notice("resolved", a.finding, now, severity=Severity.INFO,
                            message=f"resolved (was: {a.finding.message})")
                notices.append((n, a.notified_severity or a.finding.severity))
            # persist first, then dispatch: at-most-once (see the module docstring)
            await self.store.put_alerts(rows)
            await self.store.resolve_alerts([a.finding.key for a in gone], now)
            await self.store.purge_resolved(now - self.keep_resolved)
        for n, route in notices:
            self._dispatch(n, route)
        return [n for n, _ in notices]

    async def notify(self, notification: Notification) -> None:
        """A failure from the event log (issue.failed, deploy.failed, ...): straight to the
        notifiers, at most once per (event, certificate, node) within `repeat` (remembered
        in memory: a restart forgets it)."""
        now = self.clock()
        self._recent = {k: t for k, t in self._recent.items() if now - t < self.repeat}
        key = (notification.event, notification.certificate, notification.node)
        if key in self._recent:
            log.debug("alerts: %s %s: already sent within %s", notification.event,
                      subject(notification), self.repeat)
            return
        self._recent[key] = now
        self._dispatch(notification, notification.severity)

    async def active_alerts(self) -> list[Alert]:
        """The active alerts, for GET /api/v1/alerts and `certd check`."""
        return await self.store.active_alerts()

    async def drain(self, timeout: float) -> None:
        """Send what waits for its group window now, then wait up to `timeout` seconds for
        queued notices to be sent (or given up on)."""
        for lane in self._lanes:
            self._flush(lane)
        waits = [lane.queue.join() for lane in self._lanes if lane.workers]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*waits)
        except TimeoutError:
            pending = sum(lane.queue.qsize() for lane in self._lanes)
            log.warning("alerts: drain: notices still pending after %gs (%d queued)",
                        timeout, pending)

    async def close(self) -> None:
        """Stop the workers (unsent notices, and those waiting for their group window, are
        dropped: call `drain` first) and close the notifiers."""
        for lane in self._lanes:
            if lane.timer is not None:
                lane.timer.cancel()
                lane.timer = None
            lane.buffer.clear()
        tasks = [t for lane in self._lanes for t in lane.workers]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self._lanes:
            lane.workers.clear()
            try:
                async with asyncio.timeout(10):
                    await lane.notifier.close()
            except Exception as exc:  # noqa: BLE001 - closing one must not stop the others
                log.warning("alerts: %s: close: %s", lane.notifier.name, exc)

    def _dispatch(self, n: Notification, route: Severity) -> None:
        for lane in self._lanes:
            if not wants(lane.notifier, route):
                continue
            if self.group_window <= 0:
                self._enqueue(lane, n)
                continue
            lane.buffer.append(n)
            if lane.timer is None:  # the first of a batch opens the window
                lane.timer = asyncio.get_running_loop().call_later(
                    self.group_window, self._flush, lane)

    def _flush(self, lane: _Lane) -> None:
        """The buffered notices of `lane` to its queue: one per severity (all 'resolved'
        ones together), a group of one as the plain notice."""
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        if not lane.buffer:
            return
        groups: dict[tuple[bool, Severity], list[Notification]] = {}
        for n in lane.buffer:
            groups.setdefault((n.event == "resolved", n.severity), []).append(n)
        lane.buffer = []
        at = self.clock()
        # the most severe first, 'resolved' last: with one worker, that is the order sent
        for (_, severity), items in sorted(
                groups.items(), key=lambda kv: (kv[0][0], -SEVERITY_RANK[kv[0][1]])):
            items.sort(key=lambda n: (n.certificate or "", n.node or "", n.domain or "",
                                      n.check or "", n.event))
            self._enqueue(lane, items[0] if len(items) == 1
                          else Digest(severity, tuple(items), at))

    def _enqueue(self, lane: _Lane, n: Notification | Digest) -> None:
        if not lane.workers:
            lane.workers = [asyncio.create_task(self._work(lane))
                            for _ in range(self._workers)]
        try:
            lane.queue.put_nowait(n)
        except asyncio.QueueFull:
            lane.dropped += 1
            if lane.dropped % 100 != 1:  # a flood: one line per hundred drops
                return
            log.warning("alerts: %s: queue full, dropped %s (%d dropped so far)",
                        lane.notifier.name, what(n), lane.dropped)

    async def _work(self, lane: _Lane) -> None:
        while True:
            n = await lane.queue.get()
            try:
                await self._deliver(lane.notifier, n)
            finally:
                lane.queue.task_done()

    async def _deliver(self, notifier: Notifier, n: Notification | Digest) -> None:
        attempts = self.retries + 1
        about = what(n)
        for attempt in range(1, attempts + 1):
            try:
                await notifier.send(n)
                return
            except NotifyError as exc:
                reason = str(exc).removeprefix(f"{notifier.name}: ")
                if not exc.transient:
                    log.error("alerts: %s: %s: not delivered (permanent error): %s",
                              notifier.name, about, reason)
                    return
                if attempt == attempts:
                    log.error("alerts: %s: %s: giving up after %d attempts: %s",
                              notifier.name, about, attempts, reason)
                    return
                delay = self.retry_delays[min(attempt - 1, len(self.retry_delays) - 1)]
                log.warning("alerts: %s: %s: attempt %d failed, retrying in %ss: %s",
                            notifier.name, about, attempt, delay, reason)
                await asyncio.sleep(delay)
            except Exception:  # a bug in a notifier: log it, keep the worker alive
                log.exception("alerts: %s: %s: notifier failed", notifier.name, about)
                return


def _notice(event: str, f: Finding, at: datetime, *, severity: Severity | None = None,
            message: str | None = None) -> Notification:
    return Notification(
        event=event, severity=severity or f.severity, message=message or f.message,
        certificate=f.certificate, domain=f.domain, node=f.node, check=f.check,
        days_remaining=f.days_remaining, not_after=f.not_after, at=at,
    )
