"""Preflight against the real lab: challtestsrv DNS, haproxy, both nginx frontends, and
certd's own responder answering from a real SQLite store."""

from __future__ import annotations

import pytest
from aiohttp import web

from certd.issuance.http01 import PATH_PREFIX
from certd.model import utcnow
from certd.preflight import preflight
from certd.responder import build_app
from certd.store.sqlite import SqliteStore
from tests.lab.procs import free_port

pytestmark = pytest.mark.lab

CA = ["pebble.letsencrypt.org"]
ACCOUNT = "https://ca.example/acme/acct/1"


class RecordingStore:
    """The real store, remembering which challenge tokens were published."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.tokens: list[str] = []

    async def put_challenge(self, challenge):
        self.tokens.append(challenge.token)
        await self._store.put_challenge(challenge)

    def __getattr__(self, name):
        return getattr(self._store, name)


async def _serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


@pytest.fixture
async def store(tmp_path):
    s = SqliteStore(tmp_path / "db")
    await s.open()
    try:
        yield RecordingStore(s)
    finally:
        await s.close()


@pytest.fixture
async def responder(lab, store):
    host, port = lab.challenge_listen.rsplit(":", 1)
    runner = await _serve(build_app(store), host, int(port))
    try:
        yield runner
    finally:
        await runner.cleanup()


def _nodes(lab):
    return [(n.name, n.address, lab.node_http_port) for n in lab.nodes]


async def _run(lab, store, domain, *, nodes=None, ca=CA, account=ACCOUNT, timeout=3.0):
    return await preflight(
        domain, store=store, nodes=_nodes(lab) if nodes is None else nodes,
        resolver=("127.0.0.1", lab.challtestsrv.dns_port), ca_identities=ca,
        account_uri=account, timeout=timeout, http_port=lab.http_port)


async def test_all_good_and_probe_removed(lab, store, responder):
    result = await _run(lab, store, "pf-good.preflight.test")
    assert result.ok, result.reason
    assert result.reason == ""
    text = "\n".join(result.checks)
    assert "node fe1" in text and "node fe2" in text and "DNS path" in text
    assert "CAA" in text
    assert len(store.tokens) == 1 and len(store.tokens[0]) == 43
    # the probe is gone from the store, and the responder no longer serves it
    assert await store.get_key_authorization(store.tokens[0], utcnow()) is None


async def test_dns_pointing_nowhere(lab, store, responder):
    domain = "pf-nowhere.preflight.test"
    lab.add_a(domain, "127.0.0.9")
    try:
        result = await _run(lab, store, domain)
    finally:
        lab.clear_a(domain)
    assert not result.ok
    assert result.reason.startswith(f"DNS path {domain} -> 127.0.0.9:{lab.http_port}: "), \
        result.reason
    assert "cannot connect" in result.reason
    assert await store.get_key_authorization(store.tokens[0], utcnow()) is None


async def test_dead_node_is_named(lab, store, responder):
    nodes = _nodes(lab) + [("fe9", "127.0.0.9", lab.node_http_port)]
    result = await _run(lab, store, "pf-deadnode.preflight.test", nodes=nodes)
    assert not result.ok
    assert result.reason.startswith(f"node fe9 (127.0.0.9:{lab.node_http_port}): "), \
        result.reason
    # the healthy nodes were still checked
    assert any(c.startswith("node fe1") for c in result.checks)


async def test_responder_down_gives_node_http_status(lab, store):
    # nginx is up, but nothing answers behind it: the node says 502
    result = await _run(lab, store, "pf-noresponder.preflight.test")
    assert not result.ok
    assert result.reason == f"node fe1 (127.0.0.2:{lab.node_http_port}): HTTP 502", \
        result.reason


async def test_caa_other_ca_refused(lab, store, responder):
    domain = "pf-caa-other.preflight.test"
    lab.add_caa(domain, [("issue", "otherca.example")])
    try:
        result = await _run(lab, store, domain)
    finally:
        lab.clear_caa(domain)
    assert not result.ok
    assert result.reason == (f"CAA for {domain} allows only otherca.example, "
                             f"not pebble.letsencrypt.org")


async def test_caa_on_parent_applies_to_child(lab, store, responder):
    parent = "pf-caa-parent.test"
    lab.add_caa(parent, [("issue", "otherca.example; accounturi=x")])
    try:
        result = await _run(lab, store, "www.shop." + parent)
    finally:
        lab.clear_caa(parent)
    assert not result.ok
    assert result.reason.startswith(f"CAA for {parent} allows only otherca.example"), \
        result.reason


async def test_caa_accounturi_mismatch_refused(lab, store, responder):
    domain = "pf-caa-acct.preflight.test"
    other = "https://ca.example/acme/acct/2"
    lab.add_caa(domain, [("issue", f"pebble.letsencrypt.org; accounturi={other}")])
    try:
        result = await _run(lab, store, domain)
        no_account = await _run(lab, store, domain, account=None)
        matching = await _run(lab, store, domain, account=other)
    finally:
        lab.clear_caa(domain)
    assert not result.ok
    assert result.reason == (f"CAA for {domain} allows pebble.letsencrypt.org only for "
                             f"account {other}, not {ACCOUNT}")
    assert not no_account.ok and "CAA" in no_account.reason
    assert matching.ok, matching.reason


async def test_caa_validationmethods(lab, store, responder):
    domain = "pf-caa-methods.preflight.test"
    lab.add_caa(domain, [("issue", "pebble.letsencrypt.org; validationmethods=dns-01")])
    try:
        refused = await _run(lab, store, domain)
        lab.clear_caa(domain)
        lab.add_caa(domain, [("issue", ("pebble.letsencrypt.org; validationmethods=dns-01,"
                                        "http-01"))])
        allowed = await _run(lab, store, domain)
    finally:
        lab.clear_caa(domain)
    assert not refused.ok
    assert "validation methods dns-01, not http-01" in refused.reason
    assert allowed.ok, allowed.reason


async def test_caa_empty_issuer_forbids_all(lab, store, responder):
    domain = "pf-caa-none.preflight.test"
    lab.add_caa(domain, [("issue", ";")])
    try:
        result = await _run(lab, store, domain)
    finally:
        lab.clear_caa(domain)
    assert not result.ok
    assert result.reason == f'CAA for {domain} forbids all issuance (issue ";")'


async def test_caa_with_our_identity_ok(lab, store, responder):
    domain = "pf-caa-ours.preflight.test"
    lab.add_caa(domain, [("issue", "otherca.example"),
                         ("issue", f"Pebble.LetsEncrypt.org; accounturi={ACCOUNT}")])
    try:
        result = await _run(lab, store, domain)
    finally:
        lab.clear_caa(domain)
    assert result.ok, result.reason
    assert f"CAA for {domain} allows pebble.letsencrypt.org" in result.checks


async def test_servfail_fails_closed(lab, store, responder):
    domain = "pf-servfail.preflight.test"
    lab.set_servfail(domain)
    try:
        result = await _run(lab, store, domain)
    finally:
        lab.clear_servfail(domain)
    assert not result.ok
    assert result.reason == f"CAA lookup for {domain} failed (SERVFAIL)"
    assert await store.get_key_authorization(store.tokens[0], utcnow()) is None


# ------------------------------------------------------------------ redirects, as a CA


@pytest.fixture
async def redirector(store):
    """A node on 127.0.0.1:<port> that redirects according to the query's ``to``."""
    port = free_port()
    state = {"mode": "good"}

    async def handle(request: web.Request) -> web.Response:
        token = request.path.rsplit("/", 1)[-1]
        mode = state["mode"]
        if request.path.startswith("/moved/"):
            ka = await store.get_key_authorization(token, utcnow())
            return web.Response(text=(ka or "nope") + "\n")
        if mode == "good":
            raise web.HTTPFound(f"/moved/{token}")
        if mode == "port":
            raise web.HTTPFound(f"http://{request.host}:8080/moved/{token}")
        if mode == "loop":
            raise web.HTTPFound(request.path)
        if mode == "cross":  # another host: resolved through challtestsrv (-> 127.0.0.1)
            raise web.HTTPFound(f"http://pf-other.preflight.test/moved/{token}")
        if mode == "ftp":
            raise web.HTTPFound(f"ftp://{request.host}/moved/{token}")
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get(PATH_PREFIX + "{token}", handle)
    app.router.add_get("/moved/{token}", handle)
    runner = await _serve(app, "127.0.0.1", port)
    try:
        yield state, port
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("mode, expect", [
    ("good", None),
    ("cross", None),
    ("port", "CAs only follow ports 80 and 443"),
    ("loop", "more than 10 redirects"),
    ("ftp", "only http and https are followed"),
])
async def test_redirects(lab, store, redirector, mode, expect):
    state, port = redirector
    state["mode"] = mode
    result = await preflight(
        "pf-redirect.preflight.test", store=store, nodes=[("r1", "127.0.0.1", port)],
        resolver=("127.0.0.1", lab.challtestsrv.dns_port), ca_identities=CA,
        account_uri=ACCOUNT, timeout=3.0, http_port=port)
    if expect is None:
        assert result.ok, result.reason
    else:
        assert not result.ok
        assert result.reason.startswith(f"node r1 (127.0.0.1:{port}): "), result.reason
        assert expect in result.reason
