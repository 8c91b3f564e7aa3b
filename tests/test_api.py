"""The REST API foundation: tokens (plain, hashed, generated), problem documents, auth on every
/api path, certificate resources, renew/deploy accepted and audited with the token's name."""

from __future__ import annotations

import hashlib
import os

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from certd import config as configuration
from certd.api import app as api
from certd.api.tokens import load_or_create, parse
from certd.app import open_certd
from certd.errors import ConfigError
from tests.certd_api import api_client, api_config

PLAIN = "plain-token-0123456789"
HASHED = "hashed-token-9876543210"


@pytest.fixture
async def client(tmp_path):
    (tmp_path / "tokens").write_text(
        f"# comment\nops {PLAIN}\nci sha256:{hashlib.sha256(HASHED.encode()).hexdigest()}\n")
    cfg = api_config(tmp_path, api={"tokens_file": str(tmp_path / "tokens")},
                     certificates=[{"name": "portal", "domains": ["portal.example.org"],
                                    "frontends": ["web"]}])
    async with api_client(cfg, load_or_create(cfg.tokens_path)) as c:
        yield c


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def test_healthz_needs_no_token(client):
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


@pytest.mark.parametrize("headers", [{}, auth("wrong-token-000000000"), {"Authorization": PLAIN},
                                     {"Authorization": f"Basic {PLAIN}"}, auth(""),
                                     auth(hashlib.sha256(HASHED.encode()).hexdigest())])
async def test_unauthenticated_requests_get_401_and_change_nothing(client, headers):
    resp = await client.post("/api/v1/certificates/portal/renew", headers=headers)
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["type"] == "urn:certd:problem:unauthorized" and body["status"] == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert await client.certd.store.events(kind="api.renew") == []


async def test_plain_and_hashed_tokens_read_certificates(client):
    for token in (PLAIN, HASHED):
        resp = await client.get("/api/v1/certificates", headers=auth(token))
        assert resp.status == 200
        items = (await resp.json())["items"]
        assert [i["name"] for i in items] == ["portal"] and items[0]["status"] == "pending"
    resp = await client.get("/api/v1/certificates/portal", headers=auth(PLAIN))
    body = await resp.json()
    assert body["domains"] == ["portal.example.org"] and body["serial"] is None


async def test_unknown_things_are_problem_documents(client):
    resp = await client.get("/api/v1/certificates/nope", headers=auth(PLAIN))
    assert resp.status == 404 and (await resp.json())["type"].endswith("unknown-certificate")
    resp = await client.get("/api/v1/nothing-here", headers=auth(PLAIN))
    assert resp.status == 404 and resp.content_type == "application/problem+json"
    resp = await client.delete("/api/v1/certificates/portal", headers=auth(PLAIN))
    assert resp.status == 405 and (await resp.json())["type"].endswith("method-not-allowed")
    resp = await client.get("/api/v1/certificates/%3Cscript%3E", headers=auth(PLAIN))
    assert "script" not in await resp.text()


async def test_renew_and_deploy_are_accepted_and_audited(client):
    resp = await client.post("/api/v1/certificates/portal/renew", headers=auth(HASHED))
    assert resp.status == 202 and resp.headers["Location"] == "/api/v1/certificates/portal"
    events = await client.certd.store.events(kind="api.renew")
    assert events[0].data["token"] == "ci" and "api[ci]" in events[0].message
    resp = await client.post("/api/v1/certificates/portal/deploy", headers=auth(PLAIN))
    assert resp.status == 202
    events = await client.certd.store.events(kind="api.deploy")
    assert events[0].data["token"] == "ops"


def test_tokens_file_is_created_0600_with_a_working_token(tmp_path):
    path = tmp_path / "sub" / "api-tokens"
    tokens = load_or_create(path)
    assert os.stat(path).st_mode & 0o777 == 0o600 and len(tokens) == 1
    name, token = path.read_text().splitlines()[-1].split()
    assert name == "admin" and tokens.check(token) == "admin"
    assert tokens.check(token + "x") is None and tokens.check("") is None


@pytest.mark.parametrize("text", ["a b c\n", "short\n", "x sha256:abc\n", "bad/name " + "t" * 20,
                                  f"dup {PLAIN}\ndup {HASHED}\n"])
def test_bad_tokens_files_are_refused_without_echoing_tokens(text):
    with pytest.raises(ConfigError) as info:
        parse(text, "tokens")
    assert PLAIN not in str(info.value) and HASHED not in str(info.value)
    assert "line" in str(info.value)


# --- token scopes (issue 10): read < aliases < admin, one table of route -> scope -----------

import logging  # noqa: E402

from certd.api import scopes  # noqa: E402
from certd.api.tokens import MIN_TOKEN, SCOPES  # noqa: E402

