"""Which token scope each API route needs: the one table the `authenticate` middleware
(certd/api/http.py) consults. A route missing from it answers 403 to every token, so a new
route is closed until someone decides its scope here; tests/test_api.py checks that every
route build_app registers is listed. The OpenAPI document takes each operation's scope from
here too.

Scopes (certd/api/tokens.py): `read` < `aliases` < `admin`, each granting what the ones before
it grant. Two values are not scopes: PUBLIC (no token) and BUNDLE (no API token; the handler
checks a one-shot Salt bundle token itself). HEAD is GET (aiohttp registers it with every GET route)."""

from __future__ import annotations

PUBLIC = "public"  # no token at all
# no API token: the handler itself takes a one-shot Salt bundle token (certd/api/salt.py);
# an API token, whatever its scope, is just an unknown bundle token there
BUNDLE = "bundle-token"

ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): "read",  # PUBLIC when api.metrics_auth is false
    ("GET", "/api/v1/openapi.json"): "read",
    ("GET", "/api/v1/alerts"): "read",
    ("GET", "/api/v1/certificates"): "read",
    ("GET", "/api/v1/certificates/{name}"): "read",
    ("POST", "/api/v1/certificates/{name}/renew"): "admin",
    ("POST", "/api/v1/certificates/{name}/deploy"): "admin",
    ("GET", "/api/v1/domains"): "read",
    ("GET", "/api/v1/domains/{domain}"): "read",
    ("POST", "/api/v1/domains"): "aliases",
    ("DELETE", "/api/v1/domains/{domain}"): "aliases",  # ?revoke=true too: the alias's own
    ("GET", "/api/v1/salt/bundles/{batch}"): BUNDLE,
    # the dashboard's reads (certd/api/dashboard.py)
    ("GET", "/api/v1/whoami"): "read",
    ("GET", "/api/v1/certificates/{name}/history"): "read",
    ("GET", "/api/v1/overview"): "read",
    ("GET", "/api/v1/timeline"): "read",
    ("GET", "/api/v1/events"): "read",
    # the dashboard's static files (certd/api/ui.py): no data in them, so no token; they are
    # not API routes and stay out of the OpenAPI document
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/{asset}"): PUBLIC,
}


def needed(method: str, route: str) -> str | None:
    """The scope (or PUBLIC) that `method` on the route template `route` needs; None if the
    table has no entry (then nobody may call it)."""
    return ROUTES.get(("GET" if method == "HEAD" else method, route))
