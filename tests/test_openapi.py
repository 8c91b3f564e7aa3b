"""The OpenAPI document (certd/api/openapi.py): served behind the token, valid, listing exactly
the routes build_app registers; then schemathesis fuzzes the live API (a real TCP listener on
127.0.0.1, ACME pointing at a closed port) against it: no 5xx, and every response conforms to
the documented status codes, content types, headers and schemas."""

from __future__ import annotations

import re

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from certd.api import app as api
from certd.api.openapi import document
from certd.api.tokens import parse
from tests.certd_api import api_client, api_config, live_api

TOKEN = "openapi-token-0123456789"
H = {"Authorization": f"Bearer {TOKEN}"}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _config(tmp):
    return api_config(
        tmp, domains={"default_frontends": ["web"], "denied": ["blocked.example"],
                      "per_token_per_hour": 1000, "allow_special_use": ["example"]},
        certificates=[{"name": "portal", "domains": ["portal.example.org"],
                       "frontends": ["web"]}])


@pytest.fixture
async def client(tmp_path):
    async with api_client(_config(tmp_path), parse(f"ops {TOKEN}\n", "tokens")) as c:
        yield c


async def test_served_behind_the_token_and_same_as_document(client):
    denied = await client.get("/api/v1/openapi.json")
    assert denied.status == 401
    resp = await client.get("/api/v1/openapi.json", headers=H)
    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.json() == document()


def test_document_is_valid_openapi():
    doc = document()
    assert doc["openapi"].startswith("3.0.")
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"], "type": "http",
        "scheme": "bearer"}
    # every local $ref resolves
    def refs(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)
    for ref in refs(doc):
        target = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
    import openapi_spec_validator as validator
    validator.validate(doc)


def _resolve(doc, node):
    return doc["components"]["responses"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node \
        else node


def test_document_matches_the_router_and_the_auth_rules():
    doc = document()
    app = api.build_app(None, parse(f"ops {TOKEN}\n", "tokens"))
    routed = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD"  # aiohttp adds HEAD to every GET; not part of the API
              and not (r.resource.canonical + "/").startswith("/ui/")}  # the dashboard's files
    documented = {(m, p) for p, item in doc["paths"].items() for m in item if m in METHODS}
    assert routed == documented
    assert all(p in ("/healthz", "/metrics") or p.startswith("/api/") for _, p in routed)
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == names, (method, path)
            public = op.get("security", doc["security"]) == []
            assert public == (path == "/healthz"), (method, path)
            statuses = op["responses"]
            assert ("401" in statuses) == (not public), (method, path)
            for code, resp in statuses.items():
                resp = _resolve(doc, resp)
                kinds = set(resp.get("content", {}))
                expected = {"application/problem+json"} if int(code) >= 400 \
                    else {"text/plain"} if path == "/metrics" \
                    else {"application/x-tar"} if "/salt/bundles/" in path \
                    else {"application/json"}
                assert kinds == expected, (method, path, code)
    new = doc["components"]["schemas"]["NewDomain"]
    assert new["additionalProperties"] is False and new["required"] == ["domain"]


# --- schemathesis against a live listener -----------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """certd's API on a free 127.0.0.1 port, served from its own thread and event loop (the
    schemathesis tests are synchronous and call it with requests)."""
    tmp = tmp_path_factory.mktemp("openapi")
    with live_api(_config(tmp), parse(f"ops {TOKEN}\n", "tokens")) as base:
        yield base


@pytest.fixture(scope="module")
def api_schema(live):
    served = requests.get(f"{live}/api/v1/openapi.json", headers=H, timeout=10)
    served.raise_for_status()
    # A schema-valid domain may still be refused for policy reasons the schema cannot say
    # (public suffix, domains.denied, unknown frontend group): 422 is an acceptable answer.
    config = schemathesis.config.SchemathesisConfig.from_dict({"checks": {
        "positive_data_acceptance": {"expected-statuses": ["2xx", 404, 409, 422, 429]}}})
    schema = schemathesis.openapi.from_dict(served.json(), config=config)
    schema.config.update(base_url=live, headers=H)
    return schema


# a Salt bundle needs a one-shot token only the Salt deployer makes: its fixed 401 for
# everything else is tested in tests/test_salt.py and, end to end, tests/test_salt_lab.py
fuzzed = schemathesis.pytest.from_fixture("api_schema").exclude(
    path="/api/v1/salt/bundles/{batch}")


@fuzzed.parametrize()
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_live_api_conforms(case):
    # every default check: not_a_server_error, status/content-type/header/schema conformance,
    # negative data rejected, auth enforced, ...
    case.call_and_validate(headers=H)


async def test_unknown_charset_is_a_400_not_a_500(client):
    # found while checking the documented 400s: aiohttp raised LookupError -> 500
    resp = await client.post("/api/v1/domains", data=b'{"domain": "a.example.com"}',
                             headers={**H, "Content-Type": "application/json; charset=bogus"})
    assert resp.status == 400
    assert (await resp.json(content_type=None))["type"] == "urn:certd:problem:malformed-json"


async def test_405_says_what_is_allowed(client):
    # found by schemathesis (unsupported_method): the problem middleware dropped Allow
    resp = await client.put("/api/v1/domains", headers=H)
    assert resp.status == 405 and {m.strip() for m in resp.headers["Allow"].split(",")} >= {"GET", "POST"}
