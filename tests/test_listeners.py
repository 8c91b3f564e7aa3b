"""certd/listener.py: what both listeners grant a client before its request reaches the app
(connection cap, head deadline, idle timeout, a fixed 400 for unparsable requests, counted
logging), over real sockets on 127.0.0.1 through `start_site`, the daemon's own path, with the
real challenge responder and a real SqliteStore behind it."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp import web

from certd.app import start_site
from certd.config import ListenerLimits
from certd.issuance.http01 import PATH_PREFIX
from certd.listener import BAD_REQUEST, GuardedHandler, GuardedSite, Tally
from certd.model import Challenge
from certd.responder import NOT_FOUND, build_app
from tests.stores import opened_store

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEY_AUTHORIZATION = TOKEN + ".nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"
GOOD = (b"GET " + PATH_PREFIX.encode() + TOKEN.encode() + b" HTTP/1.1\r\nHost: a.example\r\n"
        b"\r\n")
UNKNOWN = b"GET " + PATH_PREFIX.encode() + b"Z" * 43 + b" HTTP/1.1\r\nHost: a.example\r\n\r\n"


def limits(max_connections: int = 50, header: float = 30, idle: float = 30) -> ListenerLimits:
    return ListenerLimits(max_connections=max_connections,
                          header_timeout=timedelta(seconds=header),
                          idle_timeout=timedelta(seconds=idle))


@pytest.fixture
async def store(tmp_path):
    async with opened_store(tmp_path / "certd.db", challenges=[
            Challenge(TOKEN, KEY_AUTHORIZATION, "portal", "https://ca/authz/1",
                      T0 + timedelta(hours=1))]) as s:
        yield s


@pytest.fixture
async def serve(store):
    """serve(limits) -> port of the challenge responder behind start_site; stopped after."""
    runners: list[web.AppRunner] = []

    async def start(lim: ListenerLimits, app: web.Application | None = None) -> int:
        runner = await start_site(app or build_app(store, clock=lambda: T0), "127.0.0.1:0",
                                  "challenge", lim)
        runners.append(runner)
        return runner.addresses[0][1]

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


class Conn:
    """One raw client connection; closed by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.received = b""  # what closed_within() read

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 10) -> bytes:
        """One response (head + Content-Length body), or what came before EOF."""
        async def read() -> bytes:
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                return exc.partial
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            try:
                return head + await self.reader.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                return head + exc.partial
        return await asyncio.wait_for(read(), timeout)

    async def closed_within(self, timeout: float) -> float | None:
        """Seconds until the server closed the connection (EOF or reset), else None."""
        start = time.monotonic()
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    break
                self.received += data
        except asyncio.TimeoutError:  # before OSError, which it subclasses
            return None
        except OSError:  # a reset
            pass
        return time.monotonic() - start

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def conns():
    opened: list[Conn] = []

    async def open_(port: int) -> Conn:
        conn = await Conn.open(port)
        opened.append(conn)
        return conn

    try:
        yield open_
    finally:
        for conn in opened:
            conn.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


# --- no byte of an unparsable request comes back ------------------------------------------

