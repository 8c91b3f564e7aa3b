"""Gathering deploy requests into batches: whatever becomes deployable while a batch is open
(renewals of a sweep, aliases issued in a burst, `certd deploy` of several names, the deploy
sync) goes out together, so each node checks and reloads once per batch, not once per
certificate.

A batch opens with its first request and closes at the first of:
- `batch_max` requests;
- `batch_window` after it opened (a certificate issued early never waits for the slowest
  order of a sweep longer than that);
- nothing is being ordered (`busy()` is false) and no request came for QUIET seconds.
Batches go out one after another; requests arriving meanwhile wait for the next one. The
caller of `submit` gets its certificate's results when its batch is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

QUIET = 0.05  # seconds without a new request, with no order in flight, before a batch closes


@dataclass
class Request:
    name: str
    only_stale: bool
    future: asyncio.Future = field(repr=False)


class DeployQueue:
    def __init__(self, run: Callable[[list[Request]], Awaitable[None]], *, window: float,
                 batch_max: int, busy: Callable[[], bool]):
        self._run = run  # deploys a closed batch and settles every request's future
        self.window = window
        self.batch_max = batch_max
        self._busy = busy
        self._pending: list[Request] = []
        self._opened: float | None = None
        self._last: float = 0.0
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def submit(self, name: str, only_stale: bool):
        """Wait for `name`'s turn in a batch; returns what `run` set for it."""
        request = Request(name, only_stale, asyncio.get_running_loop().create_future())
        self.put(request)
        return await request.future

    def put(self, request: Request) -> None:
        """Queue a request (again: a request whose lease was busy comes back this way)."""
        loop = asyncio.get_running_loop()
        self._pending.append(request)
        self._last = loop.time()
        if self._opened is None:
            self._opened = self._last
        self.poke()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._dispatch())

    def poke(self) -> None:
        """Something changed (a request, an order finished): look at the open batch again."""
        self._changed.set()

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            while not self._closed(loop.time()):
                self._changed.clear()
                wait = self._opened + self.window - loop.time()
                if not self._busy():
                    wait = min(wait, self._last + QUIET - loop.time())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), max(0.001, wait))
            batch, self._pending = self._pending[:self.batch_max], self._pending[self.batch_max:]
            self._opened = loop.time() if self._pending else None
            try:
                await self._run(batch)
            except Exception as exc:  # never leave a caller waiting
                log.exception("deploy batch: unexpected error")
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)

    def _closed(self, now: float) -> bool:
        if len(self._pending) >= self.batch_max or now >= self._opened + self.window:
            return True
        return not self._busy() and now >= self._last + QUIET

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for r in self._pending:
            if not r.future.done():
                r.future.cancel()
