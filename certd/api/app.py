"""The REST API listener (never the challenge listener): JSON in and out, errors as RFC 7807
problem documents with a stable `type`, bearer tokens compared in constant time, every change
recorded in the event log with the token's name.

This is the foundation the custom-domain endpoints build on: /healthz, the certificate
resources and their renew/deploy actions."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from certd import __version__
from certd.api.tokens import Tokens
from certd.errors import CertdError
from certd.model import Event, utcnow
from certd.service import Certd
from certd.views import certificate_view

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
PROBLEM = "urn:certd:problem:"  # + a stable slug per error

CERTD = web.AppKey("certd", Certd)
TOKENS = web.AppKey("tokens", Tokens)
TASKS = web.AppKey("tasks", set)
TOKEN_NAME = web.RequestKey("token_name", str)


def problem(status: int, slug: str, title: str, detail: str = "", **extra: Any
            ) -> web.Response:
    body = {"type": PROBLEM + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.json_response(body, status=status, content_type="application/problem+json")


class Problem(Exception):
    """Raised by handlers; the middleware turns it into a problem document."""

    def __init__(self, status: int, slug: str, title: str, detail: str = "", **extra: Any):
        self.response = problem(status, slug, title, detail, **extra)


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as exc:
        return exc.response
    except web.HTTPException as exc:  # aiohttp's own 404/405/413: same shape as ours
        slug = {404: "not-found", 405: "method-not-allowed",
                413: "body-too-large"}.get(exc.status, "http-error")
        return problem(exc.status, slug, exc.reason)
    except Exception:
        log.exception("api: %s %s failed", request.method, request.path)
        return problem(500, "internal", "Internal error", "see certd's log")


@web.middleware
async def authenticate(request: web.Request, handler) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    name = request.app[TOKENS].check(token.strip()) if scheme.lower() == "bearer" else None
    if name is None:
        response = problem(401, "unauthorized", "Missing or unknown bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="certd"'
        return response
    request[TOKEN_NAME] = name
    return await handler(request)


def _certd(request: web.Request) -> Certd:
    return request.app[CERTD]


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    try:
        _certd(request).spec(name)
    except CertdError:
        raise Problem(404, "unknown-certificate", "No such certificate") from None
    return name


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def list_certificates(request: web.Request) -> web.Response:
    certd, now = _certd(request), utcnow()
    items = [await certificate_view(certd, s.name, now) for s in certd.specs()]
    return web.json_response({"items": items})


async def get_certificate(request: web.Request) -> web.Response:
    name = _name(request)
    return web.json_response(await certificate_view(_certd(request), name, utcnow()))


async def _audit(request: web.Request, kind: str, name: str, message: str) -> None:
    who = request[TOKEN_NAME]
    await _certd(request).store.add_event(Event(
        kind, f"api[{who}]: {message}", certificate=name, data={"token": who}))


def _background(request: web.Request, coro) -> None:
    """Run work past the response; failures are recorded by the service as events."""
    task = asyncio.get_running_loop().create_task(coro)
    tasks = request.app[TASKS]
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def renew_certificate(request: web.Request) -> web.Response:
    name = _name(request)
    force = request.query.get("force", "true").lower() not in ("0", "false", "no")
    await _audit(request, "api.renew", name, f"renew {name} (force={force})")
    certd = _certd(request)

    async def work() -> None:
        try:
            if await certd.renew(name, force=force, wait=True) is not None:
                await certd.deploy(name, only_stale=not force)
        except CertdError as exc:
            log.warning("api: renew %s: %s", name, exc)

    _background(request, work())
    return web.json_response({"accepted": True, "certificate": name}, status=202,
                             headers={"Location": f"/api/v1/certificates/{name}"})


async def deploy_certificate(request: web.Request) -> web.Response:
    name = _name(request)
    await _audit(request, "api.deploy", name, f"deploy {name}")
    certd = _certd(request)

    async def work() -> None:
        try:
            await certd.deploy(name)
        except CertdError as exc:
            log.warning("api: deploy %s: %s", name, exc)

    _background(request, work())
    return web.json_response({"accepted": True, "certificate": name}, status=202,
                             headers={"Location": f"/api/v1/certificates/{name}"})


async def _cancel_tasks(app: web.Application) -> None:
    for task in list(app[TASKS]):
        task.cancel()
    await asyncio.gather(*app[TASKS], return_exceptions=True)


def build_app(certd: Certd, tokens: Tokens) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors, authenticate])
    app[CERTD] = certd
    app[TOKENS] = tokens
    app[TASKS] = set()
    app.on_cleanup.append(_cancel_tasks)
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/api/v1/certificates", list_certificates)
    r.add_get("/api/v1/certificates/{name}", get_certificate)
    r.add_post("/api/v1/certificates/{name}/renew", renew_certificate)
    r.add_post("/api/v1/certificates/{name}/deploy", deploy_certificate)
    return app
