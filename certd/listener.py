"""What both listeners grant a client that is not yet a request: a cap on open connections,
a deadline for the request head, an idle timeout, and one small fixed 400 for anything
unparsable, counted and logged at most once per interval.

Both listeners face untrusted peers (the challenge listener the whole Internet, through every
frontend), so a peer that opens connections and sends nothing, or a head one byte a second
(slowloris), must not hold file descriptors for long, and must never push the process past
its file limit: past `max_connections` a new connection is closed at once, unread.

aiohttp has public arguments for the idle timeout (`keepalive_timeout`) but none for the
rest. This module is the one place that leans on aiohttp internals, each marked
`# aiohttp private:`; tests/test_listeners.py::test_aiohttp_internals_we_rely_on fails if an
upgrade moves any of them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from certd.config import ListenerLimits

log = logging.getLogger(__name__)

BAD_REQUEST = b"bad request\n"
REPORT_INTERVAL = 60.0  # seconds: at most one log line per kind and listener in this time


class Tally:
    """Counts events and logs at most one line per `interval`, with the count: the first
    event of a quiet spell is reported at once, the rest when the interval is over."""

    def __init__(self, template: str, interval: float = REPORT_INTERVAL,
                 level: int = logging.INFO) -> None:
        self.template = template  # formatted with count=, s= (plural) and interval=
        self.interval = interval
        self.level = level
        self.count = 0
        self.total = 0
        self._last = float("-inf")  # loop time of the last line
        self._timer: asyncio.TimerHandle | None = None

    def add(self) -> None:
        self.count += 1
        self.total += 1
        if self._timer is None:
            loop = asyncio.get_running_loop()
            delay = self._last + self.interval - loop.time()
            if delay <= 0:
                self.flush()
            else:
                self._timer = loop.call_later(delay, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.count:
            log.log(self.level, self.template.format(
                count=f"{self.count:,}", s="" if self.count == 1 else "s",
                interval=f"{self.interval:g}"))
            self._last = asyncio.get_running_loop().time()
            self.count = 0


class Guard:
    """One listener's limits and counters, shared by all its connections."""

    def __init__(self, what: str, limits: ListenerLimits,
                 interval: float = REPORT_INTERVAL) -> None:
        self.what = what
        self.max_connections = limits.max_connections
        self.header_timeout = limits.header_timeout.total_seconds()
        self.idle_timeout = limits.idle_timeout.total_seconds()
        self.open = 0  # connections admitted and not yet lost
        self.over_cap = Tally(
            f"{what}: closed {{count}} connection{{s}} at once in the last {{interval}} s: "
            f"{self.max_connections} already open (limits.max_connections)",
            interval, logging.WARNING)
        self.head_timeouts = Tally(
            f"{what}: closed {{count}} connection{{s}} in the last {{interval}} s that sent no "
            f"complete request head within {self.header_timeout:g} s", interval)
        self.malformed = Tally(
            f"{what}: {{count}} malformed request{{s}} in the last {{interval}} s", interval)

    def flush(self) -> None:
        for tally in (self.over_cap, self.head_timeouts, self.malformed):
            tally.flush()


class GuardedHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, with the cap, the head deadline and the fixed
    400. The head deadline runs from the connection's start, and on a kept-alive connection
    from the first byte of each further request; a complete head (even an unparsable one,
    which gets the 400) stops it."""

    __slots__ = ("_admitted", "_guard", "_head_timer", "_heads_at_arm")

    def __init__(self, guard: Guard, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads_at_arm = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.max_connections:
            transport.close()  # unread; the parser and the handler task never start
            guard.over_cap.add()
            return
        guard.open += 1
        self._admitted = True
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.open -= 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # aiohttp private: `_request_count` counts the heads parsed so far (unparsable ones
        # included), `_waiter` is set while the connection waits for its next request
        heads, idle = self._request_count, self._waiter is not None
        super().data_received(data)
        if self._request_count != heads:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif idle and self._head_timer is None:
            self._arm_head_timer()  # part of a further head on a kept-alive connection

    def _arm_head_timer(self) -> None:
        self._heads_at_arm = self._request_count  # aiohttp private, see data_received
        self._head_timer = self._loop.call_later(self._guard.header_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport is not None and self._request_count == self._heads_at_arm:
            self._guard.head_timeouts.add()
            self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        """aiohttp calls this with 400 for an unparsable request, its message quoting the
        bytes, and logs a traceback; answer a fixed body and count it instead. Other statuses
        (500: a handler raised) keep aiohttp's answer, which quotes nothing, and its log."""
        if status != 400:
            return super().handle_error(request, status, exc, message)
        self._guard.malformed.add()
        response = web.Response(status=400, body=BAD_REQUEST, content_type="text/plain",
                                headers={"Connection": "close", "Cache-Control": "no-store"})
        response.force_close()
        return response


class GuardedSite(web.BaseSite):
    """A TCP site like aiohttp's TCPSite whose connections are GuardedHandlers."""

    __slots__ = ("_guard", "_host", "_port", "_sock")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: Guard,
                 sock=None) -> None:
        """`sock`: a listening socket to accept on (an API worker's, bound by the daemon)
        instead of binding `host`:`port`."""
        super().__init__(runner)
        self._host = host
        self._port = port
        self._guard = guard
        self._sock = sock

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = self._guard
        # aiohttp private: `Server._kwargs` are the handler arguments Server.__call__ would
        # pass (the runner's and the app's handler_args); the idle timeout is ours
        kwargs = {**server._kwargs, "keepalive_timeout": guard.idle_timeout}

        def protocol() -> GuardedHandler:
            return GuardedHandler(guard, server, loop=loop, **kwargs)

        # aiohttp private: a site keeps its asyncio server in `_server` (BaseSite.stop and
        # BaseRunner.addresses read it), as aiohttp's own sites do
        if self._sock is not None:
            self._server = await loop.create_server(protocol, sock=self._sock,
                                                    backlog=self._backlog)
        else:
            self._server = await loop.create_server(protocol, self._host, self._port,
                                                    backlog=self._backlog, reuse_address=True)

    async def stop(self) -> None:
        self._guard.flush()
        await super().stop()
