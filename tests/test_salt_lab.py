"""The Salt deployer against real salt-master, salt-api and two minions (one per frontend node,
each seeing its own node's directory at the same path): push + reload + verify, a failing check
on one node rolls back there only, a stopped minion fails alone, a bad password fails cleanly."""

from __future__ import annotations

import asyncio

import pytest

from certd import config as configuration
from certd.app import challenge_listener, open_certd
from tests.certd_lab import (
    deploy_past_a_planted_symlink,
    lab_config_data,
    served_serial,
    web_deployer,
)

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



# --- issue 10: removal touches only certd's files; a planted symlink is refused ---------------

async def test_salt_remove_leaves_operator_files_alone(lab, salt_lab, tmp_path):
    """fe1: an operator's directory at the path; fe2: a file. Never certd's: the minions'
    removal script leaves both alone and does not reload."""
    from certd.deployers.base import LEFT_ALONE

    cfg = salt_config(lab, salt_lab, tmp_path, "saltop")
    deployer, chosen = web_deployer(cfg, "saltop")
    lab.cert_dir("fe1", "saltop").mkdir(parents=True, exist_ok=True)
    (lab.cert_dir("fe1", "saltop") / "site.conf").write_text("fe1's\n")
    lab.cert_dir("fe2", "saltop").write_text("[req]\n")

    def hups(node):
        return sum("SIGHUP" in line for line in lab.error_log(node))

    before = {n.name: hups(n.name) for n in lab.nodes}
    try:
        results = {r.target.node: r for r in await deployer.remove(chosen)}
    finally:
        await deployer.close()
    assert all(r.ok and r.kind == LEFT_ALONE for r in results.values()), results
    where = f"{salt_lab.node_root}/certs/saltop"
    assert results["fe1"].message == (f"salt[fe1]: nothing of certd's at {where}; "
                                      f"left alone: {where} is a directory certd did not make")
    assert "is a file certd did not make" in results["fe2"].message
    assert (lab.cert_dir("fe1", "saltop") / "site.conf").read_text() == "fe1's\n"
    assert lab.cert_dir("fe2", "saltop").read_text() == "[req]\n"
    assert {n.name: hups(n.name) for n in lab.nodes} == before


async def test_salt_refuses_a_symlinked_versions_dir(lab, salt_lab, tmp_path):
    """`.saltplant.d -> ../victim` on fe1: the guard state fails before any file.managed
    runs, so nothing lands in the victim; fe2 deploys."""
    import os

    cfg = salt_config(lab, salt_lab, tmp_path, "saltplant")
    deployer, chosen = web_deployer(cfg, "saltplant")
    results, _, victim = await deploy_past_a_planted_symlink(lab, deployer, chosen, "saltplant")
    assert not results["fe1"].ok and results["fe1"].kind == "refused", results["fe1"]
    assert results["fe1"].message == (
        f"salt[fe1]: {salt_lab.node_root}/certs/.saltplant.d is a symlink; "
        "refusing to write keys through it")
    assert os.listdir(victim) == ["precious.txt"] and victim.stat().st_mode & 0o777 == 0o755
    assert not lab.cert_dir("fe1", "saltplant").exists()
    assert results["fe2"].ok, results["fe2"].message
    assert (lab.cert_dir("fe2", "saltplant").parent / ".saltplant.d" / ".certd").read_text() \
        == "managed by certd; certificate saltplant\n"
