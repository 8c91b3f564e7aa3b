"""/api/v1/domains without a CA: validation of hostile input (nothing stored, nothing ordered),
idempotency and races, pagination, quotas, audit. The lab test covers issuance and removal."""

from __future__ import annotations

import asyncio

import pytest

from certd.api.tokens import parse
from certd.model import Alias
from tests.certd_api import api_client, api_config, file_frontend

TOKEN = "domains-token-0123456789"
OTHER = "other-token-0123456789ab"


@pytest.fixture
async def client(tmp_path):
    cfg = api_config(
        tmp_path,
        frontends={"web": file_frontend(tmp_path),
                   "edge": file_frontend(tmp_path, "fe9", "127.0.0.9")},
        # aliases under example.com/.org (RFC 6761 §6.5 special-use names, refused by default)
        domains={"default_frontends": ["web"], "denied": ["blocked.example"],
                 "per_token_per_hour": 5, "allow_special_use": ["example"]},
        certificates=[{"name": "portal.example.org", "domains": ["portal.example.org"],
                       "frontends": ["web"]}])
    async with api_client(cfg, parse(f"ops {TOKEN}\nci {OTHER}\n", "tokens")) as c:
        yield c


H = {"Authorization": f"Bearer {TOKEN}"}


async def post(client, body, headers=H, **kw):
    return await client.post("/api/v1/domains", json=body, headers=headers, **kw)


async def test_add_is_accepted_idempotent_and_audited(client):
    resp = await post(client, {"domain": "Data.Example.COM."})
    assert resp.status == 202
    body = await resp.json()
    assert body["domain"] == "data.example.com" and body["frontends"] == ["web"]
    assert resp.headers["Location"] == "/api/v1/domains/data.example.com"
    assert set(body) == {"domain", "status", "frontends", "certificate", "deployments",
                         "renewal_at", "last_error", "next_attempt_at", "created_at",
                         "validation", "dns_record", "profile"}
    assert body["validation"] == "http-01" and body["dns_record"] is None
    again = await post(client, {"domain": "data.example.com", "frontends": ["web"]})
    assert again.status == 200 and (await again.json())["domain"] == "data.example.com"
    events = await client.certd.store.events(kind="api.domain.add")
    assert len(events) == 1 and events[0].data["token"] == "ops"
    assert "data.example.com" in {s.name for s in client.certd.specs()}
    shown = await client.get("/api/v1/domains/data.example.com", headers=H)
    assert shown.status == 200 and (await shown.json())["created_at"] == body["created_at"]


async def test_two_concurrent_posts_create_one_certificate(client):
    answers = await asyncio.gather(*(post(client, {"domain": "race.example.com"})
                                     for _ in range(5)))
    assert sorted(r.status for r in answers).count(202) == 1
    assert all(r.status in (200, 202) for r in answers)
    assert len(await client.certd.store.list_aliases()) == 1
    assert len(await client.certd.store.events(kind="api.domain.add")) == 1


