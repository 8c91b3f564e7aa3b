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
    data["domains"] = {"default_frontends": ["web"]}
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

            resp = await client.delete(f"/api/v1/domains/{domain}", headers=H)
            assert resp.status == 202
            await _until(client, f"/api/v1/domains/{domain}", lambda s, b: s == 404)
            events = await certd.store.events(certificate=domain)
    assert {"api.domain.add", "api.domain.remove", "remove.ok"} <= {e.kind for e in events}
    for node in lab.nodes:
        assert not lab.cert_dir(node.name, domain).exists()
        assert not (lab.cert_dir(node.name, domain).parent / f".{domain}.d").exists()
        assert served_serial(lab, node.name, domain) == ""
    assert domain not in {s.name for s in certd.specs()}
