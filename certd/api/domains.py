"""/api/v1/domains: customers' custom-domain aliases. One certificate per alias, named after
the domain, so one customer's broken DNS never blocks another's certificate."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from certd import aliases, names
from certd.api.cache import cache_of
from certd.api.http import TOKEN_NAME, Problem, certd_of, read_json, submit
from certd.errors import AliasError
from certd.model import Alias, utcnow
from certd.views import certificate_views

log = logging.getLogger(__name__)

MAX_LIMIT = 500
STATUSES = ("pending", "awaiting_dns", "issuing", "issued", "deployed", "failed", "removing")


def _removing_view(alias: Alias) -> dict:
    return {"domain": alias.domain, "status": "removing", "frontends": list(alias.frontends),
            "certificate": None, "deployments": [], "renewal_at": None, "last_error": None,
            "next_attempt_at": None, "created_at": alias.created_at.isoformat(),
            "validation": alias.validation, "dns_record": None, "profile": alias.profile}


def _alias_view(alias: Alias, view: dict, record: dict | None = None) -> dict:
    cert = None
    if view["serial"]:
        cert = {k: view[k] for k in ("serial", "not_before", "not_after", "fingerprint_sha256",
                                     "issuer", "issuer_name", "profile")}
    return {
        "domain": alias.domain, "status": view["status"], "frontends": view["frontends"],
        "certificate": cert,
        "deployments": [{k: d[k] for k in ("frontend", "node", "status", "serial", "updated_at",
                                           "verified")}
                        for d in view["deployments"]],
        "renewal_at": view["renewal_at"], "last_error": view["last_error"],
        "next_attempt_at": view["next_attempt_at"], "created_at": alias.created_at.isoformat(),
        # dns-persist: the TXT record the customer publishes once (null for http-01)
        "validation": alias.validation, "dns_record": record,
        # the ACME profile asked for (null: acme.profile), and the one the certificate has
        "profile": alias.profile,
    }


async def domain_views(request: web.Request, items: list[Alias]) -> list[dict]:
    """The domain objects of `items`, from one batch read."""
    live = [a for a in items if not a.removing]
    certd = certd_of(request)
    views = await certificate_views(certd, [certd.alias_spec(a) for a in live], utcnow())
    records = await aliases.dns_records(certd, live)
    by_domain = {a.domain: _alias_view(a, v, records.get(a.domain)) for a, v in zip(live, views)}
    return [by_domain.get(a.domain) or _removing_view(a) for a in items]


async def domain_view(request: web.Request, alias: Alias) -> dict:
    return (await domain_views(request, [alias]))[0]


# AliasError.kind -> (HTTP status, problem title); a name-policy slug not listed is a 422
REFUSALS = {
    "invalid-frontends": (422, "Unknown or missing frontends"),
    "quota": (429, "Too many new domains"),
    "domain-removing": (409, "Domain is being removed"),
    "conflict": (409, "Domain conflicts"),
    "invalid-validation": (422, "Unknown validation method"),
    "dns-persist-unavailable": (422, "dns-persist validation unavailable"),
    "invalid-profile": (422, "Unknown or unavailable ACME profile"),
}


def _problem(exc: AliasError) -> Problem:
    status, title = REFUSALS.get(exc.kind, (422, "Domain refused"))
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return Problem(status, exc.kind, title, str(exc), headers=headers)


async def create(request: web.Request) -> web.Response:
    certd = certd_of(request)
    data = await read_json(request)
    unknown = set(data) - {"domain", "frontends", "validation", "profile"}
    if unknown:
        raise Problem(400, "unknown-field", "Unknown field", "only 'domain', 'frontends', "
                      "'validation' and 'profile' are accepted")  # never quotes the input
    try:
        added = await aliases.add(certd, data.get("domain"),
                                  data.get("frontends", aliases.DEFAULT),
                                  who=request[TOKEN_NAME],
                                  validation=data.get("validation", "http-01"),
                                  profile=data.get("profile"))
    except AliasError as exc:
        raise _problem(exc) from None
    location = {"Location": f"/api/v1/domains/{added.alias.domain}"}
    if added.created:
        submit(request, "issue", name=added.alias.domain)
    return web.json_response(await domain_view(request, added.alias),
                             status=202 if added.created else 200, headers=location)


def _domain_of(request: web.Request) -> str:
    try:
        return names.normalise(request.match_info["domain"])
    except names.NameRejected:
        raise Problem(404, "unknown-domain", "No such domain") from None


async def _get_alias(request: web.Request, domain: str | None = None) -> Alias:
    domain = _domain_of(request) if domain is None else domain
    alias = await certd_of(request).store.get_alias(domain)
    if alias is None:
        raise Problem(404, "unknown-domain", "No such domain")
    return alias


async def _cached(request: web.Request, key: tuple,
                  render: Callable[[], Awaitable[object]]) -> web.Response:
    """`render()`'s JSON, from this process's render cache (certd/api/cache.py) while the
    store's change stamp, read before any data, says nothing it shows has changed; the same
    bytes and headers as web.json_response."""
    certd = certd_of(request)
    cache = cache_of(certd)
    stamp = await certd.store.change_stamp()
    config = certd.config
    body = cache.get(key, stamp, config)
    if body is None:
        body = json.dumps(await render()).encode()
        cache.put(key, stamp, config, body)
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def show(request: web.Request) -> web.Response:
    domain = _domain_of(request)

    async def render() -> dict:
        return await domain_view(request, await _get_alias(request, domain))

    return await _cached(request, ("show", domain), render)


async def listing(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise Problem(400, "bad-parameter", "limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Problem(400, "bad-parameter", f"limit must be 1..{MAX_LIMIT}")
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise Problem(400, "bad-parameter", f"status must be one of {', '.join(STATUSES)}")
    text = (request.query.get("q") or "").lower()  # a part of the name (the dashboard's filter)
    if len(text) > 253:  # a text no name holds (a control character) just matches nothing
        raise Problem(400, "bad-parameter", "q must be at most 253 characters")
    cursor = request.query.get("cursor") or None
    store = certd_of(request).store

    async def render() -> dict:
        items: list[dict] = []
        after = cursor
        while len(items) < limit:  # filtering by status may need more than one page
            page = await store.list_aliases(limit=limit, after=after)
            if not page:
                after = None
                break
            wanted = [a for a in page if text in a.domain]  # views only of names that match
            views = dict(zip([a.domain for a in wanted], await domain_views(request, wanted)))
            for alias in page:
                after = alias.domain
                view = views.get(alias.domain)
                if view is not None and (status is None or view["status"] == status):
                    items.append(view)
                    if len(items) == limit:
                        break
            if len(page) < limit and len(items) < limit:
                after = None
                break
        return {"items": items, "next_cursor": after}

    return await _cached(request, ("list", limit, status, text, cursor), render)


async def remove(request: web.Request) -> web.Response:
    alias = await _get_alias(request)
    revoke = _flag(request, "revoke")
    certd = certd_of(request)
    await aliases.request_removal(certd, alias, request[TOKEN_NAME], revoke=revoke)
    submit(request, "remove", name=alias.domain, revoke=revoke)
    return web.json_response({"domain": alias.domain, "status": "removing", "revoke": revoke},
                             status=202)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise Problem(400, "bad-parameter", f"{name} must be true or false")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/domains", create)
    router.add_get("/api/v1/domains", listing)
    router.add_get("/api/v1/domains/{domain}", show)
    router.add_delete("/api/v1/domains/{domain}", remove)
