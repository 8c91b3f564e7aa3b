"""Issue 10, finding 4, against a running `certd run`: a bounded slowloris (a few thousand
sockets, each sending part of a request head and then a byte a second) on both listeners of a
daemon held to systemd's default file limit of 1,024. The challenge listener and /healthz
keep answering while the sockets are open, and the server closes every one of them: at once
past the cap, within the head deadline inside it. Before the fix, the sockets stayed open
and, past ~1,000 of them, the daemon stopped accepting connections at all.

No lab needed: the daemon's ACME directory is a closed port, its one node a file deployer.
"""

from __future__ import annotations

import asyncio
import resource
import time

import pytest

from tests.certd_lab import Daemon, write_config
from tests.lab import free_port

CHALLENGE_CAP, API_CAP = 200, 100
HEADER_TIMEOUT = 2  # seconds, both listeners
ATTACK_CHALLENGE, ATTACK_API = 2000, 500
DAEMON_NOFILE = 1024  # systemd's default soft limit, the one the finding was made with
PARTIAL_HEAD = b"GET /.well-known/acme-challenge/slowloris HTTP/1.1\r\nHost: a\r\nX-Slow: "


@pytest.fixture
def daemon(tmp_path):
    challenge_port, api_port = free_port(), free_port()
    limits = {"header_timeout": f"{HEADER_TIMEOUT}s", "idle_timeout": "3s"}
    data = {
        "state_dir": str(tmp_path / "state"),
        "acme": {"directory": f"https://127.0.0.1:{free_port()}/dir", "timeout": "2s"},
        "challenge": {"listen": f"127.0.0.1:{challenge_port}",
                      "limits": {"max_connections": CHALLENGE_CAP, **limits}},
        # one API process: the guard's caps and its log lines are per process (api.workers)
        "api": {"listen": f"127.0.0.1:{api_port}", "workers": 1,
                "limits": {"max_connections": API_CAP, **limits}},
        "frontends": {"web": {"nodes": [{"name": "fe1", "address": "127.0.0.2"}],
                              "deployer": {"type": "file", "path": str(tmp_path) + "/{node}"}}},
        "certificates": [{"name": "x", "domains": ["x.test"], "frontends": ["web"]}],
    }
    proc = Daemon(write_config(tmp_path / "c.yaml", data), tmp_path / "certd.log",
                  nofile=DAEMON_NOFILE)
    try:
        proc.wait_log("api listening on")
        proc.challenge_port, proc.api_port = challenge_port, api_port
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def many_files():
    """Room in this process for the attack's sockets; restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = ATTACK_CHALLENGE + ATTACK_API + 512
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def ask(port: int, request: bytes, timeout: float = 5) -> bytes:
    """One request on a fresh connection; b'' if the server closed it unanswered."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, asyncio.TimeoutError):
        return b""
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    except (OSError, asyncio.TimeoutError):  # reset, or never answered
        return b""
    finally:
        writer.close()


async def answered(port: int, request: bytes, within: float) -> tuple[bytes, int, float]:
    """Retry on fresh connections until one is answered: (answer, attempts, seconds)."""
    start, attempts = time.monotonic(), 0
    while True:
        attempts += 1
        answer = await ask(port, request)
        elapsed = time.monotonic() - start
        if answer or elapsed > within:
            return answer, attempts, elapsed
        await asyncio.sleep(0.1)


class Slowloris:
    """`count` connections to `port`, each sending part of a head and then a byte a second
    until the server closes it or `deadline` (monotonic) passes. Every socket is closed by
    `close()`."""

    def __init__(self, port: int, count: int):
        self.port, self.count = port, count
        self.writers: list[asyncio.StreamWriter] = []
        self.opened = 0
        self.failed_to_open = 0
        self.lifetimes: list[float] = []  # seconds from open to the server's close
        self.answered = 0  # connections that got any byte back (there should be none)

    async def one(self, gate: asyncio.Semaphore, deadline: float) -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 5)
            except (OSError, asyncio.TimeoutError):
                self.failed_to_open += 1
                return
        self.writers.append(writer)
        self.opened += 1
        start = time.monotonic()
        try:
            writer.write(PARTIAL_HEAD)
            while time.monotonic() < deadline:
                try:
                    data = await asyncio.wait_for(reader.read(1024), 1)
                except asyncio.TimeoutError:
                    writer.write(b"a")  # slowloris: a byte a second
                    continue
                if data:
                    self.answered += 1
                break  # EOF
        except OSError:  # reset by the server
            pass
        if time.monotonic() < deadline:
            self.lifetimes.append(time.monotonic() - start)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def challenge_request() -> bytes:
    return (b"GET /.well-known/acme-challenge/" + b"Z" * 43 + b" HTTP/1.1\r\n"
            b"Host: a.example\r\nConnection: close\r\n\r\n")


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


