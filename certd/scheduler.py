"""APScheduler 3.x jobs inside `certd run`: the renewal sweep (every `renewal.sweep_interval`,
and again at the earliest moment a sweep found something would become due), the deploy
sync (every `renewal.deploy_sync_interval`), the monitor sweep (every `monitor.interval`,
the first one shortly after start), the event forwarder (failures from the event log to
the notifiers, every EVENTS_INTERVAL), the heartbeat (this instance's row in the store, every
instances.HEARTBEAT) and retention (old events, superseded keys: at start,
then daily; certd/retention.py). Jobs coalesce, never overlap, and are jittered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from certd import instances, retention
from certd.config import RenewalConfig
from certd.errors import CertdError
from certd.model import Instance
from certd.monitor.events import EventForwarder
from certd.monitor.runner import Monitor
from certd.sweep import Sweeper

log = logging.getLogger(__name__)

WAKE_SLACK = timedelta(seconds=1)  # wake a little after the due moment, not a little before
MIN_GAP = timedelta(seconds=10)
SWEEP_RETRY = timedelta(seconds=10)  # after a failed sweep (the store down): doubling  # never sweep again sooner than this after a sweep ends
FIRST_MONITOR = timedelta(seconds=5)  # after start: let the first renewal sweep go first
EVENTS_INTERVAL = timedelta(seconds=30)
RETENTION_INTERVAL = timedelta(days=1)
COMMON = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
FIRST_RETENTION = timedelta(seconds=30)
MONITOR_LEASE = "monitor"  # held by the instance that swept last, for most of an interval
MONITOR_MIN_LEASE = timedelta(seconds=5)  # after start: the first sweep goes first
LEASE_RENEW_EVERY = instances.HEARTBEAT  # a long sweep renews its lease this often
LEASE_KEEP = timedelta(seconds=60)  # ... to at least this far ahead (a few renewals)
T = TypeVar("T")


async def keeping_lease(certd, lease: str, until: datetime, work: Awaitable[T], *,
                        what: str, every: timedelta = LEASE_RENEW_EVERY) -> T | None:
    """Run `work` under `certd`'s lease `lease` (taken, expiring at `until`), however long
    it takes: every `every` the lease is extended to at least `until` and LEASE_KEEP past
    now, so it never lapses while the work runs. Once it is lost — taken over by another
    instance (this one was cut off from the store, its heartbeat stopped), or its expiry
    passed without a renewal reaching the store — the work is cancelled (another instance
    may be doing it now) and None is returned."""
    task = asyncio.ensure_future(work)
    held_until, reached = until, certd.clock()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every.total_seconds())
            if done:
                return task.result()
            now = certd.clock()
            wanted = max(until, now + LEASE_KEEP)
            try:
                kept = await certd.store.extend_lease(lease, certd.owner, wanted)
            except CertdError as exc:
                # the store is unreachable: the lease is ours until it expires, or until the
                # others see this instance's heartbeat stop and take it over; stop before
                # the next renewal would come after either
                now = certd.clock()
                kept = now + every <= min(held_until, reached + instances.ALIVE_WITHIN)
                log.warning("%s: cannot renew the lease %s: %s", what, lease, exc)
            else:
                held_until, reached = wanted, now
            if not kept:
                log.warning("%s: lease %s lost (another instance may hold it now); "
                            "stopping", what, lease)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return None
    finally:
        if not task.done():  # cancelled ourselves (the scheduler stops)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class Scheduler:
    def __init__(self, sweeper: Sweeper, renewal: RenewalConfig, *,
                 monitor: Monitor | None = None, events: EventForwarder | None = None):
        self.sweeper = sweeper
        self.renewal = renewal
        self.monitor = monitor
        self.events = events
        self._scheduler: AsyncIOScheduler | None = None
        self._running: set[asyncio.Task] = set()
        self._sweep_failures = 0  # in a row: the retry after a failed sweep backs off
        self._instance: Instance | None = None  # this process's heartbeat row, once written

    def _intervals(self) -> dict[str, tuple[float, int | None]]:
        """The interval jobs' (seconds, jitter) from the current settings."""
        jitter = int(self.renewal.jitter.total_seconds()) or None
        out = {"sweep": (self.renewal.sweep_interval.total_seconds(), jitter),
               "deploy-sync": (self.renewal.deploy_sync_interval.total_seconds(), jitter)}
        if self.monitor is not None:
            config = self.monitor.config
            out["monitor"] = (config.interval.total_seconds(),
                              int(config.jitter.total_seconds()) or None)
        return out

    def _triggers(self) -> dict[str, IntervalTrigger]:
        return {name: IntervalTrigger(seconds=seconds, jitter=jitter)
                for name, (seconds, jitter) in self._intervals().items()}

    def start(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone=timezone.utc)
        triggers = self._triggers()
        now = datetime.now(timezone.utc)
        self._scheduler.add_job(self._sweep, triggers["sweep"], id="sweep", next_run_time=now,
                                **COMMON)
        self._scheduler.add_job(self._deploy_sync, triggers["deploy-sync"], id="deploy-sync",
                                **COMMON)
        if "monitor" in triggers:
            self._scheduler.add_job(self._monitor, triggers["monitor"], id="monitor",
                                    next_run_time=now + FIRST_MONITOR, **COMMON)
        if self.events is not None:
            self._scheduler.add_job(
                self._events, IntervalTrigger(seconds=EVENTS_INTERVAL.total_seconds()),
                id="events", next_run_time=now, **COMMON)
        self._scheduler.add_job(
            self._heartbeat, IntervalTrigger(seconds=instances.HEARTBEAT.total_seconds()),
            id="heartbeat", next_run_time=now, **COMMON)
        self._scheduler.add_job(
            self._retention, IntervalTrigger(seconds=RETENTION_INTERVAL.total_seconds(),
                                             jitter=600),
            id="retention", next_run_time=now + FIRST_RETENTION, **COMMON)
        self._scheduler.start()

    def reconfigure(self, renewal: RenewalConfig, monitor: Monitor | None) -> None:
        """A reloaded config: intervals whose settings changed restart from now, the monitor
        job comes or goes with `monitor`, and a sweep runs now (for what the config added)."""
        old = self._intervals()
        self.renewal, self.monitor = renewal, monitor
        if self._scheduler is None:
            return
        now = datetime.now(timezone.utc)
        new = self._intervals()
        for name, trigger in self._triggers().items():
            if self._scheduler.get_job(name) is None:  # the monitor, enabled by the reload
                self._scheduler.add_job(self._monitor, trigger, id=name,
                                        next_run_time=now + FIRST_MONITOR, **COMMON)
            elif old.get(name) != new[name]:
                self._scheduler.reschedule_job(name, trigger=trigger)
        if monitor is None and self._scheduler.get_job("monitor") is not None:
            self._scheduler.remove_job("monitor")
        self._scheduler.modify_job("sweep", next_run_time=now)

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        if self._instance is not None:  # a clean stop: no longer one of the instances
            await self._guarded("heartbeat", self.sweeper.certd.store.remove_instance(
                self._instance.id))

    async def _heartbeat(self) -> None:
        """This instance's row in the store (certd/instances.py): who is alive, who holds
        what; a holder whose heartbeat stopped loses its leases to the others."""
        certd = self.sweeper.certd
        now = certd.clock()
        if self._instance is None:
            self._instance = instances.this_instance(certd.owner, now, now)
        await self._tracked(self._guarded("heartbeat", instances.beat(
            certd.store, self._instance, now)))

    async def _tracked(self, coro) -> None:
        task = asyncio.current_task()
        self._running.add(task)
        try:
            await coro
        finally:
            self._running.discard(task)

    async def _sweep(self) -> None:
        await self._tracked(self._sweep_and_plan())

    async def _sweep_and_plan(self) -> None:
        try:
            result = await self.sweeper.sweep()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store or a bug: sweep again soon
            self._sweep_failures += 1
            delay = min(SWEEP_RETRY * 2 ** min(self._sweep_failures - 1, 10),
                        self.renewal.sweep_interval)
            if isinstance(exc, CertdError):
                log.error("sweep failed: %s; again in %ds", exc, int(delay.total_seconds()))
            else:
                log.exception("sweep failed; again in %ds", int(delay.total_seconds()))
            self._wake(datetime.now(timezone.utc) + delay)
            return
        self._sweep_failures = 0
        if result is None or result.wake_at is None:
            return
        self._wake(result.wake_at + WAKE_SLACK)

    def _wake(self, at: datetime) -> None:
        """Sweep again at `at` (not sooner than MIN_GAP from now), unless the regular sweep
        comes first."""
        if self._scheduler is None:
            return
        # a wake time in the past (work a sweep could not do) must not become a tight loop
        wake = max(at, datetime.now(timezone.utc) + MIN_GAP)
        job = self._scheduler.get_job("sweep")
        if job is not None and job.next_run_time is not None and job.next_run_time <= wake:
            return  # the regular sweep comes first
        self._scheduler.add_job(self._sweep, DateTrigger(wake), id="wake",
                                replace_existing=True, misfire_grace_time=None)
        log.debug("next sweep at %s", wake.isoformat(timespec="seconds"))

    async def _deploy_sync(self) -> None:
        await self._tracked(self.sweeper.deploy_sync())

    async def _monitor(self) -> None:
        await self._tracked(self._guarded("monitor", self._shared_monitor_sweep()))

    async def _shared_monitor_sweep(self) -> None:
        """One monitor sweep per interval across the instances sharing the store: the
        `monitor` lease, taken for most of an interval and not released, is also the record
        that a sweep was done lately (its holder dies: it expires and another takes it). A
        sweep that outlasts it renews it meanwhile, and stops if it is lost
        (`keeping_lease`): two sweeps never overlap."""
        certd, config = self.sweeper.certd, self.monitor.config
        ttl = max(config.interval - config.jitter, config.interval * 0.9, MONITOR_MIN_LEASE)
        started = certd.clock()
        if not await certd._try_lease(MONITOR_LEASE, ttl):
            log.debug("monitor: another instance swept lately; skipping")
            return
        await keeping_lease(certd, MONITOR_LEASE, started + ttl, self.monitor.sweep(),
                            what="monitor", every=LEASE_RENEW_EVERY)

    async def _events(self) -> None:
        await self._tracked(self._guarded("alerts: event forwarder", self.events.forward()))

    async def _retention(self) -> None:
        certd = self.sweeper.certd
        await self._tracked(self._guarded(
            "retention", retention.apply(certd.store, certd.config, certd.clock())))

    @staticmethod
    async def _guarded(what: str, coro) -> None:
        """A failing job is logged and runs again next time; it never stops the scheduler."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the daemon outlives any one job
            log.exception("%s: failed", what)
