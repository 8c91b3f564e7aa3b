"""Issue 10, finding 1, against a running daemon: preflight must not be an SSRF that returns
data.

An "internal" HTTP service on a loopback address outside `domains.preflight_allow_networks`
answers a secret to every request. Aliases are added through the API whose DNS points at
it, whose (allowed, tenant-controlled) server redirects into it by address and by name, whose
server answers the secret itself with HTTP 200, and whose CAA record carries the secret. Each
alias must end `failed`, the internal service must never be asked, and no byte of the secret
may appear in the API's answers, `certd status --json`, the store's files (the event log),
the daemon's log or any notifier payload (a real webhook receiver).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.certd_lab import Daemon, lab_config_data, run_certd, write_config
from tests.notify_servers import WebhookReceiver

pytestmark = pytest.mark.lab

TOKEN = "ssrf-lab-token-0123456789abcdef"
H = {"Authorization": f"Bearer {TOKEN}"}
INTERNAL = "127.0.0.109"  # the internal service: not in the allow list
EDGE = "127.0.0.108"  # a tenant's own server "on the Internet": allowed
METADATA_NAME = "ssrf-metadata.test"  # an internal name, resolves to INTERNAL


class Server:
    """A raw HTTP/1.1 server on ``address:port``; ``answer(host, path)`` gives the bytes."""

    def __init__(self, address: str, port: int, answer) -> None:
        self.address, self.port, self.answer = address, port, answer
        self.requests: list[tuple[str, str]] = []
        self._server: asyncio.base_events.Server | None = None

    async def _handle(self, reader, writer) -> None:
        try:
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
            path = head.split(" ", 2)[1]
            host = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                         if line.lower().startswith("host:")), "")
            self.requests.append((host, path))
            writer.write(self.answer(host, path))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, IndexError):
            pass
        finally:
            writer.close()

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._handle, self.address, self.port)
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()


def _response(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"HTTP/1.1 {status}\r\n{head}Content-Length: {len(body)}\r\nConnection: close"
            f"\r\n\r\n").encode("latin-1") + body


# alias -> what its last_error must say, in fixed words
ALIASES = {
    "ssrf-dns.test": "preflight[ssrf-dns.test]: DNS: ssrf-dns.test resolves to a non-public "
                     "address",
    "ssrf-redirect-ip.test": f"preflight[ssrf-redirect-ip.test]: DNS path ssrf-redirect-ip.test "
                             f"-> {EDGE}:PORT: redirect to a non-public address",
    "ssrf-redirect-name.test": f"preflight[ssrf-redirect-name.test]: DNS path "
                               f"ssrf-redirect-name.test -> {EDGE}:PORT: redirect to a "
                               f"non-public address",
    "ssrf-body.test": f"preflight[ssrf-body.test]: DNS path ssrf-body.test -> {EDGE}:PORT: "
                      f"HTTP 200 with a different body",
    "ssrf-caa.test": "preflight[ssrf-caa.test]: CAA for ssrf-caa.test: accounturi names "
                     "another account",
}


def _edge_answer(secret: str):
    """The tenant's server: redirects into the internal service, or answers the secret."""
    def answer(host: str, path: str) -> bytes:
        if host == "ssrf-redirect-ip.test":
            return _response("302 Found", {"Location": f"http://{INTERNAL}/latest/{secret}"})
        if host == "ssrf-redirect-name.test":
            return _response("302 Found",
                             {"Location": f"http://{METADATA_NAME}/latest/{secret}"})
        return _response("200 OK", {"Server": secret}, secret.encode())
    return answer


def _set_dns(lab, secret: str) -> None:
    lab.add_a("ssrf-dns.test", INTERNAL)
    lab.add_a(METADATA_NAME, INTERNAL)
    for name in ("ssrf-redirect-ip.test", "ssrf-redirect-name.test", "ssrf-body.test"):
        lab.add_a(name, EDGE)
    lab.add_caa("ssrf-caa.test", [("issue", f"pebble.letsencrypt.org; "
                                            f"accounturi=https://ca.example/acct/{secret}")])


def _clear_dns(lab) -> None:
    for name in ("ssrf-dns.test", METADATA_NAME, "ssrf-redirect-ip.test",
                 "ssrf-redirect-name.test", "ssrf-body.test"):
        lab.clear_a(name)
    lab.clear_caa("ssrf-caa.test")


