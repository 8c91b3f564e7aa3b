"""The batched rollout against the lab (pebble -> haproxy -> two nginx): hundreds of
certificates reach both nodes with a handful of reloads (counted by a wrapper around nginx's
own reload command); a set nginx refuses (`nginx -t`: key values mismatch) is isolated while
every other certificate of its batch is served; a group without `reload` (nginx reading the
certificate per handshake) still verifies."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from certd import config as configuration
from certd.app import challenge_listener, open_certd
from certd.model import DeployStatus
from tests.certd_lab import (
    Daemon,
    counted_reload,
    deployed_rows,
    lab_config_data,
    reloads_per_node,
    run_certd,
    served_serial,
    write_config,
)
from tests.lab.frontends import nginx_temp_paths, nginx_user

pytestmark = pytest.mark.lab
TOKEN = "lab-rollout-token-0123456789"
N = 200


def bulk_config(lab, tmp_path: Path, names: list[str], counter: Path) -> dict:
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": n, "domains": [f"{n}.test"], "frontends": ["web"]}
                            for n in names])
    data["frontends"]["web"]["reload"] = counted_reload(lab, counter)
    data["renewal"] = {"budget": {"orders_per_3h": 5000}}
    data["monitor"] = {"enabled": False}
    data["log_level"] = "info"
    return data


def assert_served(lab, serials: dict[str, str]) -> None:
    for node in lab.nodes:
        wrong = {n: s for n, s in serials.items()
                 if served_serial(lab, node.name, f"{n}.test") != s}
        assert not wrong, (node.name, len(wrong), sorted(wrong)[:5])


def stored_serials(database: Path) -> dict[str, str]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT name, serial FROM certificates c WHERE id = "
                               "(SELECT MAX(id) FROM certificates WHERE name = c.name)"))


def wait_deployed(daemon: Daemon, database: Path, rows: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while deployed_rows(database) < rows:
        assert daemon.alive(), daemon.log_tail()
        assert time.monotonic() < deadline, (deployed_rows(database), daemon.log_tail())
        time.sleep(0.5)


def test_200_configured_certificates_reach_both_nodes_with_a_handful_of_reloads(lab, tmp_path):
    names = [f"bulk{i:03d}" for i in range(N)]
    lab.set_sites({n: [f"{n}.test"] for n in names})
    counter = tmp_path / "reloads"
    cfg = write_config(tmp_path / "c.yaml", bulk_config(lab, tmp_path, names, counter))
    daemon = Daemon(cfg, tmp_path / "certd.log")
    try:
        wait_deployed(daemon, tmp_path / "state" / "certd.db", 2 * N, 120)
    finally:
        assert daemon.stop() == 0
    assert_served(lab, stored_serials(tmp_path / "state" / "certd.db"))
    reloads = reloads_per_node(counter)
    assert set(reloads) == {"fe1", "fe2"} and max(reloads.values()) <= 10, reloads


def test_200_aliases_through_the_api_reach_both_nodes_with_a_handful_of_reloads(lab, tmp_path):
    names = [f"api{i:03d}" for i in range(N)]
    lab.set_sites({f"{n}.test": [f"{n}.test"] for n in names})  # an alias's certificate
    counter = tmp_path / "reloads"
    data = bulk_config(lab, tmp_path, [], counter)
    data["domains"].update({"default_frontends": ["web"], "preflight": False,
                            "per_token_per_hour": 1000})
    data["api"]["tokens_file"] = str(tmp_path / "tokens")
    (tmp_path / "tokens").write_text(f"platform {TOKEN}\n")
    cfg = write_config(tmp_path / "c.yaml", data)
    api = f"http://{data['api']['listen']}/api/v1/domains"

    async def post_all() -> list[int]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async def one(name: str) -> int:
                async with session.post(api, json={"domain": f"{name}.test"}) as resp:
                    return resp.status
            return await asyncio.gather(*(one(n) for n in names))

    daemon = Daemon(cfg, tmp_path / "certd.log")
    try:
        daemon.wait_log("api listening")
        assert set(asyncio.run(post_all())) == {202}
        wait_deployed(daemon, tmp_path / "state" / "certd.db", 2 * N, 120)
    finally:
        assert daemon.stop() == 0
    assert_served(lab, {n.removesuffix(".test"): s for n, s in
                        stored_serials(tmp_path / "state" / "certd.db").items()})
    reloads = reloads_per_node(counter)
    assert set(reloads) == {"fe1", "fe2"} and max(reloads.values()) <= 15, reloads


STATIC_CHECK = """\
# what `nginx -t` checks before certd reloads: every certificate named statically
{user}
pid {prefix}/check.pid;
error_log {prefix}/check-error.log;
events {{ worker_connections 16; }}
http {{
    {temp_paths}
{servers}
}}
"""
SERVER = """    server {{
        listen 127.0.0.1:9 ssl;
        server_name {name}.test;
        ssl_certificate {path}/fullchain.pem;
        ssl_certificate_key {path}/privkey.pem;
    }}"""


def static_check(lab, names: list[str]) -> str:
    """`nginx -t` on a per-node config naming every certificate's files statically (the
    first variant of deploy/nginx/tls-server.conf), so a key that does not match is refused."""
    for node in lab.nodes:
        prefix = lab.cert_dir(node.name, "x").parent.parent
        servers = "\n".join(SERVER.format(name=n, path=lab.cert_dir(node.name, n))
                            for n in names)
        (prefix / "check.conf").write_text(STATIC_CHECK.format(
            user=nginx_user(), prefix=prefix, temp_paths=nginx_temp_paths(prefix),
            servers=servers))
    root = lab.cert_dir("fe1", "x").parent.parent.parent
    return f"nginx -t -q -p {root}/{{node}}/ -c {root}/{{node}}/check.conf"


async def test_a_set_nginx_refuses_is_isolated_and_the_rest_of_the_batch_served(lab, tmp_path):
    names = [f"brk{i:02d}" for i in range(20)]
    lab.set_sites({n: [f"{n}.test"] for n in names})
    counter = tmp_path / "reloads"
    data = bulk_config(lab, tmp_path, names, counter)
    data["frontends"]["web"]["check"] = static_check(lab, [])  # nothing to check yet
    cfg = configuration.parse(data)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        first = [await certd.renew(n) for n in names]
        assert all(r.ok for rs in await asyncio.gather(*(certd.deploy(n) for n in names))
                   for r in rs)
        static_check(lab, names)  # from now on nginx -t loads all 20 certificates
        before = reloads_per_node(counter)
        renewed = {n: await certd.renew(n, force=True) for n in names}
        bad = renewed["brk07"]
        broken = replace(bad, key_pem=renewed["brk08"].key_pem, id=None)
        await certd.store.add_certificate(broken)  # brk07's newest: a key that does not match
        results = dict(zip(names, await asyncio.gather(*(certd.deploy(n) for n in names))))
        events = await certd.store.events(certificate="brk07", kind="deploy.check")
    for name in names:
        if name == "brk07":
            assert all(not r.ok and r.rolled_back for r in results[name]), results[name]
            assert "key values mismatch" in results[name][0].output
        else:
            assert all(r.ok for r in results[name]), results[name]
    old = {n: c.serial for n, c in zip(names, first)}
    assert_served(lab, {n: (old[n] if n == "brk07" else renewed[n].serial) for n in names})
    assert {e.severity.value for e in events} == {"error"} and len(events) == 2
    after = reloads_per_node(counter)
    assert all(after[n] - before[n] <= 6 for n in after), (before, after)


async def test_a_group_without_reload_still_verifies(lab, tmp_path):
    """nginx choosing the certificate per handshake (`$ssl_server_name` in the path): new sets
    are read on the next handshake, no reload asked for, each node verified serving."""
    names = [f"noreload{i}" for i in range(10)]
    lab.set_sites({n: [f"{n}.test"] for n in names})
    signals = {n.name: _reload_signals(lab, n.name) for n in lab.nodes}
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": n, "domains": [f"{n}.test"], "frontends": ["web"]}
                            for n in names])
    del data["frontends"]["web"]["reload"]
    data["monitor"] = {"enabled": False}
    cfg = configuration.parse(data)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        issued = {n: await certd.renew(n) for n in names}
        results = await asyncio.gather(*(certd.deploy(n) for n in names))
        views = [d for n in names for d in await certd.store.deployments(n)]
    assert all(r.ok and "verified serving" in r.message for rs in results for r in rs)
    assert len({d.batch for d in views}) == 1 and all(d.seconds is not None for d in views)
    # the verification is stored with each record (what status/the API show as `verified`)
    assert all(d.status == DeployStatus.DEPLOYED and d.verified_at is not None for d in views)
    assert_served(lab, {n: c.serial for n, c in issued.items()})
    assert {n.name: _reload_signals(lab, n.name) for n in lab.nodes} == signals


def _reload_signals(lab, node: str) -> int:
    """How often this nginx was told to reload, from its own error log."""
    return sum("reconfiguring" in line for line in lab.frontends[node].error_log())


def test_status_json_shows_the_batch_and_its_duration(lab, tmp_path):
    lab.set_sites({"shown": ["shown.test"]})
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": "shown", "domains": ["shown.test"], "frontends": ["web"]}])
    data["monitor"] = {"enabled": False}
    cfg = write_config(tmp_path / "c.yaml", data)
    assert run_certd(cfg, "renew", "shown").returncode == 0
    [row] = json.loads(run_certd(cfg, "status", "--json").stdout)
    assert {d["node"] for d in row["deployments"]} == {"fe1", "fe2"}
    assert len({d["batch"] for d in row["deployments"]}) == 1
    assert all(d["batch"] and 0 < d["seconds"] < 30 for d in row["deployments"])