READ = "read-token-0123456789ab"
ALIASES = "aliases-token-0123456789"
ADMIN = "admin-token-0123456789ab"
LEGACY = "legacy-token-0123456789a"  # a line without a scope, as every file before scopes


@pytest.fixture
async def scoped(tmp_path):
    (tmp_path / "tokens").write_text(
        f"reader {READ} read\ntenant sha256:{hashlib.sha256(ALIASES.encode()).hexdigest()} "
        f"aliases\nroot {ADMIN} admin\nold {LEGACY}\n")
    os.chmod(tmp_path / "tokens", 0o600)
    cfg = api_config(tmp_path, api={"tokens_file": str(tmp_path / "tokens")},
                     domains={"default_frontends": ["web"], "preflight": False,
                              "allow_special_use": ["example"]},
                     certificates=[{"name": "portal", "domains": ["portal.example.org"],
                                    "frontends": ["web"]}])
    async with api_client(cfg, load_or_create(cfg.tokens_path)) as c:
        yield c


# (method, URL, body, the route's template in the table)
CALLS = [
    ("GET", "/metrics", None, "/metrics"),
    ("GET", "/api/v1/openapi.json", None, "/api/v1/openapi.json"),
    ("GET", "/api/v1/alerts", None, "/api/v1/alerts"),
    ("GET", "/api/v1/certificates", None, "/api/v1/certificates"),
    ("GET", "/api/v1/certificates/portal", None, "/api/v1/certificates/{name}"),
    ("POST", "/api/v1/certificates/portal/renew", None, "/api/v1/certificates/{name}/renew"),
    ("POST", "/api/v1/certificates/portal/deploy", None, "/api/v1/certificates/{name}/deploy"),
    ("GET", "/api/v1/domains", None, "/api/v1/domains"),
    ("GET", "/api/v1/domains/kept.example.com", None, "/api/v1/domains/{domain}"),
    ("POST", "/api/v1/domains", {"domain": "new.example.com"}, "/api/v1/domains"),
    ("DELETE", "/api/v1/domains/kept.example.com", None, "/api/v1/domains/{domain}"),
]
READS = {(m, u) for m, u, _, _ in CALLS if m == "GET"}
EXPECTED = {  # what each scope may do; anything else answers 403
    "read": READS,
    "aliases": READS | {("POST", "/api/v1/domains"),
                        ("DELETE", "/api/v1/domains/kept.example.com")},
    "admin": {(m, u) for m, u, _, _ in CALLS},
}


@pytest.mark.parametrize("scope, token", [("read", READ), ("aliases", ALIASES), ("admin", ADMIN),
                                          ("admin", LEGACY)])
@pytest.mark.parametrize("method, url, body, route", CALLS)
async def test_each_scope_against_each_route(scoped, scope, token, method, url, body, route):
    from certd.model import Alias
    await scoped.certd.add_alias(Alias("kept.example.com", ("web",), "ops"))
    resp = await scoped.request(method, url, json=body, headers=auth(token))
    if (method, url) in EXPECTED[scope]:
        assert resp.status not in (401, 403), (scope, method, url, resp.status)
        assert resp.status < 300, (scope, method, url, resp.status, await resp.text())
    else:
        assert resp.status == 403, (scope, method, url, resp.status)
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        assert problem["type"] == "urn:certd:problem:forbidden"
        assert problem["scope"] == scopes.needed(method, route) and problem["scope"] in SCOPES
        assert f"'{problem['scope']}'" in problem["detail"] and token not in await resp.text()
        # refused before the handler: nothing changed, nothing audited
        assert await scoped.certd.store.events(kind="api.renew") == []
        assert await scoped.certd.store.events(kind="api.domain.add") == []
        assert await scoped.certd.store.events(kind="api.domain.remove") == []


async def test_every_registered_route_has_a_scope(scoped):
    app = scoped.server.app
    seen = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        canonical = route.resource.canonical
        assert scopes.needed(route.method, canonical) is not None, (route.method, canonical)
        seen.add((route.method, canonical))
    assert seen == set(scopes.ROUTES)  # and the table lists nothing that does not exist
    doc = await (await scoped.get("/api/v1/openapi.json", headers=auth(READ))).json()
    for method, path in seen:
        if (path + "/").startswith("/ui/"):  # the dashboard's files: public, not API
            assert scopes.needed(method, path) == scopes.PUBLIC
            continue
        op = doc["paths"][path][method.lower()]
        need = scopes.needed(method, path)
        if need == scopes.PUBLIC:
            assert "403" not in op["responses"]
        elif need == scopes.BUNDLE:  # its own one-shot token: 401, never 403
            assert op["x-certd-scope"] == need and "401" in op["responses"]
            assert op["security"] == [{"bundleToken": []}]
        else:
            assert op["x-certd-scope"] == need and "403" in op["responses"], (method, path)