H = b"Host: a.example\r\n"
# (id, raw request, distinctive bytes that must not come back). Each marker sits where the
# request breaks, where aiohttp's own 400 quoted it ("Invalid char in url path: b'...'").
MALFORMED = [
    ("method-angle", b"G<script>T / HTTP/1.1\r\n" + H + b"\r\n", [b"<script>"]),
    ("method-nul", b"GE\x00QzxT / HTTP/1.1\r\n" + H + b"\r\n", [b"Qzx"]),
    ("method-utf8", b"G\xc3\xa9QzxT / HTTP/1.1\r\n" + H + b"\r\n", [b"Qzx"]),
    ("path-script", b"GET /<script>alert(1)</script> HTTP/1.1\r\n" + H + b"\r\n",
     [b"<script>", b"alert(1)"]),
    ("path-ctl", b"GET /Qzx\x01\x02 HTTP/1.1\r\n" + H + b"\r\n", [b"Qzx"]),
    ("path-nul", b"GET /Qzx\x00evil HTTP/1.1\r\n" + H + b"\r\n", [b"Qzx", b"evil"]),
    ("path-del", b"GET /Qzx\x7fevil HTTP/1.1\r\n" + H + b"\r\n", [b"Qzx"]),
    ("path-8bit", b"GET /Qzx\xff\xfe<b> HTTP/1.1\r\n" + H + b"\r\n", [b"Qzx", b"<b>"]),
    ("path-spaces", b"GET /Qzx a b <i> HTTP/1.1\r\n" + H + b"\r\n", [b"Qzx", b"<i>"]),
    ("path-too-long", b"GET /Qzx" + b"L" * 20_000 + b" HTTP/1.1\r\n" + H + b"\r\n",
     [b"Qzx", b"LLLLLLLL"]),
    ("target-absolute-bad-host", b"GET http://<script>Qzx/ HTTP/1.1\r\n" + H + b"\r\n",
     [b"<script>", b"Qzx"]),
    ("target-connect-garbage", b"CONNECT Qzx<>:x HTTP/1.1\r\n" + H + b"\r\n", [b"Qzx"]),
    ("version-9.9", b"GET / HTTP/9.9Qzx\r\n" + H + b"\r\n", [b"Qzx"]),
    ("version-httx", b"GET / HTTX/1.1Qzx\r\n" + H + b"\r\n", [b"Qzx", b"HTTX"]),
    ("version-garbage", b"GET / HTTP/one.<script>\r\n" + H + b"\r\n", [b"<script>"]),
    ("version-missing", b"GET /Qzx<script>\r\n\r\n", [b"Qzx", b"<script>"]),
    ("request-line-only-garbage", b"Qzx<script> garbage\r\n\r\n", [b"Qzx", b"<script>"]),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03Qzx<script>" + b"\x00" * 64,
     [b"Qzx", b"<script>"]),
    ("header-name-angle", b"GET / HTTP/1.1\r\n" + H + b"X-<script>: 1\r\n\r\n", [b"<script>"]),
    ("header-name-space", b"GET / HTTP/1.1\r\n" + H + b"Qzx Name: evil\r\n\r\n",
     [b"Qzx", b"evil"]),
    ("header-name-nul", b"GET / HTTP/1.1\r\n" + H + b"X-Qzx\x00: evil\r\n\r\n", [b"Qzx"]),
    ("header-name-utf8", b"GET / HTTP/1.1\r\n" + H + b"X-\xc3\xbcQzx: evil\r\n\r\n", [b"Qzx"]),
    ("header-name-tab", b"GET / HTTP/1.1\r\n" + H + b"X-Qzx\tA: evil\r\n\r\n", [b"Qzx"]),
    ("header-space-before-colon", b"GET / HTTP/1.1\r\n" + H + b"X-Qzx : evil\r\n\r\n",
     [b"Qzx"]),
    ("header-no-colon", b"GET / HTTP/1.1\r\n" + H + b"QzxNoColon<script>\r\n\r\n",
     [b"Qzx", b"<script>"]),
    ("header-empty-name", b"GET / HTTP/1.1\r\n" + H + b": Qzx<script>\r\n\r\n",
     [b"Qzx", b"<script>"]),
    ("header-value-nul", b"GET / HTTP/1.1\r\n" + H + b"X-A: Qzx\x00<script>\r\n\r\n",
     [b"Qzx", b"<script>"]),
    ("header-value-cr", b"GET / HTTP/1.1\r\n" + H + b"X-A: Qzx\r<script>\r\n\r\n",
     [b"Qzx", b"<script>"]),
    ("header-obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n Qzx<script>\r\n\r\n",
     [b"Qzx", b"<script>"]),
    ("header-value-huge", b"GET / HTTP/1.1\r\n" + H + b"X-A: Qzx" + b"E" * 20_000 + b"\r\n\r\n",
     [b"Qzx", b"EEEEEEEE"]),
    ("header-name-huge", b"GET / HTTP/1.1\r\n" + H + b"Qzx" + b"N" * 20_000 + b": 1\r\n\r\n",
     [b"Qzx", b"NNNNNNNN"]),
    ("headers-too-many", b"GET / HTTP/1.1\r\n" + H
     + b"".join(b"X-Qzx%d: v\r\n" % i for i in range(300)) + b"\r\n", [b"Qzx"]),
    ("content-length-garbage", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: Qzx<script>\r\n\r\n",
     [b"Qzx", b"<script>"]),
    ("content-length-negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -5Qzx\r\n\r\n",
     [b"Qzx"]),
    ("content-length-twice", b"POST / HTTP/1.1\r\n" + H
     + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nQzxQzx", [b"Qzx"]),
    ("content-length-overflow", b"POST / HTTP/1.1\r\n" + H
     + b"Content-Length: 99999999999999999999999999999Qzx\r\n\r\n", [b"Qzx"]),
    ("te-and-cl", b"POST / HTTP/1.1\r\n" + H
     + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nQzx\r\n0\r\n\r\n", [b"Qzx"]),
    ("te-unknown", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: Qzx<script>\r\n\r\n",
     [b"Qzx", b"<script>"]),
    ("te-chunked-not-last", b"POST / HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked, Qzx\r\n\r\n", [b"Qzx"]),
    ("chunk-size-garbage", b"POST / HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked\r\n\r\nQzx<script>\r\nabc\r\n0\r\n\r\n", [b"Qzx", b"<script>"]),
    ("chunk-extension-garbage", b"POST / HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked\r\n\r\n3;Qzx\x00<script>\r\nabc\r\n0\r\n\r\n",
     [b"Qzx", b"<script>"]),
    ("chunk-size-overflow", b"POST / HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffffffQzx\r\n\r\n", [b"Qzx"]),
    ("http10-chunked", b"POST / HTTP/1.0\r\n" + H
     + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nQzx\r\n", [b"Qzx"]),
    ("upgrade-garbage", b"GET / HTTP/1.1\r\n" + H
     + b"Connection: Upgrade\r\nUpgrade: Qzx<script>\r\n\r\n", [b"Qzx", b"<script>"]),
    ("lf-only-with-junk", b"GET /Qzx\x0b HTTP/1.1\n" + H + b"\n", [b"Qzx"]),
]


def assert_no_echo(answer: bytes, markers: list[bytes]) -> None:
    assert answer, "no answer at all"
    lowered = answer.lower()
    for marker in markers + [b"<script", b"qzx"]:
        assert marker.lower() not in lowered, (marker, answer[:300])
    status = status_of(answer)
    assert status in (400, 404), answer[:300]
    assert body_of(answer) == (BAD_REQUEST if status == 400 else NOT_FOUND), answer[:300]


@pytest.mark.parametrize("raw,markers", [(raw, m) for _, raw, m in MALFORMED],
                         ids=[case for case, _, _ in MALFORMED])
async def test_malformed_request_is_not_echoed(serve, conns, raw, markers):
    port = await serve(limits())
    conn = await conns(port)
    await conn.send(raw)
    answer = await conn.answer()
    assert_no_echo(answer, markers)
    if status_of(answer) == 400:
        assert b"\r\nConnection: close\r\n" in answer
        assert b"Content-Type: text/plain" in answer


async def test_malformed_table_is_big_enough():
    assert len(MALFORMED) >= 30
    assert len({case for case, _, _ in MALFORMED}) == len(MALFORMED)
    assert len({raw for _, raw, _ in MALFORMED}) == len(MALFORMED)


async def test_malformed_requests_log_one_line_without_traceback(serve, conns, caplog):
    """The whole table, twice, within one interval: one log line with a count, no
    traceback, no request byte; and the listener still serves."""
    caplog.set_level(logging.DEBUG)
    port = await serve(limits())
    bad = 0
    for _ in range(2):
        for _, raw, _ in MALFORMED:
            conn = await conns(port)
            await conn.send(raw)
            bad += status_of(await conn.answer()) == 400
            conn.close()
    assert bad >= 40  # most of the table does not parse at all
    conn = await conns(port)
    await conn.send(GOOD)
    assert body_of(await conn.answer()) == KEY_AUTHORIZATION.encode()

    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].getMessage() == "challenge: 1 malformed request in the last 60 s"
    for record in caplog.records:
        message = record.getMessage()
        assert record.exc_info is None, message
        assert "Traceback" not in message and "qzx" not in message.lower(), message
        assert "<script" not in message, message
        assert record.name != "aiohttp.server", message


async def test_tally_one_line_per_interval_with_counts(caplog):
    caplog.set_level(logging.INFO, logger="certd.listener")
    tally = Tally("x: {count} event{s} in the last {interval} s", interval=0.3)
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        tally.add()
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.4)  # the last interval ends and reports itself
    lines = [r.getMessage() for r in caplog.records]
    assert 2 <= len(lines) <= 5, lines  # ~1 s / 0.3 s, plus the first event's own line
    assert lines[0] == "x: 1 event in the last 0.3 s"
    counts = [int(line.split()[1].replace(",", "")) for line in lines]
    assert sum(counts) == tally.total
    assert tally.count == 0


