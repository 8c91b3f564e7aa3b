"""SIGHUP re-reads the config (issue 12, item 3), against a running `certd run`, the lab's
pebble and its two nginx nodes: a certificate added to the config is issued and served with
no restart (same PID) while a client polling the challenge listener never sees a refused
connection; a broken config, or one changing what needs a restart, leaves the running
config in force, with the reason logged and recorded; the API tokens file is re-read."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading

import pytest
import yaml

from certd.config import split_listen
from tests.certd_lab import Daemon, lab_config_data, poll, run_certd, write_config
from tests.lab import free_port

pytestmark = pytest.mark.lab


class ChallengePoller:
    """Asks the challenge listener for a token over and over (a new connection each time)
    until stopped; counts answers and connection failures."""

    def __init__(self, listen: str):
        self.host, self.port = split_listen(listen)
        self.answers = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                conn.request("GET", "/.well-known/acme-challenge/reload-probe")
                conn.getresponse().read()
                self.answers += 1
            except OSError as exc:
                self.failures.append(repr(exc))
            finally:
                conn.close()

    def __enter__(self) -> ChallengePoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def events(cfg_path, kind: str) -> list[dict]:
    """The daemon's recorded events of `kind` (read through the store file, like status)."""
    import sqlite3

    data = yaml.safe_load(cfg_path.read_text())
    db = sqlite3.connect(f"file:{data['state_dir']}/certd.db?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT message FROM events WHERE kind = ? ORDER BY id",
                          (kind,)).fetchall()
    finally:
        db.close()
    return [{"message": m} for (m,) in rows]


def status(cfg_path) -> dict[str, dict]:
    out = run_certd(cfg_path, "status", "--json")
    assert out.returncode == 0, out.stderr
    return {row["name"]: row for row in json.loads(out.stdout)}


@pytest.fixture
def running(lab, tmp_path):
    lab.set_sites({"first": ["first.test"], "added": ["added.test"]})
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": "first", "domains": ["first.test"], "frontends": ["web"]}])
    data["api"]["tokens_file"] = str(tmp_path / "tokens")
    (tmp_path / "tokens").write_text("ops " + "a" * 40 + "\n")
    os.chmod(tmp_path / "tokens", 0o600)
    cfg = write_config(tmp_path / "c.yaml", data)
    daemon = Daemon(cfg, tmp_path / "certd.log")
    try:
        daemon.wait_log("sweep done")
        yield cfg, data, daemon
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()


def test_sighup_adds_a_certificate_without_a_restart(lab, running):
    cfg, data, daemon = running
    pid = daemon.proc.pid
    assert status(cfg)["first"]["status"] == "deployed"
    data["certificates"].append({"name": "added", "domains": ["added.test"],
                                 "frontends": ["web"]})
    write_config(cfg, data)
    with ChallengePoller(data["challenge"]["listen"]) as poller:
        out = run_certd(cfg, "reload")  # SIGHUP through the pid file, then the verdict
        assert out.returncode == 0, out.stderr
        assert "config reloaded: 1 certificate(s) added (added)" in out.stdout
        row = poll(lambda: (r := status(cfg).get("added")) and r["status"] == "deployed"
                   and r, timeout=60)
        for node in ("fe1", "fe2"):
            lab.wait_served_serial(node, "added.test", int(row["serial"], 16))
    assert daemon.alive() and daemon.proc.pid == pid
    assert poller.answers > 10 and poller.failures == []
    assert status(cfg)["first"]["status"] == "deployed"


def test_a_broken_config_keeps_the_running_one(lab, running, tmp_path):
    cfg, data, daemon = running
    good = cfg.read_text()
    same = tmp_path / "same.yaml"  # the running config, for `certd status`
    same.write_text(good)
    cfg.write_text(good + "renewal: {before_expiry: soon}\n")
    # `certd reload` checks the file first and signals nothing
    out = run_certd(cfg, "reload")
    assert out.returncode == 2 and "renewal.before_expiry" in out.stderr
    assert events(cfg, "config.reload_failed") == []
    # a SIGHUP from elsewhere (systemctl reload): the daemon refuses it and says why
    os.kill(daemon.proc.pid, signal.SIGHUP)
    failed = poll(lambda: events(cfg, "config.reload_failed"), timeout=20)
    assert "renewal.before_expiry" in failed[0]["message"]
    assert "the running config is kept" in failed[0]["message"]
    daemon.wait_log("config reload refused")
    assert daemon.alive()
    assert status(same)["first"]["status"] == "deployed"

    # a change only a restart can apply: refused, named
    changed = dict(data, api={**data["api"], "listen": f"127.0.0.1:{free_port()}"})
    write_config(cfg, changed)
    out = run_certd(cfg, "reload")
    assert out.returncode == 1, out.stdout
    assert "api.listen: changing it needs a restart" in out.stderr

    cfg.write_text(good)  # and a good one is taken again
    out = run_certd(cfg, "reload")
    assert out.returncode == 0 and "config reloaded: no change" in out.stdout, out.stderr


def test_sighup_rereads_the_api_tokens(running, tmp_path):
    cfg, data, daemon = running
    host, port = split_listen(data["api"]["listen"])

    def answer(token: str) -> int:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("GET", "/api/v1/certificates",
                         headers={"Authorization": f"Bearer {token}"})
            return conn.getresponse().status
        finally:
            conn.close()

    old, new = "a" * 40, "b" * 40
    assert answer(old) == 200 and answer(new) == 401
    (tmp_path / "tokens").write_text(f"ops {new}\n")
    out = run_certd(cfg, "reload")
    assert out.returncode == 0, out.stderr
    assert answer(new) == 200 and answer(old) == 401


def test_reload_without_a_daemon_says_so(lab, tmp_path):
    data = lab_config_data(lab, tmp_path / "state", [])
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "certd.pid").write_text(f"{os.getpid()}\n")  # not `certd run`
    out = run_certd(write_config(tmp_path / "c.yaml", data), "reload")
    assert out.returncode == 1
    assert "no running daemon found" in out.stderr and "systemctl reload certd" in out.stderr