async def test_a_route_without_a_scope_is_refused_to_every_token(tmp_path):
    async def secret(request):
        return web.json_response({"leaked": True})

    cfg = configuration.parse({"state_dir": str(tmp_path / "state")})
    async with open_certd(cfg) as certd:
        app = api.build_app(certd, parse(f"root {ADMIN} admin\n", "tokens"))
        app.router.add_get("/api/v1/new-thing", secret)
        app.router.add_post("/debug/reset", secret)  # outside /api too
        async with TestClient(TestServer(app)) as c:
            for method, url in (("GET", "/api/v1/new-thing"), ("POST", "/debug/reset")):
                assert (await c.request(method, url)).status == 401
                resp = await c.request(method, url, headers=auth(ADMIN))
                assert resp.status == 403, url
                assert (await resp.json())["type"] == "urn:certd:problem:forbidden"


async def test_healthz_and_unauthenticated_metrics_stay_public(tmp_path):
    cfg = configuration.parse({"state_dir": str(tmp_path / "state"),
                               "api": {"metrics_auth": False}})
    async with api_client(cfg, parse(f"reader {READ} read\n", "tokens")) as c:
        assert (await c.get("/healthz")).status == 200
        assert (await c.get("/metrics")).status == 200
        assert (await c.get("/api/v1/certificates")).status == 401


def test_files_without_scopes_are_admin():
    tokens = parse(f"ops {PLAIN}\n{HASHED}\n", "tokens")
    assert tokens.lookup(PLAIN).scope == "admin" and tokens.lookup(HASHED).scope == "admin"
    assert tokens.lookup(HASHED).name == "line2"


@pytest.mark.parametrize("line", [f"ops {PLAIN} superuser", f"ops {PLAIN} {HASHED}",
                                  f"ops {PLAIN} READ", f"ops {PLAIN} read extra"])
def test_bad_scopes_are_refused_without_echoing(line):
    with pytest.raises(ConfigError) as info:
        parse(line + "\n", "tokens")
    assert PLAIN not in str(info.value) and HASHED not in str(info.value)
    assert "line 1" in str(info.value)


def _sha(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


@pytest.mark.parametrize("secret", ["", "a", "7", " ", "~", "ab", "Z9", "!!", "admin", "Admin",
                                    "ADMIN", "password", "secret", "token", "changeme", "test",
                                    "root", "letmein", "123456", "qwerty"])
def test_weak_hashed_entries_are_refused_at_load(secret):
    entry = _sha(secret)
    with pytest.raises(ConfigError) as info:
        parse(f"ci {entry}\n", "tokens")
    text = str(info.value)
    assert "line 1" in text and "sha256" in text
    assert entry[7:] not in text and (not secret or f"'{secret}'" not in text)


def test_a_short_presented_token_never_authenticates_even_if_its_hash_matches():
    tokens = parse(f"five {_sha('k7#Qz')}\nfifteen {_sha('x' * (MIN_TOKEN - 1))}\n"
                   f"sixteen {_sha('y' * MIN_TOKEN)}\n", "tokens")
    assert len(tokens) == 3  # not refused at load: nobody can tell such a hash apart
    assert tokens.lookup("k7#Qz") is None and tokens.check("k7#Qz") is None
    assert tokens.lookup("x" * (MIN_TOKEN - 1)) is None
    assert tokens.lookup("y" * MIN_TOKEN).name == "sixteen"


async def test_a_short_token_with_a_matching_hash_gets_401(tmp_path):
    cfg = configuration.parse({"state_dir": str(tmp_path / "state")})
    async with api_client(cfg, parse(f"five {_sha('k7#Qz')}\n", "tokens")) as c:
        resp = await c.get("/api/v1/certificates", headers=auth("k7#Qz"))
        assert resp.status == 401


@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o400, False), (0o640, True),
                                          (0o644, True), (0o604, True), (0o660, True)])
def test_a_tokens_file_others_may_read_is_warned_about(tmp_path, caplog, mode, warned):
    path = tmp_path / "api-tokens"
    path.write_text(f"ops {PLAIN}\n")
    os.chmod(path, mode)
    with caplog.at_level(logging.WARNING, logger="certd.api.tokens"):
        assert load_or_create(path).check(PLAIN) == "ops"
    found = [r.getMessage() for r in caplog.records if "mode" in r.getMessage()]
    if warned:
        assert len(found) == 1 and str(path) in found[0] and f"{mode:04o}" in found[0]
        assert PLAIN not in found[0]
    else:
        assert found == []


def test_a_created_tokens_file_documents_scopes(tmp_path):
    path = tmp_path / "api-tokens"
    tokens = load_or_create(path)
    assert "SCOPE" in path.read_text() and len(tokens) == 1
    name, token = path.read_text().splitlines()[-1].split()
    assert tokens.lookup(token).scope == "admin"
