"""GET /api/v1/salt/bundles/{batch}: a minion fetches its batch (Salt pull mode).

Authorized by nothing but a one-shot bundle token (`Authorization: Bearer cdb_...`), made by
the Salt deployer for one minion and one batch (certd/deployers/salt_pull.py) and stored as its
SHA-256: taken once (atomically, across processes), within its lifetime, for that batch only.
Every refusal (no token, a malformed one, unknown, spent, expired, another batch's, a
certificate gone from the store) is the same fixed 401 that echoes nothing. The answer is the
batch's tar (`<i>/<file>`), `Cache-Control: no-store`; the connection caps of the API
listener (certd/listener.py) bound how fast anyone can try tokens."""

from __future__ import annotations

import logging

from aiohttp import web

from certd.api.http import certd_of, problem
from certd.deployers import salt_pull
from certd.model import Event, utcnow

log = logging.getLogger(__name__)


def _refused() -> web.Response:
    response = problem(401, "unauthorized", "Missing or unknown bearer token")
    response.headers["WWW-Authenticate"] = 'Bearer realm="certd"'
    response.headers["Cache-Control"] = "no-store"
    return response


async def get_bundle(request: web.Request) -> web.Response:
    batch = request.match_info["batch"]
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    if (scheme.lower() != "bearer" or not salt_pull.TOKEN.fullmatch(presented)
            or not salt_pull.BATCH.fullmatch(batch)):
        return _refused()
    certd = certd_of(request)
    grant = await certd.store.take_bundle_token(salt_pull.token_digest(presented), batch,
                                                utcnow())
    if grant is None:
        log.info("api: salt bundle: refused a token (unknown, spent, expired or another "
                 "batch's)")
        return _refused()
    items = []
    for name, serial in grant.items:
        found = next((c for c in await certd.store.certificate_history(name)
                      if c.serial == serial and c.key_pem), None)
        if found is None:
            log.error("api: salt bundle %s for %s: %s serial %s is no longer in the store",
                      batch, grant.minion, name, serial)
            return _refused()
        items.append((name, found))
    body = salt_pull.bundle_tar(items)
    await certd.store.add_event(Event(
        "salt.bundle", f"api[salt:{grant.minion}]: bundle {batch} fetched "
        f"({len(items)} certificate(s): {', '.join(n for n, _ in grant.items)})",
        data={"batch": batch, "minion": grant.minion}))
    return web.Response(body=body, content_type="application/x-tar",
                        headers={"Cache-Control": "no-store"})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(salt_pull.ROUTE, get_bundle)
