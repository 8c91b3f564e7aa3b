"""The CLI as an operator runs it, against the lab: renew, status, deploy, with and without a
running daemon, and a daemon with no reachable CA."""

from __future__ import annotations

import json

import pytest

from tests.certd_lab import Daemon, lab_config_data, write_config
from tests.certd_lab import run_certd as certd
from tests.lab import free_port

pytestmark = pytest.mark.lab


def _status(config_path) -> dict:
    out = certd(config_path, "status", "--json")
    assert out.returncode == 0, out.stderr
    return {row["name"]: row for row in json.loads(out.stdout)}


def test_renew_status_deploy_cli(lab, tmp_path):
    lab.set_sites({"cli": ["cli.test"]})
    cfg = write_config(tmp_path / "c.yaml", lab_config_data(
        lab, tmp_path / "state", [{"name": "cli", "domains": ["cli.test"], "frontends": ["web"]}]))

    assert _status(cfg)["cli"]["status"] == "pending"
    out = certd(cfg, "renew", "cli")
    assert out.returncode == 0, out.stderr
    row = _status(cfg)["cli"]
    assert row["serial"] and row["deployed_nodes"] == ["web/fe1", "web/fe2"]
    assert row["status"] == "deployed" and 0 < row["days_left"]
    for node in lab.nodes:
        lab.wait_served_serial(node.name, "cli.test", int(row["serial"], 16))

    orders = lab.pebble.count_new_orders()
    again = certd(cfg, "renew", "cli")  # still valid: no order
    assert again.returncode == 0 and row["serial"] in again.stdout
    assert lab.pebble.count_new_orders() == orders

    forced = certd(cfg, "renew", "cli", "--force")
    assert forced.returncode == 0, forced.stderr
    new_serial = _status(cfg)["cli"]["serial"]
    assert new_serial != row["serial"] and lab.pebble.count_new_orders() == orders + 1
    lab.wait_served_serial("fe2", "cli.test", int(new_serial, 16))

    deployed = certd(cfg, "deploy", "cli")
    assert deployed.returncode == 0 and deployed.stdout.count(": ok:") == 2

    table = certd(cfg, "status")
    assert table.returncode == 0 and "cli" in table.stdout and new_serial[:16] in table.stdout

    unknown = certd(cfg, "renew", "nope")
    assert unknown.returncode == 1 and "unknown certificate nope" in unknown.stderr


def test_cli_renew_while_daemon_holds_the_listener(lab, tmp_path):
    lab.set_sites({"shared": ["shared.test"]})
    cfg = write_config(tmp_path / "c.yaml", lab_config_data(
        lab, tmp_path / "state",
        [{"name": "shared", "domains": ["shared.test"], "frontends": ["web"]}]))
    daemon = Daemon(cfg, tmp_path / "certd.log")
    try:
        daemon.wait_log("sweep done")
        first = _status(cfg)["shared"]["serial"]
        out = certd(cfg, "renew", "shared", "--force")
        assert out.returncode == 0, out.stderr
        assert "relying on the running daemon" in out.stderr
        second = _status(cfg)["shared"]["serial"]
        assert second != first
        lab.wait_served_serial("fe1", "shared.test", int(second, 16))
    finally:
        assert daemon.stop() == 0


def test_daemon_starts_and_stays_up_without_a_ca(tmp_path):
    port = free_port()  # nothing listens there
    data = {
        "state_dir": str(tmp_path / "state"),
        "acme": {"directory": f"https://127.0.0.1:{port}/dir", "timeout": "2s"},
        "challenge": {"listen": f"127.0.0.1:{free_port()}"},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "frontends": {"web": {"nodes": [{"name": "fe1", "address": "127.0.0.2"}],
                              "deployer": {"type": "file", "path": str(tmp_path) + "/{node}"}}},
        "certificates": [{"name": "x", "domains": ["x.test"], "frontends": ["web"]}],
    }
    cfg = write_config(tmp_path / "c.yaml", data)
    daemon = Daemon(cfg, tmp_path / "certd.log")
    try:
        daemon.wait_log("sweep done")
        assert daemon.alive()
        row = _status(cfg)["x"]
        assert f"GET https://127.0.0.1:{port}/dir" in row["last_error"]
        assert "Connect" in row["last_error"]
        assert row["status"] == "failed" and row["attempts"] == 1 and row["next_attempt_at"]
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()
