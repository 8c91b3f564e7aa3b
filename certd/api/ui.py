"""The operators' dashboard: three hand-written files (certd/ui/static/) served at /ui/ by the
API listener, read once from the package. The page holds no data: it reads the REST API with
the bearer token the operator types in, kept in the tab's sessionStorage and sent as an
Authorization header (never in a URL or a cookie: with no ambient credential there is nothing
for a cross-site request to ride on, so no CSRF token is needed). The files are therefore public
routes (certd/api/scopes.py), outside the API's OpenAPI document.

Every response under /ui/ carries a strict Content-Security-Policy (only this origin's script,
style and fetch; no inline script or style; no framing, no <base>, no form posts), nosniff and
no-referrer."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from certd.api.http import problem

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # for browsers without frame-ancestors
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",  # revalidated: a new certd version's page at once
}
ASSETS = {  # the only files served: name -> content type
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
FILES = web.AppKey("ui_files", dict)


def _load() -> dict[str, bytes]:
    static = resources.files("certd.ui").joinpath("static")
    return {name: static.joinpath(name).read_bytes() for name in ASSETS}


def _send(request: web.Request, name: str) -> web.Response:
    body = request.app[FILES][name]
    return web.Response(body=body, headers={**HEADERS, "Content-Type": ASSETS[name]})


async def index(request: web.Request) -> web.Response:
    return _send(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        response = problem(404, "not-found", "Not Found")
        response.headers.update(HEADERS)
        return response
    return _send(request, name)


async def redirect(request: web.Request) -> web.Response:
    # returned, not raised: the problem middleware turns raised HTTP exceptions into errors
    return web.Response(status=302, headers={**HEADERS, "Location": "/ui/"})


def add_routes(app: web.Application) -> None:
    app[FILES] = _load()
    app.router.add_get("/ui", redirect)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/{asset}", asset)
