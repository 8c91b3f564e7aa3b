"""The REST API foundation: tokens (plain, hashed, generated), problem documents, auth on every
/api path, certificate resources, renew/deploy accepted and audited with the token's name."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest
from aiohttp.test_utils import TestClient, TestServer

from certd import config as configuration
from certd.api import app as api
from certd.api.tokens import load_or_create, parse
from certd.app import open_certd
from certd.errors import ConfigError

PLAIN = "plain-token-0123456789"
HASHED = "hashed-token-9876543210"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def client(tmp_path):
    (tmp_path / "tokens").write_text(
        f"# comment\nops {PLAIN}\nci sha256:{hashlib.sha256(HASHED.encode()).hexdigest()}\n")
    cfg = configuration.parse({
        "state_dir": str(tmp_path / "state"),
        "acme": {"directory": f"https://127.0.0.1:{_port()}/dir", "timeout": "1s"},
        "api": {"tokens_file": str(tmp_path / "tokens")},
        "frontends": {"web": {"nodes": [{"name": "fe1", "address": "127.0.0.2"}],
                              "deployer": {"type": "file",
                                           "path": str(tmp_path) + "/{node}/{certificate}"}}},
        "certificates": [{"name": "portal", "domains": ["portal.example.org"],
                          "frontends": ["web"]}],
    })
    async with open_certd(cfg) as certd:
        app = api.build_app(certd, load_or_create(cfg.tokens_path))
        async with TestClient(TestServer(app)) as c:
            c.certd = certd
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