# --- header and idle timeouts -------------------------------------------------------------

async def test_header_timeout_closes_a_trickled_head(serve, conns):
    port = await serve(limits(header=1, idle=30))
    conn = await conns(port)
    start = time.monotonic()
    await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    for i in range(40):  # one header byte every 0.25 s: slowloris
        await asyncio.sleep(0.25)
        if conn.reader.at_eof():
            break
        try:
            await conn.send(b"\r\nX-Slow: " if i % 10 == 9 else b"a")
        except (ConnectionError, OSError):
            break
    assert await conn.closed_within(5) is not None
    elapsed = time.monotonic() - start
    assert 0.8 <= elapsed <= 5, elapsed
    assert conn.received == b""  # closed, not answered


async def test_header_timeout_closes_a_silent_connection(serve, conns):
    port = await serve(limits(header=1, idle=30))
    conn = await conns(port)
    elapsed = await conn.closed_within(10)
    assert elapsed is not None and 0.8 <= elapsed <= 5, elapsed
    assert conn.received == b""  # closed, not answered


async def test_header_timeout_on_a_kept_alive_connection(serve, conns):
    port = await serve(limits(header=1, idle=30))
    conn = await conns(port)
    await conn.send(GOOD)
    assert body_of(await conn.answer()) == KEY_AUTHORIZATION.encode()
    await asyncio.sleep(1.5)  # idle longer than the head deadline: still open (idle is 30 s)
    await conn.send(GOOD)
    assert body_of(await conn.answer()) == KEY_AUTHORIZATION.encode()
    await conn.send(b"GET / HTTP/1.1\r\nHost:")  # the start of a further head, never ended
    elapsed = await conn.closed_within(10)
    assert elapsed is not None and 0.8 <= elapsed <= 5, elapsed


