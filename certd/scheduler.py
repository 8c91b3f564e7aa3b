"""APScheduler 3.x jobs inside `certd run`: the renewal sweep (every `renewal.sweep_interval`,
and again at the earliest moment a sweep found something would become due), and the deploy
sync (every `renewal.deploy_sync_interval`). Jobs coalesce, never overlap, and are jittered.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from certd.config import RenewalConfig
from certd.sweep import Sweeper

log = logging.getLogger(__name__)

WAKE_SLACK = timedelta(seconds=1)  # wake a little after the due moment, not a little before
MIN_GAP = timedelta(seconds=10)  # never sweep again sooner than this after a sweep ends


class Scheduler:
    def __init__(self, sweeper: Sweeper, renewal: RenewalConfig):
        self.sweeper = sweeper
        self.renewal = renewal
        self._scheduler: AsyncIOScheduler | None = None
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        jitter = int(self.renewal.jitter.total_seconds()) or None
        self._scheduler = AsyncIOScheduler(timezone=timezone.utc)
        common = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        self._scheduler.add_job(
            self._sweep, IntervalTrigger(seconds=self.renewal.sweep_interval.total_seconds(),
                                         jitter=jitter),
            id="sweep", next_run_time=datetime.now(timezone.utc), **common)
        self._scheduler.add_job(
            self._deploy_sync,
            IntervalTrigger(seconds=self.renewal.deploy_sync_interval.total_seconds(),
                            jitter=jitter),
            id="deploy-sync", **common)
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

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
        result = await self.sweeper.sweep()
        if result is None or result.wake_at is None or self._scheduler is None:
            return
        # a wake time in the past (work a sweep could not do) must not become a tight loop
        wake = max(result.wake_at + WAKE_SLACK, datetime.now(timezone.utc) + MIN_GAP)
        job = self._scheduler.get_job("sweep")
        if job is not None and job.next_run_time is not None and job.next_run_time <= wake:
            return  # the regular sweep comes first
        self._scheduler.add_job(self._sweep, DateTrigger(wake), id="wake",
                                replace_existing=True, misfire_grace_time=None)
        log.debug("next sweep at %s", wake.isoformat(timespec="seconds"))

    async def _deploy_sync(self) -> None:
        await self._tracked(self.sweeper.deploy_sync())