def _config(lab, tmp_path: Path, webhook: str) -> Path:
    data = lab_config_data(lab, tmp_path / "state", [])
    data["domains"]["default_frontends"] = ["web"]
    # only what the lab really needs: the load balancer (the CA's view of a healthy alias)
    # and the tenant's server; the nodes (127.0.0.2-3) are configured, so always allowed
    data["domains"]["preflight_allow_networks"] = ["127.0.0.1/32", f"{EDGE}/32"]
    data["api"]["tokens_file"] = str(tmp_path / "tokens")
    (tmp_path / "tokens").write_text(f"platform {TOKEN}\n")
    data["monitor"] = {"interval": "24h", "jitter": "0s", "timeout": "5s"}
    data["alerts"] = {"group_window": "2s",  # the forwarder's 30 s cycle + a short digest
                      "notifiers": [{"type": "webhook", "url": webhook}, {"type": "log"}]}
    return write_config(tmp_path / "c.yaml", data)


async def _wait_failed(session, base: str, aliases, timeout: float = 60) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    bodies: dict[str, dict] = {}
    while time.monotonic() < deadline:
        for alias in aliases:
            async with session.get(f"{base}/api/v1/domains/{alias}", headers=H) as resp:
                bodies[alias] = await resp.json()
        if all(b.get("status") == "failed" for b in bodies.values()):
            return bodies
        await asyncio.sleep(0.3)
    raise AssertionError(f"not all failed: {bodies}")


async def _wait_notified(receiver: WebhookReceiver, aliases, timeout: float = 75) -> None:
    """The event forwarder runs every 30 s: wait for one issue.failed notice per alias."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent = {n.get("certificate") for n in receiver.notices if n.get("event") == "issue.failed"}
        if set(aliases) <= sent:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no notice for every alias: {receiver.bodies}")


def _leaks(secret: str, text: str) -> list[str]:
    """The parts of ``secret`` found in ``text`` (whole, its random half; any case)."""
    text = text.lower()
    return [part for part in (secret, secret[-16:], secret[-8:]) if part.lower() in text]


def _store_bytes(state_dir: Path) -> str:
    """Every file certd keeps (SQLite database, WAL: the event log and alias states)."""
    return "\n".join(p.read_bytes().decode("latin-1") for p in state_dir.rglob("*")
                     if p.is_file())


async def test_preflight_ssrf_leaks_nothing(lab, tmp_path):
    secret = "INTERNAL-SECRET-" + secrets.token_hex(8)
    aliases = {alias: why.replace("PORT", str(lab.http_port)) for alias, why in ALIASES.items()}
    internal = await Server(INTERNAL, lab.http_port, lambda host, path: _response(
        "200 OK", {"Server": secret}, (secret + "\n").encode())).start()
    edge = await Server(EDGE, lab.http_port, _edge_answer(secret)).start()
    receiver = await WebhookReceiver().start()
    cfg = _config(lab, tmp_path, receiver.url)
    base = "http://" + yaml.safe_load(cfg.read_text())["api"]["listen"]
    _set_dns(lab, secret)
    daemon = None
    try:
        daemon = Daemon(cfg, tmp_path / "certd.log")
        await asyncio.to_thread(daemon.wait_log, "api listening")
        async with aiohttp.ClientSession() as session:
            for alias in aliases:
                async with session.post(f"{base}/api/v1/domains", json={"domain": alias},
                                        headers=H) as resp:
                    assert resp.status == 202, await resp.text()
            bodies = await _wait_failed(session, base, aliases)
            await _wait_notified(receiver, aliases)
            async with session.get(f"{base}/api/v1/domains", headers=H) as resp:
                listing = await resp.text()
            async with session.get(f"{base}/api/v1/alerts", headers=H) as resp:
                alerts = await resp.text()
    finally:
        _clear_dns(lab)
        if daemon is not None:
            assert daemon.stop() == 0, daemon.log()[-3000:]
        await receiver.stop()
        await edge.stop()
        await internal.stop()

    # no byte of the secret anywhere certd writes or answers
    status = await asyncio.to_thread(run_certd, cfg, "status", "--json", timeout=60)
    assert status.returncode == 0, status.stderr
    surfaces = {
        "GET /api/v1/domains/{d}": json.dumps(bodies),
        "GET /api/v1/domains": listing,
        "GET /api/v1/alerts": alerts,
        "certd status --json": status.stdout + status.stderr,
        "store files": _store_bytes(tmp_path / "state"),
        "daemon log": daemon.log(),
        "webhook payloads": json.dumps(receiver.bodies),
    }
    assert {name: _leaks(secret, text) for name, text in surfaces.items()
            if _leaks(secret, text)} == {}
    # every alias failed for the right reason, in fixed words
    for alias, why in aliases.items():
        assert bodies[alias]["last_error"].startswith(why), bodies[alias]
    # the tenant's server was asked (that is the validation path) but the internal one never
    assert internal.requests == []
    assert {host for host, _ in edge.requests} == {
        "ssrf-redirect-ip.test", "ssrf-redirect-name.test", "ssrf-body.test"}
    assert "Traceback" not in daemon.log()