async def test_idle_timeout_closes_a_kept_alive_connection(serve, conns):
    port = await serve(limits(header=30, idle=1))
    conn = await conns(port)
    await conn.send(GOOD)
    assert body_of(await conn.answer()) == KEY_AUTHORIZATION.encode()
    elapsed = await conn.closed_within(10)
    assert elapsed is not None and 0.8 <= elapsed <= 5, elapsed


async def test_a_slow_body_is_not_a_slow_head(serve, conns):
    """The head deadline ends with the head: an API client uploading its body slowly is
    the app's business (client_max_size), not the head timer's."""
    async def echo_length(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    app = web.Application()
    app.router.add_post("/", echo_length)
    port = await serve(limits(header=0.5, idle=30), app)
    conn = await conns(port)
    await conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
    for _ in range(6):
        await asyncio.sleep(0.25)  # 1.5 s of body: three head deadlines
        await conn.send(b"x")
    answer = await conn.answer()
    assert status_of(answer) == 200 and body_of(answer) == b"6"


# --- the connection cap -------------------------------------------------------------------

async def test_cap_closes_the_next_connection_at_once(serve, conns, caplog):
    caplog.set_level(logging.INFO, logger="certd.listener")
    cap = 5
    port = await serve(limits(max_connections=cap, header=30, idle=30))
    held = [await conns(port) for _ in range(cap)]
    await held[0].send(b"GET / HTT")  # some with part of a head, some silent
    await asyncio.sleep(0.2)

    extra = await conns(port)
    start = time.monotonic()
    await extra.send(GOOD)
    assert await asyncio.wait_for(extra.reader.read(), 5) == b""  # no answer: closed unread
    assert time.monotonic() - start < 2

    for conn in held:  # the ones inside the cap are untouched
        assert not conn.reader.at_eof()
        assert await conn.closed_within(0.2) is None

    held[1].close()  # one leaves: a fresh connection with a real request gets its answer
    for _ in range(50):
        conn = await conns(port)
        await conn.send(GOOD)
        answer = await conn.answer()
        if answer:
            break
        await asyncio.sleep(0.05)
    assert body_of(answer) == KEY_AUTHORIZATION.encode()

    lines = [r for r in caplog.records if "at once" in r.getMessage()]
    assert [r.getMessage() for r in lines] == [
        "challenge: closed 1 connection at once in the last 60 s: 5 already open "
        "(limits.max_connections)"]
    assert lines[0].levelno == logging.WARNING


async def test_cap_counts_only_open_connections(serve, conns):
    """Connections that end (client or server side) free their place: 3x the cap of
    sequential requests, each on its own connection, are all answered."""
    port = await serve(limits(max_connections=3, header=30, idle=30))
    for _ in range(9):
        conn = await conns(port)
        await conn.send(UNKNOWN.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert body_of(await conn.answer()) == NOT_FOUND
        assert await conn.closed_within(5) is not None
        conn.close()


# --- the aiohttp internals certd/listener.py relies on -------------------------------------

async def test_aiohttp_internals_we_rely_on(serve, conns):
    """If this fails after an aiohttp upgrade, certd/listener.py needs a look (each use is
    marked `# aiohttp private:` there)."""
    slots = web.RequestHandler.__slots__
    assert "_request_count" in slots and "_waiter" in slots
    assert "_server" in web.BaseSite.__slots__
    params = list(inspect.signature(web.RequestHandler.handle_error).parameters)
    assert params == ["self", "request", "status", "exc", "message"]
    assert "keepalive_timeout" in inspect.signature(web.RequestHandler).parameters
    server = web.Server(lambda request: None, max_line_size=1234)
    assert server._kwargs == {"max_line_size": 1234}

    # and they behave as used: heads counted, the waiter set while idle, app handler_args
    # reach the handler, a site's asyncio server is what runner.addresses reads
    handlers: list[GuardedHandler] = []

    async def record(request: web.Request) -> web.Response:
        handlers.append(request.protocol)
        return web.Response(text="ok")

    app = web.Application(handler_args={"max_line_size": 4321})
    app.router.add_get("/", record)
    port = await serve(limits(idle=7), app)
    conn = await conns(port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert body_of(await conn.answer()) == b"ok"
    await asyncio.sleep(0.05)
    [handler] = handlers
    assert isinstance(handler, GuardedHandler)
    assert handler._request_count == 1
    assert handler._waiter is not None  # idle, waiting for the next request
    assert handler.max_line_size == 4321
    assert handler.keepalive_timeout == 7
    await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert body_of(await conn.answer()) == b"ok"
    assert handler._request_count == 2
    assert GuardedSite.__slots__  # a slotted site like aiohttp's own


async def test_answers_name_no_software_versions(serve, conns):
    port = await serve(limits())
    for request in (f"GET /.well-known/acme-challenge/{TOKEN} HTTP/1.1\r\nHost: a\r\n\r\n",
                    "GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n"):
        conn = await conns(port)
        await conn.send(request.encode())
        answer = await conn.answer()
        assert b"\r\nServer: certd\r\n" in answer
        assert b"aiohttp" not in answer and b"Python" not in answer
