"""/api/v1/domains: customers' custom-domain aliases. One certificate per alias, named after
the domain, so one customer's broken DNS never blocks another's certificate."""

from __future__ import annotations

import logging
from datetime import timedelta

from aiohttp import web

from certd import names
from certd.api.http import TOKEN_NAME, Problem, background, certd_of, read_json
from certd.errors import CertdError, StoreError
from certd.model import Alias, Event, utcnow
from certd.views import certificate_views

log = logging.getLogger(__name__)

QUOTA = "api_alias"  # ledger kind: aliases created per token
QUOTA_WINDOW = timedelta(hours=1)
MAX_LIMIT = 500
STATUSES = ("pending", "issuing", "issued", "deployed", "failed", "removing")


def _removing_view(alias: Alias) -> dict:
    return {"domain": alias.domain, "status": "removing", "frontends": list(alias.frontends),
            "certificate": None, "deployments": [], "renewal_at": None, "last_error": None,
            "next_attempt_at": None, "created_at": alias.created_at.isoformat()}


def _alias_view(alias: Alias, view: dict) -> dict:
    cert = None
    if view["serial"]:
        cert = {k: view[k] for k in ("serial", "not_before", "not_after", "fingerprint_sha256")}
    return {
        "domain": alias.domain, "status": view["status"], "frontends": view["frontends"],
        "certificate": cert,
        "deployments": [{k: d[k] for k in ("frontend", "node", "status", "serial", "updated_at")}
                        for d in view["deployments"]],
        "renewal_at": view["renewal_at"], "last_error": view["last_error"],
        "next_attempt_at": view["next_attempt_at"], "created_at": alias.created_at.isoformat(),
    }


async def domain_views(request: web.Request, aliases: list[Alias]) -> list[dict]:
    """The domain objects of `aliases`, from one batch read."""
    live = [a for a in aliases if not a.removing]
    views = await certificate_views(certd_of(request), [a.domain for a in live], utcnow())
    by_domain = {a.domain: _alias_view(a, v) for a, v in zip(live, views)}
    return [by_domain.get(a.domain) or _removing_view(a) for a in aliases]


async def domain_view(request: web.Request, alias: Alias) -> dict:
    return (await domain_views(request, [alias]))[0]


def _domain(raw, policy) -> str:
    """The alias policy (certd/names.py: check_alias) as problem documents."""
    if not isinstance(raw, str):
        raise Problem(422, "invalid-domain", "domain must be a string")
    try:
        return names.check_alias(raw, policy)
    except names.NameRejected as exc:
        raise Problem(422, getattr(exc, "slug", "invalid-domain"), "Domain refused",
                      str(exc)) from None


async def create(request: web.Request) -> web.Response:
    certd = certd_of(request)
    data = await read_json(request)
    unknown = set(data) - {"domain", "frontends"}
    if unknown:
        raise Problem(400, "unknown-field", "Unknown field",
                      "only 'domain' and 'frontends' are accepted")  # never quotes the input
    policy = certd.config.domains
    domain = _domain(data.get("domain"), policy)
    frontends = data.get("frontends", policy.default_frontends)
    if (not isinstance(frontends, list) or not frontends
            or not all(isinstance(f, str) and f in certd.config.frontends for f in frontends)):
        raise Problem(422, "invalid-frontends", "Unknown or missing frontends",
                      "frontends must list configured frontend groups "
                      "(or set domains.default_frontends)")
    who = request[TOKEN_NAME]
    existing = await certd.store.get_alias(domain)
    if existing is not None:
        _refuse_removing(existing)
        return web.json_response(await domain_view(request, existing), status=200,
                                 headers={"Location": f"/api/v1/domains/{domain}"})
    now = utcnow()
    used = await certd.store.ledger_times(QUOTA, who, now - QUOTA_WINDOW)
    if len(used) >= policy.per_token_per_hour:
        retry = int((used[len(used) - policy.per_token_per_hour] + QUOTA_WINDOW - now)
                    .total_seconds()) + 1
        raise Problem(429, "quota", "Too many new domains",
                      f"{policy.per_token_per_hour} per hour for this token",
                      headers={"Retry-After": str(max(1, retry))})
    try:
        alias, created = await certd.add_alias(Alias(domain, tuple(dict.fromkeys(frontends)),
                                                     who, now))
    except StoreError:
        raise  # not a conflict: the errors middleware answers 503 store-unavailable
    except CertdError as exc:
        raise Problem(409, "conflict", "Domain conflicts", str(exc)) from None
    if not created:  # a concurrent request won the race
        _refuse_removing(alias)
        return web.json_response(await domain_view(request, alias), status=200,
                                 headers={"Location": f"/api/v1/domains/{domain}"})
    await certd.store.ledger_add(QUOTA, [who], now)
    await certd.store.add_event(Event("api.domain.add", f"api[{who}]: add {domain}",
                                      certificate=domain, data={"token": who,
                                                                "frontends": list(frontends)}))

    async def work() -> None:
        try:
            if await certd.renew(domain, wait=True) is not None:
                await certd.deploy(domain, only_stale=True)
        except CertdError as exc:
            log.warning("api: %s: %s", domain, exc)

    background(request, work())
    return web.json_response(await domain_view(request, alias), status=202,
                             headers={"Location": f"/api/v1/domains/{domain}"})


def _refuse_removing(alias: Alias) -> None:
    if alias.removing:
        raise Problem(409, "domain-removing", "Domain is being removed",
                      f"{alias.domain} is being removed from the nodes; add it again once "
                      "GET answers 404", headers={"Retry-After": "10"})


async def _get_alias(request: web.Request) -> Alias:
    domain = request.match_info["domain"]
    try:
        domain = names.normalise(domain)
    except names.NameRejected:
        raise Problem(404, "unknown-domain", "No such domain") from None
    alias = await certd_of(request).store.get_alias(domain)
    if alias is None:
        raise Problem(404, "unknown-domain", "No such domain")
    return alias


async def show(request: web.Request) -> web.Response:
    return web.json_response(await domain_view(request, await _get_alias(request)))


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
    cursor = request.query.get("cursor") or None
    store = certd_of(request).store
    items: list[dict] = []
    after = cursor
    while len(items) < limit:  # filtering by status may need more than one page
        page = await store.list_aliases(limit=limit, after=after)
        if not page:
            after = None
            break
        for alias, view in zip(page, await domain_views(request, page)):
            after = alias.domain
            if status is None or view["status"] == status:
                items.append(view)
                if len(items) == limit:
                    break
        if len(page) < limit and len(items) < limit:
            after = None
            break
    return web.json_response({"items": items, "next_cursor": after})


async def remove(request: web.Request) -> web.Response:
    alias = await _get_alias(request)
    revoke = _flag(request, "revoke")
    certd = certd_of(request)
    who = request[TOKEN_NAME]
    await certd.store.add_event(Event(
        "api.domain.remove", f"api[{who}]: remove {alias.domain}"
        + (" and revoke its certificate" if revoke else ""),
        certificate=alias.domain, data={"token": who, "revoke": revoke}))

    async def work() -> None:
        try:
            await certd.remove_alias(alias.domain, revoke=revoke)
        except CertdError as exc:
            log.warning("api: remove %s: %s", alias.domain, exc)

    await certd.store.mark_alias_removing(alias.domain)
    background(request, work())
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
