"""The HTTP-01 challenge listener: every frontend proxies /.well-known/acme-challenge/ here.

It answers GET/HEAD for a pending, well-formed token with the key authorization, and gives
one small fixed 404 for everything else, never echoing input (and a fixed 400 for what does
not parse as HTTP: certd/listener.py, which also caps connections and times out slow heads).
Nothing else lives on this listener: the API has its own.
"""

from __future__ import annotations

import logging
from typing import Callable

from aiohttp import web

from certd.errors import StoreError
from certd.issuance.http01 import PATH_PREFIX, valid_token
from certd.model import utcnow
from certd.store.base import Store

log = logging.getLogger(__name__)

NOT_FOUND = b"not found\n"
UNAVAILABLE = b"unavailable\n"
# aiohttp answers request lines longer than this itself (certd/listener.py's fixed 400);
# above its 8 KiB default so that hostile tokens of several KiB still get the fixed 404.
MAX_REQUEST_LINE = 16 * 1024


class ChallengeStats:
    """Counters by result; the metrics endpoint reads them."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {"served": 0, "not_found": 0, "error": 0}


STATS = web.AppKey("stats", ChallengeStats)


def build_app(store: Store, stats: ChallengeStats | None = None,
              clock: Callable = utcnow) -> web.Application:
    stats = stats or ChallengeStats()

    async def handle(request: web.Request) -> web.Response:
        path = request.path
        token = path[len(PATH_PREFIX):] if path.startswith(PATH_PREFIX) else ""
        if request.method not in ("GET", "HEAD") or not valid_token(token):
            stats.counts["not_found"] += 1
            return _fixed(404, NOT_FOUND)
        try:
            key_authorization = await store.get_key_authorization(token, clock())
        except StoreError as exc:
            log.error("challenge: store lookup failed: %s", exc)
            stats.counts["error"] += 1
            return _fixed(503, UNAVAILABLE)
        if key_authorization is None:
            stats.counts["not_found"] += 1
            return _fixed(404, NOT_FOUND)
        stats.counts["served"] += 1
        log.debug("challenge: served token %s to %s", token, request.remote)
        return web.Response(body=key_authorization.encode("ascii"), content_type="text/plain",
                            headers={"Cache-Control": "no-store"})

    app = web.Application(client_max_size=1024,
                          handler_args={"max_line_size": MAX_REQUEST_LINE})
    # [\s\S], not '.': a path with a %0A must not fall through to aiohttp's own 404
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle)
    app[STATS] = stats
    return app


def _fixed(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="text/plain",
                        headers={"Cache-Control": "no-store"})
