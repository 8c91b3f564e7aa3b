"""certd/responder.py: the HTTP-01 challenge listener, over real HTTP on 127.0.0.1 with a real
SqliteStore behind it."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from certd.app import start_site
from certd.issuance.http01 import PATH_PREFIX, valid_token
from certd.listener import BAD_REQUEST
from certd.model import Challenge
from certd.responder import NOT_FOUND, STATS, UNAVAILABLE, ChallengeStats, build_app
from certd.store.sqlite import SqliteStore
from tests.stores import opened_store

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"  # RFC 8555 §8.3's example token
KEY_AUTHORIZATION = TOKEN + ".nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"
EXPIRED = "EXPIREDtokenEXPIREDtokenEXPIREDtoken_____"


def clock():
    return T0


@pytest.fixture
async def store(tmp_path):
    async with opened_store(tmp_path / "certd.db", challenges=[
            Challenge(TOKEN, KEY_AUTHORIZATION, "portal", "https://ca/authz/1",
                      T0 + timedelta(hours=1)),
            Challenge(EXPIRED, EXPIRED + ".thumb", "portal", "https://ca/authz/2",
                      T0 - timedelta(seconds=1))]) as s:
        yield s


@pytest.fixture
async def client(store):
    stats = ChallengeStats()
    async with TestClient(TestServer(build_app(store, stats, clock=clock),
                                     host="127.0.0.1")) as c:
        c.stats = stats
        yield c


async def expect_not_found(resp: aiohttp.ClientResponse, *forbidden: str) -> None:
    body = await resp.read()
    assert resp.status == 404
    assert body == NOT_FOUND
    assert resp.content_type == "text/plain"
    for text in filter(None, forbidden):
        assert text.encode("utf-8", "replace") not in body


# --- the one thing it serves ------------------------------------------------------------

async def test_pending_token_get(client):
    resp = await client.get(PATH_PREFIX + TOKEN)
    assert resp.status == 200
    assert await resp.read() == KEY_AUTHORIZATION.encode("ascii")
    assert resp.content_type == "text/plain"
    assert resp.headers["Cache-Control"] == "no-store"
    assert client.stats.counts == {"served": 1, "not_found": 0, "error": 0}
    assert client.server.app[STATS] is client.stats


async def test_pending_token_head(client):
    resp = await client.head(PATH_PREFIX + TOKEN)
    assert resp.status == 200
    assert int(resp.headers["Content-Length"]) == len(KEY_AUTHORIZATION)
    assert await resp.read() == b""


async def test_query_string_is_ignored(client):
    resp = await client.get(PATH_PREFIX + TOKEN + "?x=<script>")
    assert resp.status == 200
    assert await resp.read() == KEY_AUTHORIZATION.encode()


async def test_token_deleted_is_gone(client, store):
    assert (await client.get(PATH_PREFIX + TOKEN)).status == 200
    await store.delete_challenge(TOKEN)
    await expect_not_found(await client.get(PATH_PREFIX + TOKEN))


# --- everything else: one small fixed 404 that never echoes input --------------------------

async def test_unknown_token(client):
    other = "Z" * 43
    await expect_not_found(await client.get(PATH_PREFIX + other), other)
    assert client.stats.counts["not_found"] == 1


async def test_expired_token(client):
    await expect_not_found(await client.get(PATH_PREFIX + EXPIRED), EXPIRED)


@pytest.mark.parametrize("token", [
    "short",
    "A" * 21,  # one short of 128 bits
    TOKEN + "=",  # padding is not base64url-without-padding
    TOKEN[:-2] + "==",
    TOKEN + "%0A",  # a trailing newline
    TOKEN + "%00",
    TOKEN + "%20",
    TOKEN + "/x",
    "A" * 129,
    "A" * 10_000,
    "<script>alert(1)</script>" + "A" * 30,
    "bücher" + "A" * 30,
    "%C3%BC" * 30,
    "%E2%80%AE" + "A" * 40,  # U+202E
    "%2e%2e/%2e%2e/etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "",
], ids=lambda token: token[:48] + (f"...({len(token)})" if len(token) > 48 else ""))
async def test_bad_token_syntax(client, token):
    resp = await client.get(PATH_PREFIX + token)
    await expect_not_found(resp, token, "script", "passwd")


@pytest.mark.parametrize("path", [
    "/", "/api/v1/domains", "/.well-known/acme-challenge/", "/.well-known/acme-challenge",
    "/.well-known/", "/.well-known/acme-challenge//" + TOKEN, "/x/" + PATH_PREFIX + TOKEN,
    "/healthz", "/metrics", "/favicon.ico",
])
async def test_other_paths(client, path):
    await expect_not_found(await client.get(path), path)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"])
async def test_other_methods_on_a_pending_token(client, method):
    resp = await client.request(method, PATH_PREFIX + TOKEN, data=b"payload")
    await expect_not_found(resp, KEY_AUTHORIZATION, "payload")


async def test_expired_and_pending_both_in_the_store(client):
    # the same request order twice: the answers depend only on the store and the clock
    for _ in range(2):
        assert (await client.get(PATH_PREFIX + TOKEN)).status == 200
        assert (await client.get(PATH_PREFIX + EXPIRED)).status == 404


# --- exact bytes over a real socket, through the daemon's own listener -------------------

@pytest.fixture
async def site(store):
    runner = await start_site(build_app(store, clock=clock), "127.0.0.1:0", "test responder")
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    """Send bytes, read one response (by Content-Length), close. Returns (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        return status, body
    finally:
        writer.close()


def get(target: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n" + \
        extra + b"\r\n"


async def test_raw_good_request(site):
    assert await raw_request(site, get(PATH_PREFIX.encode() + TOKEN.encode())) == \
        (200, KEY_AUTHORIZATION.encode())


@pytest.mark.parametrize("target", [
    b"/.well-known/acme-challenge/../" + TOKEN.encode(),
    b"/.well-known/acme-challenge/%2e%2e/",
    b"/.well-known/acme-challenge/%2e%2e/" + TOKEN.encode(),
    b"/.well-known/acme-challenge/./" + TOKEN.encode(),
    b"/.well-known/acme-challenge/" + TOKEN.encode() + b"%0a",
    b"/.well-known/acme-challenge/" + TOKEN.encode() + b"%0d%0aX-Injected:%201",
    b"/.well-known/acme-challenge/" + b"B" * 10_000,
    b"/.well-known/acme-challenge/%F0%9F%98%80" + b"A" * 40,
    b"//.well-known/acme-challenge/" + TOKEN.encode(),
], ids=lambda target: target[28:76].decode() + (f"...({len(target)})" if len(target) > 76 else ""))
async def test_raw_bad_targets(site, target):
    status, body = await raw_request(site, get(target))
    assert (status, body) == (404, NOT_FOUND), target[:80]


async def test_raw_absolute_form_target(site):
    # a proxy-style request line names a host; the responder still only looks at the path
    status, body = await raw_request(
        site, get(b"http://a.example" + PATH_PREFIX.encode() + TOKEN.encode()))
    assert (status, body) == (200, KEY_AUTHORIZATION.encode())


async def test_malformed_requests_do_not_stop_the_listener(site):
    for request in (b"G<T / HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /\xc3\xbc HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: x\r\nX-<bad>: 1\r\n\r\n",
                    b"GET / HTTP/9.9\r\n\r\n",
                    b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"):
        status, body = await raw_request(site, request)
        assert (status, body) in ((400, BAD_REQUEST), (404, NOT_FOUND)), request
    assert (await raw_request(site, get(PATH_PREFIX.encode() + TOKEN.encode())))[0] == 200


# --- huge bodies, a broken store, a busy store ------------------------------------------------

async def test_huge_body_is_refused(client):
    big = b"x" * (4 * 1024 * 1024)
    await expect_not_found(await client.post(PATH_PREFIX + TOKEN, data=io.BytesIO(big)))
    await expect_not_found(await client.put("/", data=io.BytesIO(big)))
    await expect_not_found(await client.get("/", data=io.BytesIO(big)))
    # and the listener carries on
    assert (await client.get(PATH_PREFIX + TOKEN)).status == 200


async def test_declared_huge_body_does_not_hang_the_answer(site):
    # a body that never arrives: the answer does not wait for it
    request = (b"POST " + PATH_PREFIX.encode() + TOKEN.encode() + b" HTTP/1.1\r\n"
               b"Host: x\r\nContent-Length: 99999999999\r\n\r\nabc")
    assert await raw_request(site, request) == (404, NOT_FOUND)
    assert (await raw_request(site, get(PATH_PREFIX.encode() + TOKEN.encode())))[0] == 200


async def test_store_error_gives_503(tmp_path):
    broken = SqliteStore(tmp_path / "never-opened.db")  # every lookup raises StoreError
    stats = ChallengeStats()
    async with TestClient(TestServer(build_app(broken, stats), host="127.0.0.1")) as c:
        resp = await c.get(PATH_PREFIX + TOKEN)
        assert resp.status == 503
        assert await resp.read() == UNAVAILABLE
        assert str(tmp_path) not in (await resp.text())
        # syntax is checked before the store: a bad token is still a plain 404
        await expect_not_found(await c.get(PATH_PREFIX + "bad"))
    assert stats.counts == {"served": 0, "not_found": 1, "error": 1}


async def test_store_error_from_a_damaged_database(tmp_path):
    s = SqliteStore(tmp_path / "certd.db")
    await s.open()
    try:
        with sqlite3.connect(tmp_path / "certd.db") as db:
            db.execute("DROP TABLE challenges")
        async with TestClient(TestServer(build_app(s), host="127.0.0.1")) as c:
            resp = await c.get(PATH_PREFIX + TOKEN)
            assert resp.status == 503
            assert await resp.read() == UNAVAILABLE
    finally:
        await s.close()


async def test_answers_while_the_store_is_busy(tmp_path, store, client):
    """200 concurrent GETs while another connection holds the write lock and a writer waits
    on it: every request is answered, each with the right answer."""
    path = tmp_path / "certd.db"
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer = SqliteStore(path)
    await writer.open()
    try:
        locker.execute("BEGIN IMMEDIATE")
        locker.execute("INSERT INTO events (at, kind, severity, message, data) "
                       "VALUES ('x', 'x', 'info', 'x', '{}')")
        # a write that has to wait for the lock, in flight during the whole burst
        blocked_write = asyncio.create_task(writer.put_challenge(Challenge(
            "W" * 43, "W" * 43 + ".k", "portal", "u", T0 + timedelta(hours=1))))

        async def one(i: int) -> tuple[int, int, bytes]:
            token = TOKEN if i % 2 == 0 else f"unknown{i:04d}".ljust(43, "q")
            resp = await client.get(PATH_PREFIX + token)
            return i, resp.status, await resp.read()

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 60)
        assert len(results) == 200
        for i, status, body in results:
            if i % 2 == 0:
                assert (status, body) == (200, KEY_AUTHORIZATION.encode())
            else:
                assert (status, body) == (404, NOT_FOUND)
        locker.execute("COMMIT")
        await asyncio.wait_for(blocked_write, 30)
        assert (await client.get(PATH_PREFIX + "W" * 43)).status == 200
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
        await writer.close()
    assert client.stats.counts["served"] == 101


# --- the token syntax itself ------------------------------------------------------------

def test_valid_token_syntax():
    assert valid_token(TOKEN)
    assert valid_token("A" * 22) and valid_token("A" * 128)
    for bad in ("A" * 21, "A" * 129, TOKEN + "\n", TOKEN + "=", TOKEN + ".", "\n" + TOKEN,
                "A" * 21 + "ü", ""):
        assert not valid_token(bad), repr(bad)