async def test_slowloris_against_the_running_daemon(daemon, many_files):
    # before: both listeners answer
    assert (await ask(daemon.challenge_port, challenge_request())).startswith(b"HTTP/1.1 404")
    assert (await ask(daemon.api_port, HEALTHZ)).startswith(b"HTTP/1.1 200")

    attacks = [Slowloris(daemon.challenge_port, ATTACK_CHALLENGE),
               Slowloris(daemon.api_port, ATTACK_API)]
    start = time.monotonic()
    deadline = start + 40  # the whole attack is bounded in time
    gate = asyncio.Semaphore(256)
    tasks = [asyncio.create_task(a.one(gate, deadline)) for a in attacks for _ in range(a.count)]
    try:
        # the attack's sockets are being opened and held: legitimate requests get answers
        await asyncio.sleep(1)
        challenge, c_attempts, c_time = await answered(
            daemon.challenge_port, challenge_request(), within=20)
        healthz, h_attempts, h_time = await answered(daemon.api_port, HEALTHZ, within=20)
        assert challenge.startswith(b"HTTP/1.1 404") and challenge.endswith(b"not found\n"), \
            challenge[:200]
        assert healthz.startswith(b"HTTP/1.1 200") and b'"ok"' in healthz, healthz[:200]

        await asyncio.wait_for(asyncio.gather(*tasks), deadline - time.monotonic() + 5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for attack in attacks:
            attack.close()

    for attack in attacks:
        # every socket that got in was closed by the server, long before the deadline, and
        # none got an answer to its half a head
        assert attack.opened >= attack.count * 0.95, (attack.opened, attack.failed_to_open)
        assert len(attack.lifetimes) == attack.opened, (len(attack.lifetimes), attack.opened)
        assert attack.answered == 0
        held = sorted(attack.lifetimes)
        assert held[-1] < HEADER_TIMEOUT + 10, held[-10:]
        print(f"port {attack.port}: {attack.opened} opened, "
              f"{sum(t < 0.5 for t in held)} closed within 0.5 s, "
              f"longest held {held[-1]:.1f} s; legit answers after "
              f"{c_attempts}/{h_attempts} attempts, {c_time:.1f}/{h_time:.1f} s")
    # the daemon is still healthy afterwards, and said what happened without tracebacks
    assert (await ask(daemon.challenge_port, challenge_request())).startswith(b"HTTP/1.1 404")
    assert (await ask(daemon.api_port, HEALTHZ)).startswith(b"HTTP/1.1 200")
    log = daemon.log()
    assert "challenge responder: closed " in log and "(limits.max_connections)" in log
    assert "api: closed " in log
    assert "Traceback" not in log
    assert "out of system resource" not in log  # asyncio's EMFILE pause: never reached
    assert daemon.proc.poll() is None


MALFORMED_FOR_THE_DAEMON = [
    b"GET /<script>x HTTP/1.1\r\nHost: a\r\nX-<script>: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: Qzx<script>\r\n\r\n",
    b"G\x00T /Qzx HTTP/1.1\r\n\r\n",
    b"GET /Qzx HTTP/9.9<script>\r\n\r\n",
]


async def test_malformed_requests_to_the_running_daemon(daemon):
    """Both listeners: a fixed 400, no byte of the request back, one log line per listener."""
    for port in (daemon.challenge_port, daemon.api_port):
        for _ in range(5):
            for raw in MALFORMED_FOR_THE_DAEMON:
                answer = await ask(port, raw)
                assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
                assert answer.endswith(b"\r\n\r\nbad request\n"), answer
                assert b"script" not in answer.lower() and b"qzx" not in answer.lower()
    # still serving
    assert (await ask(daemon.challenge_port, challenge_request())).startswith(b"HTTP/1.1 404")
    assert (await ask(daemon.api_port, HEALTHZ)).startswith(b"HTTP/1.1 200")
    log = daemon.log()
    assert log.count("challenge responder: 1 malformed request in the last 60 s") == 1
    assert log.count("api: 1 malformed request in the last 60 s") == 1
    assert log.count(" malformed request") == 2  # the other 38 wait for the end of the interval
    assert "Traceback" not in log and "script" not in log and "Qzx" not in log
