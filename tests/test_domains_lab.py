"""Aliases end to end in the lab: POST -> issued by pebble through the frontends, deployed and
verified on both nodes; DELETE -> files gone from both nodes, the name no longer served."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from certd import config as configuration
from certd.api import app as api
from certd.api.tokens import parse
from certd.app import challenge_listener, open_certd
from tests.certd_lab import lab_config_data, served_serial

pytestmark = pytest.mark.lab
TOKEN = "lab-alias-token-0123456789"
H = {"Authorization": f"Bearer {TOKEN}"}


async def _until(client, url, predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = await client.get(url, headers=H)
        body = await resp.json()
        if predicate(resp.status, body):
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url}: last answer {resp.status} {body}")


async def test_alias_added_deployed_then_removed(lab, tmp_path):
    domain = "customer-alias.test"
    lab.set_sites({domain: [domain]})
    data = lab_config_data(lab, tmp_path / "state", [])
    data["domains"]["default_frontends"] = ["web"]
    cfg = configuration.parse(data)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        app = api.build_app(certd, parse(f"platform {TOKEN}\n", "tokens"))
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/api/v1/domains", json={"domain": domain}, headers=H)
            assert resp.status == 202
            body = await _until(client, f"/api/v1/domains/{domain}",
                                lambda s, b: b.get("status") in ("deployed", "failed"))
            assert body["status"] == "deployed", body
            serial = body["certificate"]["serial"]
            assert {(d["node"], d["serial"], d["status"]) for d in body["deployments"]} == {
                ("fe1", serial, "deployed"), ("fe2", serial, "deployed")}
            for node in lab.nodes:
                assert served_serial(lab, node.name, domain) == serial

            assert lab.pebble.certificate_status(serial)["Status"] == "Valid"

            resp = await client.delete(f"/api/v1/domains/{domain}?revoke=true", headers=H)
            assert resp.status == 202
            assert await resp.json() == {"domain": domain, "status": "removing", "revoke": True}
            await _until(client, f"/api/v1/domains/{domain}", lambda s, b: s == 404)
            events = await certd.store.events(certificate=domain)
    assert {"api.domain.add", "api.domain.remove", "remove.ok", "revoke.ok"} <= {
        e.kind for e in events}
    assert lab.pebble.certificate_status(serial)["Status"] == "Revoked"
    for node in lab.nodes:
        assert not lab.cert_dir(node.name, domain).exists()
        assert not (lab.cert_dir(node.name, domain).parent / f".{domain}.d").exists()
        assert served_serial(lab, node.name, domain) == ""
    assert domain not in {s.name for s in certd.specs()}


def test_domains_cli_against_the_daemon(lab, tmp_path):
    import json
    from functools import partial

    from tests.certd_lab import Daemon, run_certd, write_config

    domain = "cli-alias.test"
    lab.set_sites({domain: [domain]})
    data = lab_config_data(lab, tmp_path / "state", [])
    data["domains"]["default_frontends"] = ["web"]
    data["api"]["tokens_file"] = str(tmp_path / "tokens")
    (tmp_path / "tokens").write_text(f"platform {TOKEN}\n")
    cfg = write_config(tmp_path / "c.yaml", data)

    certd = partial(run_certd, cfg, "domains")  # certd -c cfg domains ...

    daemon = Daemon(cfg, tmp_path / "certd.log")
    try:
        daemon.wait_log("api listening")
        added = certd("add", domain, "--wait")
        assert added.returncode == 0, added.stderr
        assert "deployed, serial" in added.stdout
        listed = json.loads(certd("list", "--json").stdout)
        assert [d["domain"] for d in listed] == [domain] and listed[0]["status"] == "deployed"
        assert json.loads(certd("show", domain).stdout)["domain"] == domain
        bad = certd("add", "*.wild.test")
        assert bad.returncode == 1 and "wildcard" in bad.stderr
        wrong = certd("list", env={"CERTD_API_TOKEN": "wrong-token-wrong-token"})
        assert wrong.returncode == 1 and "unauthorized" in wrong.stderr
        removed = certd("remove", domain)
        assert removed.returncode == 0
        deadline = time.monotonic() + 30
        while certd("show", domain).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert certd("show", domain).returncode == 1
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("breakage", ["dns", "caa"])
async def test_preflight_failure_sends_nothing_to_the_ca(lab, tmp_path, breakage):
    domain = f"preflight-{breakage}.test"
    lab.set_sites({domain: [domain]})
    if breakage == "dns":
        lab.add_a(domain, "127.0.0.9")  # nothing serves there
    else:
        lab.add_caa(domain, [("issue", "otherca.example")])
    data = lab_config_data(lab, tmp_path / "state", [])
    data["domains"]["default_frontends"] = ["web"]
    cfg = configuration.parse(data)
    orders = lab.pebble.count_new_orders()
    try:
        async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
            app = api.build_app(certd, parse(f"platform {TOKEN}\n", "tokens"))
            async with TestClient(TestServer(app)) as client:
                resp = await client.post("/api/v1/domains", json={"domain": domain}, headers=H)
                assert resp.status == 202
                body = await _until(client, f"/api/v1/domains/{domain}",
                                    lambda s, b: b.get("status") == "failed")
    finally:
        lab.clear_a(domain) if breakage == "dns" else lab.clear_caa(domain)
    assert body["last_error"].startswith(f"preflight[{domain}]:")
    assert ("CAA" in body["last_error"]) == (breakage == "caa")
    assert body["next_attempt_at"] is not None
    assert lab.pebble.count_new_orders() == orders  # nothing reached the CA


def test_delete_leaves_operator_files_at_the_alias_path(lab, tmp_path):
    """Issue 10 finding 2, against a running daemon: an alias whose rendered path names an
    operator's directory (think `conf.d`) or file (`openssl.cnf`) on every node, never deployed
    by certd (its preflight fails), is added and deleted through the API; every node keeps
    the operator's files, nothing is reloaded, and the alias is forgotten."""
    import aiohttp

    from tests.certd_lab import Daemon, write_config

    directory, file = "conf.d.test", "openssl.cnf.test"  # names the policy accepts
    operator = {}
    for node in lab.nodes:
        conf = lab.cert_dir(node.name, directory)
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "site.conf").write_text(f"# {node.name}'s own config\n")
        cnf = lab.cert_dir(node.name, file)
        cnf.write_text("[req]\ndistinguished_name = dn\n")
        operator[conf / "site.conf"] = (conf / "site.conf").read_text()
        operator[cnf] = cnf.read_text()
    data = lab_config_data(lab, tmp_path / "state", [])
    data["domains"]["default_frontends"] = ["web"]
    data["api"]["tokens_file"] = str(tmp_path / "tokens")
    (tmp_path / "tokens").write_text(f"platform {TOKEN}\n")
    api_url = f"http://{data['api']['listen']}/api/v1/domains"

    def reloads(node: str) -> int:
        return sum("SIGHUP" in line for line in lab.error_log(node))

    reloads_before = {n.name: reloads(n.name) for n in lab.nodes}
    for name in (directory, file):
        lab.add_a(name, "127.0.0.9")  # nothing serves there: preflight fails, nothing issued
    daemon = Daemon(write_config(tmp_path / "c.yaml", data), tmp_path / "certd.log")

    async def drive():
        async with aiohttp.ClientSession(headers=H) as http:
            async def until(name, predicate):
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    async with http.get(f"{api_url}/{name}") as resp:
                        body = await resp.json() if resp.status == 200 else {}
                        if predicate(resp.status, body):
                            return body
                    await asyncio.sleep(0.2)
                raise AssertionError(f"{name}: last answer {resp.status} {body}")

            for name in (directory, file):
                async with http.post(api_url, json={"domain": name}) as resp:
                    assert resp.status == 202, await resp.text()
                await until(name, lambda s, b: b.get("status") == "failed")
            for name in (directory, file):
                async with http.delete(f"{api_url}/{name}") as resp:
                    assert resp.status == 202, await resp.text()
                await until(name, lambda s, b: s == 404)

    try:
        daemon.wait_log("api listening")
        asyncio.run(drive())
    finally:
        for name in (directory, file):
            lab.clear_a(name)
        assert daemon.stop() == 0
    for path, content in operator.items():
        assert path.read_text() == content, f"{path} changed"
    for node in lab.nodes:
        assert lab.cert_dir(node.name, directory).is_dir()
        assert not lab.cert_dir(node.name, directory).is_symlink()
        assert reloads(node.name) == reloads_before[node.name]
    events = asyncio.run(_events(tmp_path / "state", directory))
    removed = [e.message for e in events if e.kind == "remove.ok"]
    assert sorted(removed) == sorted(f"file[{n.name}]: nothing deployed by certd here; "
                                     f"{lab.cert_dir(n.name, directory)} left alone"
                                     for n in lab.nodes)


async def _events(state_dir, name):
    from certd.store.sqlite import SqliteStore

    store = SqliteStore(state_dir / "certd.db")
    await store.open()
    try:
        return await store.events(certificate=name)
    finally:
        await store.close()
