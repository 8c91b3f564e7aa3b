"""API worker processes (`api.workers`, certd/workers.py) under a real `certd run`: every
worker answers, a killed worker is replaced while the API keeps answering, the workers stop
with the daemon (and die with it), a POST through a worker leads to one order made by the main
process; /healthz answers 503 with a fixed body when the store cannot be reached."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from certd.api import app as api
from certd.api.jobs import decode, encode
from certd.errors import StoreError
from tests.certd_api import api_client, api_config, api_config_data
from tests.certd_lab import Daemon, lab_config_data, write_config
from tests.lab.procs import free_port, wait_until

TOKEN = "workers-token-0123456789"
H = {"Authorization": f"Bearer {TOKEN}"}


def _get(base: str, path: str, timeout: float = 5) -> tuple[int, dict]:
    request = urllib.request.Request(base + path, headers=H)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _post(base: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={**H, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _pids_seen(base: str, want: int, timeout: float = 30) -> set[int]:
    """The worker PIDs that answered /healthz, asking 16 at a time until `want` distinct ones
    answered (the kernel hands a connection to whichever worker is waiting in accept)."""
    seen: set[int] = set()

    def enough() -> bool:
        with ThreadPoolExecutor(16) as pool:
            for status, body in pool.map(lambda _: _get(base, "/healthz"), range(32)):
                assert status == 200, body
                seen.add(body["pid"])
        return len(seen) >= want

    wait_until(enough, timeout, what=f"{want} distinct API workers to answer")
    return seen


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _start(tmp_path: Path, data: dict, workers: int) -> tuple[Daemon, str]:
    api_port = free_port()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"platform {TOKEN}\n")
    tokens.chmod(0o600)
    data["api"] = {"listen": f"127.0.0.1:{api_port}", "workers": workers,
                   "tokens_file": str(tokens)}
    data.setdefault("challenge", {"listen": f"127.0.0.1:{free_port()}"})
    daemon = Daemon(write_config(tmp_path / "c.yaml", data), tmp_path / "certd.log")
    daemon.wait_log("api listening")
    return daemon, f"http://127.0.0.1:{api_port}"


def test_every_worker_answers_a_killed_one_is_replaced_all_stop_with_the_daemon(tmp_path):
    data = api_config_data(tmp_path, renewal={"sweep_interval": "24h"})
    daemon, base = _start(tmp_path, data, workers=2)
    pids: set[int] = set()
    try:
        first = _pids_seen(base, 2)
        assert daemon.proc.pid not in first  # the main process does not serve the API
        pids |= first
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        daemon.wait_log("exited (signal SIGKILL); starting another")
        # the API keeps answering meanwhile, and a new worker joins the survivor
        now = _pids_seen(base, 2)
        pids |= now
        assert victim not in now and len(now) == 2 and now & first
        status, body = _get(base, "/api/v1/domains")
        assert status == 200 and body["items"] == []
        # /metrics through a worker is the main process's (its sweep, its challenge counters)
        request = urllib.request.Request(base + "/metrics", headers=H)
        with urllib.request.urlopen(request, timeout=15) as r:
            text = r.read().decode()
        assert "certd_last_sweep_timestamp_seconds" in text
        assert "certd_challenge_requests" in text
    finally:
        assert daemon.stop() == 0
    wait_until(lambda: all(_gone(p) for p in pids), 15, what="every worker gone")


def test_workers_die_with_a_killed_daemon(tmp_path):
    data = api_config_data(tmp_path, renewal={"sweep_interval": "24h"})
    daemon, base = _start(tmp_path, data, workers=2)
    try:
        pids = _pids_seen(base, 2)
    finally:
        daemon.kill9()
    wait_until(lambda: all(_gone(p) for p in pids), 15, what="workers gone with the daemon")


def test_jobs_are_one_line_each_and_refuse_other_lines():
    line = encode("issue", name="a.example")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == ("issue", {"name": "a.example"})
    for bad in (b"[]", b'{"op": "rm -rf", "name": "x"}', b'{"op": "issue"}', b"ready"):
        with pytest.raises(ValueError):
            decode(bad)


@pytest.mark.lab
def test_post_through_workers_is_issued_once_by_the_main_process(lab, tmp_path):
    domain = "worker-alias.test"
    lab.set_sites({domain: [domain]})
    data = lab_config_data(lab, tmp_path / "state", [])
    data["domains"]["default_frontends"] = ["web"]
    orders = lab.pebble.count_new_orders()
    daemon, base = _start(tmp_path, data, workers=2)
    try:
        workers = _pids_seen(base, 2)
        # the same POST from 8 clients at once, spread over the workers: one creates it
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _post(base, "/api/v1/domains",
                                                    {"domain": domain}), range(8)))
        assert sorted(s for s, _ in answers) == [200] * 7 + [202], answers
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = _get(base, f"/api/v1/domains/{domain}")
            if body.get("status") in ("deployed", "failed"):
                break
            time.sleep(0.2)
        assert body["status"] == "deployed", body
        time.sleep(1)  # a second order, if one were coming, would have started by now
        assert lab.pebble.count_new_orders() == orders + 1
        ordering = [line for line in daemon.log().splitlines()
                    if f"certificate[{domain}]: ordering" in line]
        assert len(ordering) == 1, ordering
        status, _ = _get(base, "/healthz")
        assert status == 200 and daemon.proc.pid not in workers
    finally:
        assert daemon.stop() == 0


async def test_healthz_is_503_with_a_fixed_body_when_the_store_fails(tmp_path, monkeypatch):
    cfg = api_config(tmp_path)
    from certd.api.tokens import parse
    async with api_client(cfg, parse(f"platform {TOKEN}\n", "tokens")) as client:
        resp = await client.get("/healthz")
        body = await resp.json()
        assert resp.status == 200 and body["store"] == "ok" and body["pid"] == os.getpid()
        assert body["worker"] is None

        async def broken(domain):
            raise StoreError("sqlite: database is locked")

        monkeypatch.setattr(client.certd.store, "get_alias", broken)
        resp = await client.get("/healthz")
        assert resp.status == 503 and await resp.read() == api.UNHEALTHY

        async def hangs(domain):
            await asyncio.sleep(60)

        monkeypatch.setattr(client.certd.store, "get_alias", hangs)
        monkeypatch.setattr(api, "HEALTH_TIMEOUT", 0.05)
        resp = await client.get("/healthz")
        assert resp.status == 503 and await resp.read() == api.UNHEALTHY


@pytest.mark.lab
def test_healthz_follows_a_postgresql_store_through_the_workers(tmp_path):
    """A real PostgreSQL (its own cluster: this test stops it) behind 2 API workers: 200 from
    both, 503 with the fixed body while the server is down, 200 again once it is back."""
    from tests.lab.postgres import PostgresCluster

    cluster = PostgresCluster.create().start()
    daemon = None
    try:
        db = cluster.database()
        data = api_config_data(tmp_path, renewal={"sweep_interval": "24h"},
                               storage=db.url, storage_password_file=str(db.password_file))
        daemon, base = _start(tmp_path, data, workers=2)
        _pids_seen(base, 2)
        cluster.stop()

        def unhealthy() -> bool:
            request = urllib.request.Request(base + "/healthz")
            try:
                urllib.request.urlopen(request, timeout=10).close()
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
                assert exc.read() == api.UNHEALTHY
                return True
            return False

        wait_until(lambda: all(unhealthy() for _ in range(8)), 30, interval=0.2,
                   what="/healthz to answer 503 from every worker")
        cluster.start()
        wait_until(lambda: all(_get(base, "/healthz")[0] == 200 for _ in range(8)), 60,
                   interval=0.2, what="/healthz to answer 200 again")
    finally:
        if daemon is not None:
            assert daemon.stop() == 0
        cluster.destroy()


def test_sighup_replaces_the_workers_one_by_one(tmp_path):
    data = api_config_data(tmp_path, renewal={"sweep_interval": "24h"})
    daemon, base = _start(tmp_path, data, workers=2)
    try:
        before = _pids_seen(base, 2)
        os.kill(daemon.proc.pid, signal.SIGHUP)
        daemon.wait_log("api workers restarted with the reloaded config")
        after = _pids_seen(base, 2)
        assert not before & after
        assert "exited (" not in daemon.log()  # replaced on purpose, not repaired
    finally:
        assert daemon.stop() == 0
