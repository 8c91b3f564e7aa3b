"""Preflight against the real lab: challtestsrv DNS, haproxy, both nginx frontends, and
certd's own responder answering from a real SQLite store.

The lab's "Internet" is loopback, so the tests allow 127.0.0.0/8 (as the lab config does)
unless they test the address filter itself (issue 10, finding 1: preflight was an SSRF that
quoted what it fetched)."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets

import pytest
from aiohttp import web

from certd.issuance.http01 import PATH_PREFIX
from certd.model import utcnow
from certd.preflight import WRONG_BODY, address_allowed, preflight
from certd.responder import build_app
from certd.store.sqlite import SqliteStore
from tests.lab.procs import free_port
from tests.stores import opened_store

pytestmark = pytest.mark.lab

CA = ["pebble.letsencrypt.org"]
ACCOUNT = "https://ca.example/acme/acct/1"
LAB_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]
NON_PUBLIC = "resolves to a non-public address"


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
    async with opened_store(tmp_path / "db") as s:
        yield RecordingStore(s)


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


def _networks(*cidrs: str) -> list:
    return [ipaddress.ip_network(c) for c in cidrs]


async def _run(lab, store, domain, *, nodes=None, ca=CA, account=ACCOUNT, timeout=3.0,
               allow=LAB_NETWORKS, http_port=None):
    return await preflight(
        domain, store=store, nodes=_nodes(lab) if nodes is None else nodes,
        resolver=("127.0.0.1", lab.challtestsrv.dns_port), ca_identities=ca,
        account_uri=account, timeout=timeout, http_port=http_port or lab.http_port,
        allow_networks=allow)


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
    assert result.reason == f"CAA for {domain} allows other CAs only, not pebble.letsencrypt.org"


async def test_caa_on_parent_applies_to_child(lab, store, responder):
    parent = "pf-caa-parent.test"
    lab.add_caa(parent, [("issue", "otherca.example; accounturi=x")])
    try:
        result = await _run(lab, store, "www.shop." + parent)
    finally:
        lab.clear_caa(parent)
    assert not result.ok
    assert result.reason.startswith(f"CAA for {parent} allows other CAs only"), result.reason


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
    assert result.reason == (f"CAA for {domain}: accounturi names another account than "
                             f"certd's ({ACCOUNT}) for pebble.letsencrypt.org")
    assert other not in result.reason  # the tenant's value is not quoted
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
    assert refused.reason == (f"CAA for {domain}: validationmethods exclude http-01 for "
                              f"pebble.letsencrypt.org")
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
    ("port", "redirect to another port: CAs only follow ports 80 and 443"),
    ("loop", "more than 10 redirects"),
    ("ftp", "redirect to another scheme: CAs only follow http and https"),
])
async def test_redirects(lab, store, redirector, mode, expect):
    state, port = redirector
    state["mode"] = mode
    result = await preflight(
        "pf-redirect.preflight.test", store=store, nodes=[("r1", "127.0.0.1", port)],
        resolver=("127.0.0.1", lab.challtestsrv.dns_port), ca_identities=CA,
        account_uri=ACCOUNT, timeout=3.0, http_port=port, allow_networks=LAB_NETWORKS)
    if expect is None:
        assert result.ok, result.reason
    else:
        assert not result.ok
        assert result.reason.startswith(f"node r1 (127.0.0.1:{port}): "), result.reason
        assert expect in result.reason


# ------------------------------------------- SSRF (issue 10): which addresses certd connects to


@pytest.mark.parametrize("address, allow, expected", [
    ("8.8.8.8", (), True),
    ("2606:4700:4700::1111", (), True),
    ("127.0.0.1", (), False),
    ("127.0.0.9", ("127.0.0.1/32",), False),
    ("127.0.0.9", ("127.0.0.0/8",), True),
    ("10.1.2.3", (), False),
    ("10.1.2.3", ("10.0.0.0/8",), True),
    ("172.16.0.1", (), False),
    ("192.168.1.1", (), False),
    ("100.64.0.1", (), False),  # carrier-grade NAT
    ("169.254.169.254", (), False),  # cloud metadata
    ("0.0.0.0", (), False),
    ("255.255.255.255", (), False),
    ("240.0.0.1", (), False),
    ("224.0.0.1", (), False),
    ("239.255.255.250", (), False),
    ("::", (), False),
    ("::1", (), False),
    ("fc00::1", (), False),
    ("fd12:3456::1", (), False),
    ("fd12:3456::1", ("fd00::/8",), True),
    ("fe80::1", (), False),
    ("fe80::1%1", (), False),
    ("ff02::1", (), False),
    ("ff0e::1", (), False),  # global-scope multicast: "global", still not unicast
    ("2001:db8::1", (), False),
    ("2001::1", (), False),  # Teredo
    ("::7f00:1", (), False),  # IPv4-compatible (deprecated)
    ("::ffff:127.0.0.1", (), False),
    ("::ffff:127.0.0.1", ("127.0.0.0/8",), True),  # it reaches 127.0.0.1
    ("::ffff:10.0.0.1", (), False),
    ("::ffff:8.8.8.8", (), True),
    ("64:ff9b::7f00:1", (), False),  # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", (), False),  # NAT64 of 169.254.169.254
    ("64:ff9b::808:808", (), True),  # NAT64 of 8.8.8.8
    ("64:ff9b:1::1", (), False),  # local-use NAT64 prefix
    ("2002:7f00:1::1", (), False),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", (), False),  # 6to4 of 169.254.169.254
    ("2002:808:808::1", (), True),
    ("localhost", (), False),  # not an address at all: fail closed
    ("2130706433", (), False),
    ("0x7f.1", (), False),
    ("", (), False),
])
def test_address_filter(address, allow, expected):
    assert address_allowed(address, _networks(*allow)) is expected


def _secret() -> str:
    return "INTERNAL-SECRET-" + secrets.token_hex(8)


def _assert_not_quoted(result, secret: str) -> None:
    """No part of the marker (whole, or its random half, in any case) in reason or checks."""
    text = "\n".join((result.reason, *result.checks)).lower()
    assert secret.lower() not in text, result
    assert secret[-16:].lower() not in text, result


class InternalServer:
    """An "internal" HTTP service on 127.0.0.9: answers the secret to every request."""

    address = "127.0.0.9"

    def __init__(self, port: int) -> None:
        self.port = port
        self.secret = _secret()
        self.hits = 0
        self._server: asyncio.base_events.Server | None = None

    async def _handle(self, reader, writer) -> None:
        self.hits += 1
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            body = self.secret.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nServer: " + body + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    async def start(self) -> InternalServer:
        self._server = await asyncio.start_server(self._handle, self.address, self.port)
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def internal():
    server = await InternalServer(free_port(["127.0.0.1", "127.0.0.5", "127.0.0.9"])).start()
    try:
        yield server
    finally:
        await server.stop()


def _set_dns(lab, domain: str, a: list[str], aaaa: list[str] = ()) -> None:
    lab.challtestsrv.call("/add-a", {"host": domain, "addresses": list(a)})
    if aaaa:
        lab.challtestsrv.call("/add-aaaa", {"host": domain, "addresses": list(aaaa)})


def _clear_dns(lab, domain: str) -> None:
    lab.clear_a(domain)
    lab.challtestsrv.call("/clear-aaaa", {"host": domain})


ALLOWED = "127.0.0.5"  # allowed by the tests below; nothing listens there


@pytest.mark.parametrize("bad", [
    "127.0.0.9", "10.1.2.3", "169.254.169.254", "0.0.0.0", "224.0.0.1",
    # IPv4 inside IPv6 (NAT64, 6to4); challtestsrv does not serve IPv4-mapped AAAA records
    # (::ffff:a.b.c.d), so those are tested as redirect literals below and in the table above
    "::1", "fc00::1", "fd00::9", "64:ff9b::7f00:9", "2002:7f00:9::1", "fe80::1", "ff02::1",
])
async def test_dns_to_a_non_public_address_is_refused(lab, store, internal, bad):
    domain = "pf-internal-dns.preflight.test"
    v6 = ":" in bad
    try:
        _set_dns(lab, domain, [ALLOWED])
        alone = await _run(lab, store, domain, nodes=[], allow=_networks(f"{ALLOWED}/32"),
                           http_port=internal.port)
        _set_dns(lab, domain, [ALLOWED] if v6 else [ALLOWED, bad], [bad] if v6 else [])
        result = await _run(lab, store, domain, nodes=[], allow=_networks(f"{ALLOWED}/32"),
                            http_port=internal.port)
    finally:
        _clear_dns(lab, domain)
    # the allowed address alone is fetched (nothing listens there) ...
    assert alone.reason.startswith(f"DNS path {domain} -> {ALLOWED}:"), alone.reason
    assert "cannot connect" in alone.reason
    # ... the non-public one stops the DNS path before any connection, without being named
    assert not result.ok
    assert result.reason == (f"DNS: {domain} {NON_PUBLIC} (certd does not connect there, "
                             f"and a public CA would not either)")
    assert bad not in "\n".join(result.checks)
    assert internal.hits == 0
    _assert_not_quoted(result, internal.secret)


async def test_allowed_network_is_fetched_but_the_body_not_quoted(lab, store, internal):
    domain = "pf-allowed-net.preflight.test"
    lab.add_a(domain, internal.address)
    try:
        refused = await _run(lab, store, domain, nodes=[], allow=_networks("127.0.0.1/32"),
                             http_port=internal.port)
        hits = internal.hits
        allowed = await _run(lab, store, domain, nodes=[], allow=_networks("127.0.0.8/29"),
                             http_port=internal.port)
    finally:
        lab.clear_a(domain)
    assert refused.reason.startswith(f"DNS: {domain} {NON_PUBLIC}"), refused.reason
    assert hits == 0
    # inside preflight_allow_networks: fetched, and what came back is not repeated
    assert internal.hits == 1
    _assert_not_quoted(allowed, internal.secret)
    assert allowed.reason == (f"DNS path {domain} -> {internal.address}:{internal.port}: "
                              f"{WRONG_BODY}")


async def test_node_addresses_are_always_allowed(lab, store, responder):
    domain = "pf-nodes-allowed.preflight.test"  # resolves to the load balancer, 127.0.0.1
    nothing = await _run(lab, store, domain, allow=[])
    lb_only = await _run(lab, store, domain, allow=_networks("127.0.0.1/32"))
    # the nodes (127.0.0.2, 127.0.0.3) are configured: probed whatever the allow list says
    for result in (nothing, lb_only):
        for node in lab.nodes:
            assert any(c.startswith(f"node {node.name} (") and c.endswith("served the probe")
                       for c in result.checks), result
    assert nothing.reason.startswith(f"DNS: {domain} {NON_PUBLIC}"), nothing.reason
    assert lb_only.ok, lb_only.reason


class HostileNode:
    """A configured node (on 127.0.0.1) that answers whatever the test scripts, raw bytes
    included; ``/moved/<token>`` answers the probe's key authorization from the store,
    ``/gone/...`` 404."""

    def __init__(self, store, port: int) -> None:
        self.store = store
        self.port = port
        self.answer: bytes | None = b""  # None: redirect to /moved/<token>
        self._server: asyncio.base_events.Server | None = None

    def redirect(self, location: str) -> None:
        self.answer = (f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n"
                       f"Connection: close\r\n\r\n").encode("latin-1")

    async def _handle(self, reader, writer) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = head.split(b" ", 2)[1].decode("ascii", "replace")
            token = path.rsplit("/", 1)[-1]
            answer = self.answer
            if answer is None:
                answer = (f"HTTP/1.1 302 Found\r\nLocation: /moved/{token}\r\n"
                          f"Content-Length: 0\r\nConnection: close\r\n\r\n").encode()
            if path.startswith("/gone/"):
                answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
            if path.startswith("/moved/"):
                ka = await self.store.get_key_authorization(token, utcnow())
                body = (ka or "nope").encode()
                answer = (b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode()
                          + b"\r\nConnection: close\r\n\r\n" + body)
            writer.write(answer)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    async def start(self) -> HostileNode:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def hostile(store, internal):
    node = await HostileNode(store, internal.port).start()  # same port: redirects go there
    try:
        yield node
    finally:
        await node.stop()


async def _via(lab, store, node: HostileNode, *, allow=(), domain="pf-hostile.preflight.test"):
    """Preflight with ``node`` as the only node and as the validation port."""
    return await preflight(
        domain, store=store, nodes=[("r1", "127.0.0.1", node.port)],
        resolver=("127.0.0.1", lab.challtestsrv.dns_port), ca_identities=CA,
        account_uri=ACCOUNT, timeout=3.0, http_port=node.port, allow_networks=list(allow))


@pytest.mark.parametrize("location", [
    "http://127.0.0.9/latest/meta-data/",
    "http://[::ffff:127.0.0.9]/latest/meta-data/",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[::1]/",
    "http://127.0.0.1/moved/x",  # the node's own address, chosen by the redirect
    "http://pf-internal-name.preflight.test/latest/meta-data/",  # -> 127.0.0.9 in DNS
])
async def test_node_redirect_to_a_non_public_address_is_refused(lab, store, hostile, internal,
                                                                location):
    lab.add_a("pf-internal-name.preflight.test", internal.address)
    hostile.redirect(location)
    try:
        result = await _via(lab, store, hostile)
    finally:
        lab.clear_a("pf-internal-name.preflight.test")
    assert result.reason == (f"node r1 (127.0.0.1:{hostile.port}): redirect to a non-public "
                             f"address"), result.reason
    assert internal.hits == 0
    assert "meta-data" not in result.reason and "pf-internal-name" not in result.reason


async def test_same_host_redirect_stays_on_the_node(lab, store, hostile):
    hostile.answer = None  # a relative redirect to /moved/<token>: the node's own address
    result = await _via(lab, store, hostile)
    # the node's hops stay on its configured address: no filter; the name's own DNS path
    # (127.0.0.1, not allowed here) is refused
    assert f"node r1 (127.0.0.1:{hostile.port}): served the probe" in result.checks, result
    assert result.reason.startswith("DNS: pf-hostile.preflight.test " + NON_PUBLIC), result


# ------------------------------------------------ SSRF (issue 10): nothing that came is quoted


def _answer(status_line: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = status_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1") + body


SECRET = "INTERNAL-SECRET-" + "X" * 16  # replaced per test by a random marker, same length


@pytest.mark.parametrize("answer, expect", [
    (_answer("HTTP/1.1 200 OK", {"Server": SECRET}, SECRET.encode() + b"\n"), WRONG_BODY),
    (_answer("HTTP/1.1 302 Found", {"Location": f"http://{SECRET}.example:8080/"}),
     "redirect to another port: CAs only follow ports 80 and 443"),
    (_answer("HTTP/1.1 302 Found", {"Location": f"gopher://{SECRET}.example/"}),
     "redirect to another scheme: CAs only follow http and https"),
    (_answer("HTTP/1.1 302 Found", {"Location": f"http://[{SECRET}/"}),
     "redirect with an unusable Location"),
    (_answer("HTTP/1.1 302 Found", {"Location": f"http://{SECRET}.example:99999/"}),
     "redirect with an unusable Location"),
    (_answer("HTTP/1.1 302 Found", {"Location": f"/{SECRET}"}),  # -> 302 again, to itself
     "more than 10 redirects"),
    (_answer("HTTP/1.1 503 " + SECRET, {"Retry-After": SECRET}, SECRET.encode()), "HTTP 503"),
    (b"HTTP/1.1 200 OK\r\nBad Header " + SECRET.encode() + b"\r\n\r\n",
     "unparsable HTTP response"),
    (b"HTTP/1.1 2x0 " + SECRET.encode() + b"\r\n\r\n", "unparsable HTTP response"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + SECRET.encode(),
     "unreadable response body"),
], ids=["body", "location-port", "location-scheme", "location-unparsable", "location-bad-port",
        "location-loop", "status-line", "bad-header", "bad-status", "short-body"])
async def test_node_answers_are_never_quoted(lab, store, hostile, internal, answer, expect):
    secret = _secret()
    hostile.answer = answer.replace(SECRET.encode(), secret.encode())
    result = await _via(lab, store, hostile)
    _assert_not_quoted(result, secret)
    assert result.reason == f"node r1 (127.0.0.1:{hostile.port}): {expect}", result.reason
    assert internal.hits == 0


async def test_redirect_then_error_does_not_name_the_target(lab, store, hostile):
    secret = _secret()
    hostile.redirect(f"/gone/{secret}")
    result = await _via(lab, store, hostile)
    _assert_not_quoted(result, secret)
    assert result.reason == f"node r1 (127.0.0.1:{hostile.port}): HTTP 404 after 1 redirect(s)"


async def test_redirect_target_name_without_address_is_not_named(lab, store, hostile):
    secret = _secret().lower()
    name = f"{secret}.preflight.test"
    lab.set_servfail(name)
    hostile.redirect(f"http://{name}/")
    try:
        result = await _via(lab, store, hostile)
    finally:
        lab.clear_servfail(name)
    _assert_not_quoted(result, secret)
    assert result.reason == (f"node r1 (127.0.0.1:{hostile.port}): redirect: DNS: A lookup "
                             f"for the redirect's host failed (SERVFAIL)"), result.reason


@pytest.mark.parametrize("value, expect", [
    ("{secret}.example", "allows other CAs only, not pebble.letsencrypt.org"),
    ("pebble.letsencrypt.org; accounturi=https://ca.example/acct/{secret}",
     "accounturi names another account"),
    ("pebble.letsencrypt.org; validationmethods={secret}", "validationmethods exclude http-01"),
])
async def test_caa_values_are_never_quoted(lab, store, responder, value, expect):
    secret = _secret()
    domain = "pf-caa-secret.preflight.test"
    lab.add_caa(domain, [("issue", value.format(secret=secret))])
    try:
        result = await _run(lab, store, domain)
    finally:
        lab.clear_caa(domain)
    assert not result.ok
    _assert_not_quoted(result, secret)
    assert result.reason.startswith(f"CAA for {domain}") and expect in result.reason, \
        result.reason