BAD_NAMES = [
    "*.example.com", "192.0.2.1", "[2001:db8::1]", "com", "co.uk", "example", "a..example.com",
    "-a.example.com", "a-.example.com", "a_b.example.com", "a b.example.com", "exa mple.com",
    "x" * 64 + ".example.com", ".".join(["abcdefghi"] * 26) + ".com", "xn--zz.example.com",
    "ab--c.example.com", "bad\u202e.example.com", "tab\t.example.com", "nul\x00.example.com",
    "", " ", "example.com ", "１２７.０.０.１", "127.1", "blocked.example", "sub.blocked.example",
    "portal.example.org", "http://x.example.com", "x.example.com/path", "x.example.com:443",
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_names_are_refused_and_nothing_is_stored(client, name):
    resp = await post(client, {"domain": name})
    assert 400 <= resp.status < 500, (name, resp.status)
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["type"].startswith("urn:certd:problem:") and body["status"] == resp.status
    assert await client.certd.store.list_aliases() == []
    assert await client.certd.store.orders() == []


@pytest.mark.parametrize("send", [
    {"data": b"not json", "headers": {**H, "Content-Type": "application/json"}},
    {"data": b'{"domain": "a.example.com"}', "headers": {**H, "Content-Type": "text/plain"}},
    {"data": b"[1, 2]", "headers": {**H, "Content-Type": "application/json"}},
    {"data": b'{"domain": "a.example.com", "admin": true}',
     "headers": {**H, "Content-Type": "application/json"}},
    {"data": b'{"domain": 42}', "headers": {**H, "Content-Type": "application/json"}},
    {"data": b'{"domain": "a.example.com", "frontends": "web"}',
     "headers": {**H, "Content-Type": "application/json"}},
    {"data": b'{"domain": "a.example.com", "frontends": ["nope"]}',
     "headers": {**H, "Content-Type": "application/json"}},
    {"data": b'{"domain": "a.example.com", "frontends": []}',
     "headers": {**H, "Content-Type": "application/json"}},
    {"data": b'{"domain": "' + b"a" * 40000 + b'.com"}',
     "headers": {**H, "Content-Type": "application/json"}},
])
async def test_bad_requests_are_problems(client, send):
    resp = await client.post("/api/v1/domains", **send)
    assert 400 <= resp.status < 500 and resp.content_type == "application/problem+json"
    assert await client.certd.store.list_aliases() == []


async def test_auth_is_required(client):
    for headers in ({}, {"Authorization": "Bearer nope-nope-nope-nope"}):
        resp = await post(client, {"domain": "a.example.com"}, headers=headers)
        assert resp.status == 401
    assert await client.certd.store.list_aliases() == []


async def test_quota_per_token_answers_429_with_retry_after(client):
    for i in range(5):
        assert (await post(client, {"domain": f"q{i}.example.com"})).status == 202
    resp = await post(client, {"domain": "q5.example.com"})
    assert resp.status == 429 and 0 < int(resp.headers["Retry-After"]) <= 3600
    other = await post(client, {"domain": "q5.example.com"},
                       headers={"Authorization": f"Bearer {OTHER}"})
    assert other.status == 202  # the quota is per token


async def test_pagination_and_status_filter(client):
    store = client.certd.store
    for i in range(7):
        await client.certd.add_alias(Alias(f"p{i}.example.com", ("web",), "ops"))
    seen, cursor = [], None
    while True:
        url = "/api/v1/domains?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=H)).json()
        seen += [d["domain"] for d in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(f"p{i}.example.com" for i in range(7))
    pending = await (await client.get("/api/v1/domains?status=pending&limit=100",
                                      headers=H)).json()
    assert len(pending["items"]) == 7
    none = await (await client.get("/api/v1/domains?status=deployed", headers=H)).json()
    assert none["items"] == []
    for query in ("limit=0", "limit=x", "limit=100000", "status=bogus"):
        resp = await client.get(f"/api/v1/domains?{query}", headers=H)
        assert resp.status == 400, query
    assert len(await store.list_aliases()) == 7


async def test_unknown_domain_and_bad_revoke_flag(client):
    resp = await client.get("/api/v1/domains/missing.example.com", headers=H)
    assert resp.status == 404
    resp = await client.delete("/api/v1/domains/..%2f..%2fetc", headers=H)
    assert resp.status == 404
    await post(client, {"domain": "keep.example.com"})
    for flag in ("maybe", "2", "tru", ""):
        resp = await client.delete(f"/api/v1/domains/keep.example.com?revoke={flag}", headers=H)
        assert resp.status == 400, flag
        assert (await resp.json())["type"] == "urn:certd:problem:bad-parameter"
    alias = await client.certd.store.get_alias("keep.example.com")
    assert alias is not None and not alias.removing


async def test_adding_a_domain_being_removed_is_a_conflict(client):
    await post(client, {"domain": "leaving.example.com"})
    await client.certd.store.mark_alias_removing("leaving.example.com")
    resp = await client.post("/api/v1/domains", json={"domain": "leaving.example.com"},
                             headers=H)
    assert resp.status == 409
    assert resp.headers["Retry-After"] == "10"
    body = await resp.json()
    assert body["type"] == "urn:certd:problem:domain-removing"
    assert (await client.certd.store.get_alias("leaving.example.com")).removing


async def test_revoke_refused_keeps_the_alias_for_a_retry(client):
    from datetime import timedelta

    from certd.errors import AcmeError
    from certd.model import IssuedCertificate, utcnow

    await post(client, {"domain": "gone.example.com"})
    certd, now = client.certd, utcnow()
    await certd.store.add_certificate(IssuedCertificate(
        name="gone.example.com", serial="0b", domains=("gone.example.com",),
        not_before=now, not_after=now + timedelta(days=90), cert_pem="x", chain_pem="x",
        key_pem="x", fingerprint_sha256="ab" * 32, issued_at=now, order_url="https://ca/o/1"))
    with pytest.raises(AcmeError):  # nothing listens where the CA should be
        await certd.remove_alias("gone.example.com", revoke=True)
    alias = await certd.store.get_alias("gone.example.com")
    assert alias is not None and alias.removing  # DELETE ?revoke=true again retries
    failed = await certd.store.events(kind="revoke.failed")
    assert [e.certificate for e in failed] == ["gone.example.com"]
    assert "gone.example.com" not in {s.name for s in certd.specs()}


# --- the alias policy through the API (issue 10): a default config, nothing allowed extra ----

@pytest.fixture
async def strict(tmp_path):
    cfg = api_config(
        tmp_path, domains={"default_frontends": ["web"], "preflight": False},
        # the operator's own certificates may use internal names: syntax checks only
        certificates=[{"name": "intranet", "frontends": ["web"],
                       "domains": ["router.lan", "metadata.google.internal", "x.onion",
                                   "printer.local", "nas.home.arpa", "a.test"]}])
    async with api_client(cfg, parse(f"ops {TOKEN}\n", "tokens")) as c:
        yield c


SPECIAL = "domain-special-use"
UNKNOWN_TLD = "domain-unknown-tld"
MIXED = "domain-mixed-script"
HOSTILE_NAMES = [
    # RFC 6761 / 6762 / 7686 / 8375 / 9476 special-use names, ICANN's .internal, .arpa
    ("a.test", SPECIAL), ("test.invalid", SPECIAL), ("localhost.localhost", SPECIAL),
    ("x.localhost", SPECIAL), ("data.example", SPECIAL), ("data.example.com", SPECIAL),
    ("www.example.net", SPECIAL), ("shop.example.org", SPECIAL), ("printer.local", SPECIAL),
    ("x.onion", SPECIAL), ("duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion",
                           SPECIAL), ("router.alt", SPECIAL),
    ("metadata.google.internal", SPECIAL), ("nas.home.arpa", SPECIAL),
    ("1.0.0.127.in-addr.arpa", SPECIAL), ("254.169.in-addr.arpa", SPECIAL),
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa", SPECIAL),
    ("ipv4only.arpa", SPECIAL), ("X.ONION.", SPECIAL),
    # top-level domains that are not in the ICANN section: home networks, file-like names
    ("router.lan", UNKNOWN_TLD), ("nas.home", UNKNOWN_TLD), ("dc1.corp", UNKNOWN_TLD),
    ("wiki.intranet", UNKNOWN_TLD), ("srv.private", UNKNOWN_TLD), ("h.localdomain", UNKNOWN_TLD),
    ("openssl.cnf", UNKNOWN_TLD), ("conf.d", UNKNOWN_TLD), ("mime.types", UNKNOWN_TLD),
    ("nginx.conf", UNKNOWN_TLD), ("privkey.pem", UNKNOWN_TLD), ("server.key", UNKNOWN_TLD),
    ("fullchain.crt", UNKNOWN_TLD), ("index.html", UNKNOWN_TLD), ("app.yaml", UNKNOWN_TLD),
    ("passwd.bak", UNKNOWN_TLD), ("x.bit", UNKNOWN_TLD), ("vitalik.eth", UNKNOWN_TLD),
    ("a.b.c.notatld", UNKNOWN_TLD),
    # mixed-script confusables: Latin with Cyrillic, Greek, Armenian, Cherokee look-alikes
    ("pаypal.com", MIXED), ("аpple.com", MIXED), ("gооgle.com", MIXED), ("micrоsoft.com", MIXED),
    ("gοogle.com", MIXED), ("αmazon.com", MIXED), ("bαnk.de", MIXED), ("ցoogle.com", MIXED),
    ("раураl.com", MIXED), ("www.pаypal.co.uk", MIXED), ("xn--pypal-4ve.com", MIXED),
    ("ωмega.com", MIXED), ("ㄅ한글.kr", MIXED),
    # whole-script Cyrillic look-alikes of Latin names under a Latin TLD
    ("аррӏе.com", "domain-confusable"), ("xn--80ak6aa92e.com", "domain-confusable"),
    ("ѕсоре.net", "domain-confusable"),
    # scripts outside the recommended ones
    ("ꭰꭱꭲ.com", "domain-script"), ("𐌰𐌱.com", "domain-script"),
]
ACCEPTED_NAMES = ["пример.com", "пример.рф", "аррӏе.ru", "αβγ.gr", "例え.jp", "日本語.jp",
                  "中文abc.cn", "한국어.kr", "ㄅㄆ中文.tw", "bücher.de", "café.fr",
                  "shop.example.co.uk"]


def test_the_hostile_table_is_large_and_distinct():
    names_ = [n for n, _ in HOSTILE_NAMES]
    assert len(names_) >= 40 and len(set(names_)) == len(names_)


@pytest.mark.parametrize("name, slug", HOSTILE_NAMES)
async def test_hostile_and_special_names_are_refused_with_their_problem_type(strict, name, slug):
    resp = await post(strict, {"domain": name})
    assert resp.status == 422, (name, resp.status)
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["type"] == f"urn:certd:problem:{slug}", (name, body)
    assert body["detail"].isascii()  # the normalised (A-label) name at most, never raw input
    assert await strict.certd.store.list_aliases() == []
    assert await strict.certd.store.events(kind="api.domain.add") == []


@pytest.mark.parametrize("name", ACCEPTED_NAMES)
async def test_single_script_idns_are_accepted(strict, name):
    resp = await post(strict, {"domain": name})
    assert resp.status == 202, (name, await resp.text())


async def test_config_file_certificates_keep_internal_names(strict):
    spec = strict.certd.spec("intranet")
    assert "router.lan" in spec.domains and "metadata.google.internal" in spec.domains


async def test_allow_special_use_lets_the_operator_accept_a_tld(tmp_path):
    cfg = api_config(tmp_path, domains={"default_frontends": ["web"], "preflight": False,
                                        "allow_special_use": ["test", "LAN."]})
    async with api_client(cfg, parse(f"ops {TOKEN}\n", "tokens")) as c:
        assert (await post(c, {"domain": "shop.test"})).status == 202
        assert (await post(c, {"domain": "router.lan"})).status == 202
        # only what is listed: .onion and pаypal stay refused
        assert (await post(c, {"domain": "x.onion"})).status == 422
        assert (await post(c, {"domain": "pаypal.test"})).status == 422
