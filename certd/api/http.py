"""What every API handler shares: the app's keys, problem documents, auth, JSON bodies,
background work."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from certd.api.tokens import Tokens
from certd.service import Certd

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

    def __init__(self, status: int, slug: str, title: str, detail: str = "", *,
                 headers: dict[str, str] | None = None, **extra: Any):
        self.response = problem(status, slug, title, detail, **extra)
        self.response.headers.update(headers or {})


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as exc:
        return exc.response
    except web.HTTPException as exc:  # aiohttp's own 404/405/413: same shape as ours
        slug = {404: "not-found", 405: "method-not-allowed",
                413: "body-too-large"}.get(exc.status, "http-error")
        response = problem(exc.status, slug, exc.reason)
        if "Allow" in exc.headers:  # a 405 must say what is allowed (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("api: %s %s failed", request.method, request.path)
        return problem(500, "internal", "Internal error", "see certd's log")


@web.middleware
async def authenticate(request: web.Request, handler) -> web.StreamResponse:
    if not (request.path.startswith("/api/") or (
            request.path == "/metrics" and request.app[CERTD].config.api.metrics_auth)):
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    name = request.app[TOKENS].check(token.strip()) if scheme.lower() == "bearer" else None
    if name is None:
        response = problem(401, "unauthorized", "Missing or unknown bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="certd"'
        return response
    request[TOKEN_NAME] = name
    return await handler(request)


def certd_of(request: web.Request) -> Certd:
    return request.app[CERTD]


async def read_json(request: web.Request) -> dict:
    """The body as a JSON object, or a problem (content type, size, syntax, shape)."""
    if request.content_type != "application/json":
        raise Problem(415, "unsupported-media-type", "Send application/json")
    try:
        data = await request.json()
    except (ValueError, LookupError):  # LookupError: an unknown charset in Content-Type
        raise Problem(400, "malformed-json", "The body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Problem(400, "malformed-json", "The body must be a JSON object")
    return data


def background(request: web.Request, coro) -> None:
    """Run work past the response; failures are recorded by the service as events."""
    task = asyncio.get_running_loop().create_task(coro)
    tasks = request.app[TASKS]
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("api: background work failed", exc_info=task.exception())
