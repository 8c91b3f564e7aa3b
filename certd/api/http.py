"""What every API handler shares: the app's keys, problem documents, auth, JSON bodies,
background work."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from certd.api import scopes
from certd.api.tokens import Tokens, allows
from certd.errors import StoreError
from certd.service import Certd

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
PROBLEM = "urn:certd:problem:"  # + a stable slug per error
STORE_RETRY_AFTER = 10  # seconds, on a 503 store-unavailable

CERTD = web.AppKey("certd", Certd)
TOKENS = web.AppKey("tokens", Tokens)
TASKS = web.AppKey("tasks", set)
TOKEN_NAME = web.RequestKey("token_name", str)
TOKEN_SCOPE = web.RequestKey("token_scope", str)  # its scope (certd/api/tokens.py)
JOBS = web.AppKey("jobs", object)  # certd/api/jobs.py: Local or Forward
WORKER = web.AppKey("worker", object)  # this API worker's index (certd/workers.py), or None


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
    except StoreError as exc:
        # a locked database, a full disk, a read-only file: the operator's problem, and its
        # message (the file's path, SQLite's words) is for the log only
        log.error("api: %s %s: store unavailable: %s", request.method, _route(request), exc)
        response = problem(503, "store-unavailable", "Store unavailable",
                           "certd cannot use its store right now; try again later")
        response.headers["Retry-After"] = str(STORE_RETRY_AFTER)
        return response
    except Exception:
        log.exception("api: %s %s failed", request.method, _route(request))
        return problem(500, "internal", "Internal error", "see certd's log")


def _route(request: web.Request) -> str:
    """The matched route's pattern for a log line ('/api/v1/domains/{domain}'): the path
    itself is the client's bytes."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


@web.middleware
async def authenticate(request: web.Request, handler) -> web.StreamResponse:
    """A bearer token, then its scope against certd/api/scopes.py's table for the matched
    route: 401 without a known token, 403 `forbidden` naming the scope needed. A BUNDLE route
    goes to its handler, which accepts nothing but its own one-shot token."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None  # None: 404/405 to come
    need = scopes.needed(request.method, route) if route is not None else None
    if need in (scopes.PUBLIC, scopes.BUNDLE) or (
            route == "/metrics" and not request.app[CERTD].config.api.metrics_auth):
        return await handler(request)
    if route is None and not request.path.startswith("/api/"):
        return await handler(request)  # aiohttp's 404/405 outside the API
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    token = request.app[TOKENS].lookup(presented.strip()) if scheme.lower() == "bearer" else None
    if token is None:
        response = problem(401, "unauthorized", "Missing or unknown bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="certd"'
        return response
    request[TOKEN_NAME] = token.name
    request[TOKEN_SCOPE] = token.scope
    if route is not None and need is None:
        log.error("api: %s %s has no scope in certd/api/scopes.py; refused", request.method,
                  route)
        return problem(403, "forbidden", "No scope grants this route",
                       "this route has no scope in certd's table; nobody may call it")
    if need is not None and not allows(token.scope, need):
        return problem(403, "forbidden", "The token lacks the scope this request needs",
                       f"needs the '{need}' scope; token '{token.name}' has '{token.scope}'",
                       scope=need)
    return await handler(request)


def certd_of(request: web.Request) -> Certd:
    return request.app[CERTD]


def submit(request: web.Request, op: str, **args: Any) -> None:
    """Start the job `op` (certd/api/jobs.py) past the response, in the process that does
    such work."""
    request.app[JOBS].submit(request, op, **args)


async def read_json(request: web.Request) -> dict:
    """The body as a JSON object, or a problem (content type, size, syntax, shape)."""
    if request.content_type != "application/json":
        raise Problem(415, "unsupported-media-type", "Send application/json")
    try:
        data = await request.json(loads=_loads)
    except (ValueError, LookupError, RecursionError):  # an unknown charset; nested too deep
        raise Problem(400, "malformed-json", "The body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Problem(400, "malformed-json", "The body must be a JSON object")
    return data


def _loads(text: str) -> Any:
    """json.loads, refusing a key given twice in one object (which one would count is up to
    each parser: a proxy and certd could disagree)."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("a key appears twice")
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
