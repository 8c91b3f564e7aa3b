"""The Salt deployer against real salt-master, salt-api and two minions (one per frontend node,
each seeing its own node's directory at the same path): push + reload + verify, a failing check
on one node rolls back there only, a stopped minion fails alone, a bad password fails cleanly."""

from __future__ import annotations

import asyncio

import pytest

from certd import config as configuration
from certd.app import challenge_listener, open_certd
from tests.certd_lab import lab_config_data, served_serial

pytestmark = pytest.mark.lab


def salt_config(lab, salt_lab, tmp_path, name, *, password_file=None, check=None, timeout="10s"):
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": name, "domains": [f"{name}.test"], "frontends": ["web"]}])
    web = data["frontends"]["web"]
    web["deployer"] = {
        "type": "salt", "url": salt_lab.api_url, "username": salt_lab.username,
        "password_file": str(password_file or salt_lab.password_file),
        "eauth": salt_lab.eauth, "path": salt_lab.deploy_path_template, "timeout": timeout,
    }
    web["reload"] = salt_lab.reload_command
    web["verify_timeout"] = "5s"
    if check:
        web["check"] = check
    return configuration.parse(data)


def served(lab, node, name) -> str:
    return served_serial(lab, node, f"{name}.test")


async def _issue(certd, name):
    cert = await certd.renew(name, force=True)
    return cert, {r.target.node: r for r in await certd.deploy(name)}


async def test_push_reload_verify_and_one_failing_node(lab, salt_lab, tmp_path):
    lab.set_sites({"salted": ["salted.test"]})
    cfg = salt_config(lab, salt_lab, tmp_path, "salted")
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        old, results = await _issue(certd, "salted")
    assert all(r.ok for r in results.values()), [r.message for r in results.values()]
    for node in lab.nodes:
        assert served(lab, node.name, "salted") == old.serial
        d = lab.cert_dir(node.name, "salted")
        assert d.is_symlink() and (d / "privkey.pem").stat().st_mode & 0o777 == 0o600

    # fe1's "nginx -t" breaks: a marker only fe1's minion sees at the shared path
    marker = lab.cert_dir("fe1", "salted").parent / ".salt-check-fails"
    marker.write_text("")
    try:
        cfg = salt_config(lab, salt_lab, tmp_path, "salted",
                          check=f"test ! -e {salt_lab.node_root}/certs/.salt-check-fails")
        async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
            new, results = await _issue(certd, "salted")
            events = await certd.store.events(certificate="salted", kind="deploy.check")
    finally:
        marker.unlink()
    assert not results["fe1"].ok and results["fe1"].rolled_back, results["fe1"].message
    assert results["fe2"].ok
    assert served(lab, "fe1", "salted") == old.serial
    assert served(lab, "fe2", "salted") == new.serial
    assert events and events[0].node == "fe1"


async def test_stopped_minion_fails_alone(lab, salt_lab, tmp_path):
    lab.set_sites({"minion": ["minion.test"]})
    cfg = salt_config(lab, salt_lab, tmp_path, "minion", timeout="2s")
    await asyncio.to_thread(salt_lab.stop_minion, "fe2")
    try:
        async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
            cert, results = await _issue(certd, "minion")
    finally:
        await asyncio.to_thread(salt_lab.start_minion, "fe2")
    assert results["fe1"].ok and served(lab, "fe1", "minion") == cert.serial
    assert not results["fe2"].ok and results["fe2"].kind == "unreachable"
    assert "did not answer" in results["fe2"].message


async def test_bad_password_fails_cleanly(lab, salt_lab, tmp_path):
    lab.set_sites({"badpw": ["badpw.test"]})
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    cfg = salt_config(lab, salt_lab, tmp_path, "badpw", password_file=wrong)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        _, results = await _issue(certd, "badpw")
        events = await certd.store.events(certificate="badpw", kind="deploy.auth")
    assert all(not r.ok and r.kind == "auth" for r in results.values())
    assert all("login as" in r.message and "refused" in r.message for r in results.values())
    assert len(events) == 2
    assert not lab.cert_dir("fe1", "badpw").exists()
