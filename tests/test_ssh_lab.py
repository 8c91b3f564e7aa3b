"""The SSH deployer against real sshd (one per frontend node) and the lab's nginx: push, reload
over SSH, verify the served serial; host key mismatch; a failing node rolls back alone; a node
that was down catches up at the deploy sync; a failing canary stops a rolling deploy."""

from __future__ import annotations

import asyncio

import pytest

from certd import config as configuration
from certd.app import challenge_listener, open_certd
from certd.sweep import Sweeper
from tests.certd_lab import (
    deploy_past_a_planted_symlink,
    lab_config_data,
    served_serial,
    web_deployer,
)

pytestmark = pytest.mark.lab


def ssh_config(lab, ssh_nodes, tmp_path, name, *, known_hosts=None, check=None,
               strategy="parallel"):
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": name, "domains": [f"{name}.test"], "frontends": ["web"]}])
    port = next(iter(ssh_nodes.servers.values())).port
    web = data["frontends"]["web"]
    web["deployer"] = {
        "type": "ssh", "user": "root", "port": port, "key_file": str(ssh_nodes.key_file),
        "known_hosts": str(known_hosts or ssh_nodes.known_hosts),
        "path": lab.deploy_path_template, "strategy": strategy, "max_parallel": 1,
        "connect_timeout": "3s",
    }
    web["verify_timeout"] = "5s"
    if check:
        web["check"] = check
    return configuration.parse(data)


def served(lab, node, name) -> str:
    return served_serial(lab, node, f"{name}.test")


async def _issue(certd, name):
    cert = await certd.renew(name, force=True)
    return cert, await certd.deploy(name)


async def test_push_reload_and_verify_over_ssh(lab, ssh_nodes, tmp_path):
    lab.set_sites({"viassh": ["viassh.test"]})
    cfg = ssh_config(lab, ssh_nodes, tmp_path, "viassh")
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        cert, results = await _issue(certd, "viassh")
    assert [r.ok for r in results] == [True, True], [r.message for r in results]
    assert all("verified serving" in r.message for r in results)
    for node in lab.nodes:
        assert served(lab, node.name, "viassh") == cert.serial
        key = lab.cert_dir(node.name, "viassh") / "privkey.pem"
        assert key.stat().st_mode & 0o777 == 0o600
        assert lab.cert_dir(node.name, "viassh").is_symlink()


async def test_host_key_mismatch_refuses_the_push(lab, ssh_nodes, tmp_path):
    lab.set_sites({"hostkey": ["hostkey.test"]})
    wrong = ssh_nodes.wrong_node
    cfg = ssh_config(lab, ssh_nodes, tmp_path, "hostkey", known_hosts=ssh_nodes.wrong_known_hosts)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        cert, results = await _issue(certd, "hostkey")
        events = await certd.store.events(certificate="hostkey", kind="deploy.host_key")
    by_node = {r.target.node: r for r in results}
    assert not by_node[wrong].ok and "host key" in by_node[wrong].message
    assert not lab.cert_dir(wrong, "hostkey").exists()  # nothing written
    ok_node = next(n.name for n in lab.nodes if n.name != wrong)
    assert by_node[ok_node].ok and served(lab, ok_node, "hostkey") == cert.serial
    assert events and events[0].severity.value == "critical" and events[0].node == wrong


async def test_failing_node_rolls_back_alone(lab, ssh_nodes, tmp_path):
    lab.set_sites({"broken": ["broken.test"]})
    cfg = ssh_config(lab, ssh_nodes, tmp_path, "broken")
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        old, results = await _issue(certd, "broken")
        assert all(r.ok for r in results)
    # fe1's config "breaks": its check (think `nginx -t`) fails from now on
    cfg = ssh_config(lab, ssh_nodes, tmp_path, "broken", check="test {node} != fe1")
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        new, results = await _issue(certd, "broken")
        events = await certd.store.events(certificate="broken", kind="deploy.check")
        deployments = {d.node: d for d in await certd.store.deployments("broken")}
    by_node = {r.target.node: r for r in results}
    assert not by_node["fe1"].ok and by_node["fe1"].rolled_back
    assert by_node["fe2"].ok
    assert served(lab, "fe1", "broken") == old.serial  # kept serving the old one
    assert served(lab, "fe2", "broken") == new.serial
    assert events and events[0].node == "fe1"
    assert deployments["fe1"].serial == old.serial and deployments["fe2"].serial == new.serial


