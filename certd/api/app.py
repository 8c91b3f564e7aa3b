"""The REST API listener (never the challenge listener): JSON in and out, errors as RFC 7807
problem documents with a stable `type`, bearer tokens compared in constant time, every change
recorded in the event log with the token's name.

This is the foundation the custom-domain endpoints build on: /healthz, the certificate
resources and their renew/deploy actions."""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import web

from certd import __version__, metrics
from certd.api import alerts, dashboard, domains, openapi, ui
from certd.api import salt as salt_bundles
from certd.api.http import (
    CERTD,
    JOBS,
    MAX_BODY,
    STORE_RETRY_AFTER,
    TASKS,
    TOKEN_NAME,
    TOKENS,
    WORKER,
    Problem,
    authenticate,
    certd_of,
    errors,
    submit,
)
from certd.api.tokens import Tokens
from certd.dashboard import history_item
from certd.errors import CertdError, StoreError
from certd.model import CertificateSpec, Event, utcnow
from certd.service import Certd
from certd.views import certificate_views

log = logging.getLogger(__name__)

async def _spec(request: web.Request) -> CertificateSpec:
    try:
        return await certd_of(request).resolve(request.match_info["name"])
    except StoreError:
        raise
    except CertdError:
        raise Problem(404, "unknown-certificate", "No such certificate") from None




HEALTH_TIMEOUT = 2.0  # seconds the store gets to answer a health check
HEALTH_PROBE = "healthz.invalid"  # an alias that cannot exist: one indexed lookup
UNHEALTHY = (b'{"type": "urn:certd:problem:store-unavailable", "title": "Store unavailable", '
             b'"status": 503}')  # fixed: the reason is in the log


async def healthz(request: web.Request) -> web.Response:
    """For load balancers: 200 if this process can query its store (one cheap indexed read,
    bounded by HEALTH_TIMEOUT), else 503 with a fixed body (the reason is in the log). The
    body names the process (`pid`, and `worker`: its index among the API workers, or null
    for the daemon itself), so a check through a balancer shows who answered."""
    try:
        await asyncio.wait_for(certd_of(request).store.get_alias(HEALTH_PROBE), HEALTH_TIMEOUT)
    except (TimeoutError, StoreError, OSError) as exc:
        log.warning("healthz: store unreachable: %s", exc or type(exc).__name__)
        return web.Response(status=503, body=UNHEALTHY, content_type="application/problem+json",
                            headers={"Cache-Control": "no-store",
                                     "Retry-After": str(STORE_RETRY_AFTER)})
    return web.json_response({"status": "ok", "version": __version__, "store": "ok",
                              "pid": os.getpid(), "worker": request.app.get(WORKER)},
                             headers={"Cache-Control": "no-store"})


async def list_certificates(request: web.Request) -> web.Response:
    certd, now = certd_of(request), utcnow()
    items = await certificate_views(certd, await certd.all_specs(), now)
    return web.json_response({"items": items})


async def get_certificate(request: web.Request) -> web.Response:
    [view] = await certificate_views(certd_of(request), [await _spec(request)], utcnow())
    return web.json_response(view)


HISTORY = 20  # certificates of a name's history shown


async def certificate_history(request: web.Request) -> web.Response:
    """The name's certificates, newest first (the dashboard's serial history)."""
    name = (await _spec(request)).name
    certs = await certd_of(request).store.certificate_history(name, limit=HISTORY)
    # the store gives the last HISTORY oldest first
    return web.json_response({"items": [history_item(c) for c in reversed(certs)]})


async def _audit(request: web.Request, kind: str, name: str, message: str) -> None:
    who = request[TOKEN_NAME]
    await certd_of(request).store.add_event(Event(
        kind, f"api[{who}]: {message}", certificate=name, data={"token": who}))


async def renew_certificate(request: web.Request) -> web.Response:
    name = (await _spec(request)).name
    force = request.query.get("force", "true").lower() not in ("0", "false", "no")
    await _audit(request, "api.renew", name, f"renew {name} (force={force})")
    submit(request, "renew", name=name, force=force)
    return web.json_response({"accepted": True, "certificate": name}, status=202,
                             headers={"Location": f"/api/v1/certificates/{name}"})


async def deploy_certificate(request: web.Request) -> web.Response:
    name = (await _spec(request)).name
    await _audit(request, "api.deploy", name, f"deploy {name}")
    submit(request, "deploy", name=name)
    return web.json_response({"accepted": True, "certificate": name}, status=202,
                             headers={"Location": f"/api/v1/certificates/{name}"})


async def _cancel_tasks(app: web.Application) -> None:
    for task in list(app[TASKS]):
        task.cancel()
    await asyncio.gather(*app[TASKS], return_exceptions=True)


def build_app(certd: Certd, tokens: Tokens, *, monitor=None, challenge_stats=None,
              sweeper=None, jobs=None, worker: int | None = None) -> web.Application:
    """The API app. `monitor`, `challenge_stats` and `sweeper` (the daemon's) feed /metrics
    and /api/v1/alerts; without them those show what the store alone knows. `jobs`
    (certd/api/jobs.py) runs what requests start; default: in this process. `worker`: this
    API worker's index, for /healthz."""
    from certd.api.jobs import Local

    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors, authenticate])
    app[CERTD] = certd
    app[JOBS] = jobs if jobs is not None else Local(certd)
    app[WORKER] = worker
    app[TOKENS] = tokens
    app[TASKS] = set()
    app.on_cleanup.append(_cancel_tasks)
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/api/v1/certificates", list_certificates)
    r.add_get("/api/v1/certificates/{name}", get_certificate)
    r.add_get("/api/v1/certificates/{name}/history", certificate_history)
    r.add_post("/api/v1/certificates/{name}/renew", renew_certificate)
    r.add_post("/api/v1/certificates/{name}/deploy", deploy_certificate)
    domains.add_routes(r)
    salt_bundles.add_routes(r)
    r.add_get("/api/v1/openapi.json", openapi.serve)
    dashboard.add_routes(r)
    ui.add_routes(app)
    rollout = certd.rollout_stats if certd is not None else None
    alerts.add_routes(app, metrics.Sources(certd, monitor, challenge_stats, sweeper, rollout))
    return app
