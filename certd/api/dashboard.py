"""The read endpoints the dashboard (certd/ui/) needs beyond the certificate, domain and alert
resources: who the token is (/api/v1/whoami, so the page shows only the buttons the token may
press), the overview (/api/v1/overview), the timeline (/api/v1/timeline) and the event log
(/api/v1/events, newest first, paged by a cursor). Thin: the rules are in certd/dashboard.py
and certd/views.py. Neither the overview nor the timeline builds a view per alias: with 10,000
aliases each costs a few bulk reads (see certd/dashboard.py)."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from certd import dashboard
from certd.api.alerts import alert_view
from certd.api.http import TOKEN_NAME, TOKEN_SCOPE, Problem, certd_of
from certd.model import Event, utcnow
from certd.views import certificate_views

log = logging.getLogger(__name__)

MAX_EVENTS = 500
MAX_DAYS = 365
MAX_MOMENTS = 1000  # the timeline's listed moments (the plot counts them all)
MAX_FILTER = 255  # characters of a certificate or kind filter


def _int(request: web.Request, name: str, default: int | None, low: int, high: int
         ) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise Problem(400, "bad-parameter", f"{name} must be an integer")
    value = int(raw)
    if not low <= value <= high:
        raise Problem(400, "bad-parameter", f"{name} must be {low}..{high}")
    return value


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"name": request[TOKEN_NAME], "scope": request[TOKEN_SCOPE]},
                             headers={"Cache-Control": "no-store"})


async def overview(request: web.Request) -> web.Response:
    certd = certd_of(request)
    now = utcnow()
    names = {c.name for c in certd.config.certificates}
    specs = [s for s in certd.specs() if s.name in names]
    statuses = {d: s for d, s in (await certd.store.alias_statuses()).items() if d not in names}
    shown = []
    for domain in dashboard.worst_aliases(statuses):
        alias = await certd.store.get_alias(domain)
        if alias is not None:  # removed in between
            shown.append(certd.alias_spec(alias))
    views = await certificate_views(certd, specs + shown, now)
    alerts = await certd.store.active_alerts()
    body = dashboard.overview(certd.config, views[:len(specs)], statuses, views[len(specs):],
                              alerts)
    body["worst"] = [alert_view(a) for a in body["worst"]]
    return web.json_response(body)


MAX_STALE = 60.0  # seconds: the timeline may show moments read this long ago at most


@dataclass
class _Moments:
    """One Certd's timeline moments, sorted, as read under the store's change stamp `stamp`
    at `read_at` (monotonic), for `config`; `refresh`: a read in flight."""

    stamp: int
    config: object
    read_at: float
    at: datetime
    found: list
    refresh: asyncio.Task | None = None


_MOMENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def _read_moments(certd, stamp: int) -> _Moments:
    config = certd.config
    names = [c.name for c in config.certificates]
    names += [d for d, s in (await certd.store.alias_statuses()).items() if s != "removing"]
    rows = await certd.store.overview()
    found = sorted(dashboard.moments(rows, dict.fromkeys(names),
                                     before_expiry=config.renewal.before_expiry,
                                     ari=config.acme.ari))
    return _Moments(stamp, config, time.monotonic(), utcnow(), found)


async def _refresh(certd, stamp: int) -> None:
    try:
        fresh = await _read_moments(certd, stamp)
    except Exception:  # the next request reads again (synchronously once stale)
        log.exception("timeline: reading the moments failed")
        if (old := _MOMENTS.get(certd)) is not None:
            old.refresh = None
        return
    _MOMENTS[certd] = fresh


async def _moments(certd) -> _Moments:
    """The moments of every certificate, kept per Certd against the store's change stamp
    (read before the data, as certd/api/cache.py does): the same stamp and config, the kept
    ones. After a write (another stamp) the kept ones are still answered while a read in the
    background replaces them (a page with 10,000 aliases need not wait the ~0.5 s of that
    read), unless they are over MAX_STALE seconds old or the config changed: then read now."""
    stamp = await certd.store.change_stamp()
    kept = _MOMENTS.get(certd)
    if kept is not None and kept.config is certd.config:
        if kept.stamp == stamp:
            return kept
        if time.monotonic() - kept.read_at < MAX_STALE:
            if kept.refresh is None:
                kept.refresh = asyncio.create_task(_refresh(certd, stamp))
            return kept
    fresh = await _read_moments(certd, stamp)
    _MOMENTS[certd] = fresh
    return fresh


async def timeline(request: web.Request) -> web.Response:
    days = _int(request, "days", 90, 1, MAX_DAYS)
    limit = _int(request, "limit", 300, 0, MAX_MOMENTS)
    kept = await _moments(certd_of(request))
    body = dashboard.timeline(kept.found, utcnow(), days, limit)
    body["as_of"] = kept.at.isoformat()  # when the moments were read from the store
    return web.json_response(body)


def event_view(event: Event) -> dict:
    token = event.data.get("token") if isinstance(event.data, dict) else None
    return {"id": event.id, "at": event.at.isoformat(), "kind": event.kind,
            "severity": event.severity.value, "certificate": event.certificate,
            "node": event.node, "message": event.message,
            "token": token if isinstance(token, str) else None}


async def events(request: web.Request) -> web.Response:
    limit = _int(request, "limit", 100, 1, MAX_EVENTS)
    # the cursor: the id of the previous page's last event (its next_cursor)
    before = _int(request, "cursor", None, 0, 2**63 - 1)
    filters = {}
    for name in ("certificate", "kind"):
        value = request.query.get(name) or None
        if value is not None and len(value) > MAX_FILTER:
            raise Problem(400, "bad-parameter", f"{name} must be at most {MAX_FILTER} characters")
        filters[name] = value
    if any(v is not None and not v.isprintable() for v in filters.values()):
        # no name or kind holds a control character: nothing matches (and a NUL never
        # reaches a store that refuses it)
        return web.json_response({"items": [], "next_cursor": None})
    found = await certd_of(request).store.events(limit=limit + 1, before=before, **filters)
    more = len(found) > limit
    found = found[:limit]
    return web.json_response({"items": [event_view(e) for e in found],
                              "next_cursor": str(found[-1].id) if more else None})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v1/whoami", whoami)
    router.add_get("/api/v1/overview", overview)
    router.add_get("/api/v1/timeline", timeline)
    router.add_get("/api/v1/events", events)