async def test_node_down_catches_up_at_deploy_sync(lab, ssh_nodes, tmp_path):
    lab.set_sites({"downed": ["downed.test"]})
    cfg = ssh_config(lab, ssh_nodes, tmp_path, "downed")
    await asyncio.to_thread(ssh_nodes.stop, "fe2")
    try:
        async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
            cert, results = await _issue(certd, "downed")
            by_node = {r.target.node: r for r in results}
            assert by_node["fe1"].ok and not by_node["fe2"].ok
            assert by_node["fe2"].kind == "unreachable"
            assert served(lab, "fe1", "downed") == cert.serial
            assert served(lab, "fe2", "downed") != cert.serial
            await asyncio.to_thread(ssh_nodes.start, "fe2")
            await Sweeper(certd).deploy_sync()
            deployments = {d.node: d for d in await certd.store.deployments("downed")}
    finally:
        if not ssh_nodes.server("fe2").alive():
            await asyncio.to_thread(ssh_nodes.start, "fe2")
    assert served(lab, "fe2", "downed") == cert.serial
    assert {d.serial for d in deployments.values()} == {cert.serial}


async def test_failing_canary_leaves_the_others_untouched(lab, ssh_nodes, tmp_path):
    lab.set_sites({"canary": ["canary.test"]})
    cfg = ssh_config(lab, ssh_nodes, tmp_path, "canary", strategy="rolling")
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        old, results = await _issue(certd, "canary")
        assert all(r.ok for r in results)
    cfg = ssh_config(lab, ssh_nodes, tmp_path, "canary", strategy="rolling",
                     check="test {node} != fe1")
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        new, results = await _issue(certd, "canary")
        stopped = await certd.store.events(certificate="canary", kind="deploy.stopped")
    assert [r.target.node for r in results] == ["fe1"] and not results[0].ok
    assert served(lab, "fe1", "canary") == old.serial
    assert served(lab, "fe2", "canary") == old.serial  # never touched
    versions = lab.cert_dir("fe2", "canary").parent / ".canary.d"
    assert new.serial not in {p.name for p in versions.iterdir()}
    assert stopped and stopped[0].data["untouched"] == ["fe2"]



# --- issue 10: removal touches only certd's files; a planted symlink is refused ---------------

async def test_ssh_remove_leaves_operator_files_alone(lab, ssh_nodes, tmp_path):
    """fe1 holds an operator's directory at the path, fe2 a symlink to one: certd never
    deployed there, so removal over SFTP leaves both (and what they point at) alone."""
    from certd.deployers.base import LEFT_ALONE

    cfg = ssh_config(lab, ssh_nodes, tmp_path, "opfiles")
    deployer, chosen = web_deployer(cfg, "opfiles")
    for node in lab.nodes:
        own = lab.cert_dir(node.name, "opfiles-own")
        own.mkdir(parents=True, exist_ok=True)
        (own / "site.conf").write_text(f"{node.name}'s\n")
    lab.cert_dir("fe1", "opfiles").mkdir(exist_ok=True)
    (lab.cert_dir("fe1", "opfiles") / "site.conf").write_text("fe1's\n")
    lab.cert_dir("fe2", "opfiles").symlink_to("opfiles-own")
    try:
        results = {r.target.node: r for r in await deployer.remove(chosen)}
    finally:
        await deployer.close()
    assert all(r.ok and r.kind == LEFT_ALONE for r in results.values()), results
    assert "is a directory certd did not make" in results["fe1"].message
    assert "is a symlink certd did not make" in results["fe2"].message
    assert (lab.cert_dir("fe1", "opfiles") / "site.conf").read_text() == "fe1's\n"
    assert lab.cert_dir("fe2", "opfiles").is_symlink()
    for node in lab.nodes:
        assert (lab.cert_dir(node.name, "opfiles-own") / "site.conf").read_text() == \
            f"{node.name}'s\n"


async def test_ssh_refuses_a_symlinked_versions_dir(lab, ssh_nodes, tmp_path):
    """`.planted.d -> ../victim` on fe1: refused before anything is written; fe2 deploys."""
    import os

    cfg = ssh_config(lab, ssh_nodes, tmp_path, "planted")
    deployer, chosen = web_deployer(cfg, "planted")
    results, certs, victim = await deploy_past_a_planted_symlink(lab, deployer, chosen, "planted")
    assert not results["fe1"].ok and results["fe1"].kind == "refused"
    assert results["fe1"].message == (f"ssh[fe1]: {certs}/.planted.d is a symlink; "
                                      "refusing to write keys through it")
    assert os.listdir(victim) == ["precious.txt"] and victim.stat().st_mode & 0o777 == 0o755
    assert not lab.cert_dir("fe1", "planted").exists()
    assert results["fe2"].ok, results["fe2"].message
