"""The Salt deployer against real salt-master, salt-api and two minions (one per frontend node,
each seeing its own node's directory at the same path): push + reload + verify, a failing check
on one node rolls back there only, a stopped minion fails alone, a bad password fails cleanly."""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest

from certd import config as configuration
from certd.app import challenge_listener, open_certd
from tests.certd_lab import (
    deploy_past_a_planted_symlink,
    lab_config_data,
    planted_symlink,
    served_serial,
    web_deployer,
)

pytestmark = pytest.mark.lab


def salt_config(lab, salt_lab, tmp_path, name, *, password_file=None, check=None, timeout="10s",
                pull=False):
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": name, "domains": [f"{name}.test"], "frontends": ["web"]}])
    web = data["frontends"]["web"]
    web["deployer"] = {
        "type": "salt", "url": salt_lab.api_url, "username": salt_lab.username,
        "password_file": str(password_file or salt_lab.password_file),
        "eauth": salt_lab.eauth, "path": salt_lab.deploy_path_template, "timeout": timeout,
    }
    if pull:  # minions fetch from certd's API listener, plain HTTP on loopback here
        web["deployer"].update(pull_url=f"http://{data['api']['listen']}")  # the default mode
    else:
        web["deployer"].update(mode="push")
    web["reload"] = salt_lab.reload_command
    web["verify_timeout"] = "5s"
    if check:
        web["check"] = check
    return configuration.parse(data)


def served(lab, node, name) -> str:
    return served_serial(lab, node, f"{name}.test")


@asynccontextmanager
async def pulling_certd(cfg):
    """certd with its challenge listener and its API listener (where minions pull)."""
    from certd.app import api_app, start_site

    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        runner = await start_site(await api_app(cfg, certd), cfg.api.listen, "api",
                                  cfg.api.limits)
        try:
            yield certd
        finally:
            await runner.cleanup()


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


# --- issue 11 item 5: pull mode, no key in Salt's job cache, returns or event bus ------------

def _event_tap(salt_lab, token):
    """Read salt-api's /events (every event of the master's bus) in a thread. Returns (the
    chunks read, stop): stop() ends the read at once (the socket's read side shut down: a
    plain close would wait for the reading thread, i.e. for the next event or the read
    timeout) and returns once the thread has appended all it got."""
    import threading

    import requests

    seen: list[bytes] = []
    response = requests.get(f"{salt_lab.api_url}/events", stream=True, timeout=(5, 120),
                            headers={"X-Auth-Token": token, "Accept": "text/event-stream"})
    assert response.status_code == 200

    def read():
        try:
            for chunk in response.iter_content(chunk_size=None):
                seen.append(chunk)
        except Exception:  # noqa: BLE001 - shut down from the test: the tap ends
            pass

    thread = threading.Thread(target=read, daemon=True)
    thread.start()

    def stop():
        if thread.is_alive():
            response.raw.shutdown()
            thread.join(5)
            assert not thread.is_alive(), "the /events reader did not stop"
        response.close()

    return seen, stop


def _key_body(cert) -> str:
    """A distinctive slice of the private key's PEM body (a whole base64 line)."""
    return cert.key_pem.strip().splitlines()[2]


async def test_pull_mode_keeps_the_key_out_of_salt(lab, salt_lab, tmp_path):
    import re
    import time

    import requests

    from certd.deployers import salt_pull
    from certd.model import utcnow

    lab.set_sites({"pulled": ["pulled.test"]})
    cfg = salt_config(lab, salt_lab, tmp_path, "pulled", pull=True)
    pull_url = cfg.frontends["web"].deployer.pull_url
    started = time.time()
    api_token = await asyncio.to_thread(salt_lab.login)
    seen, stop_tap = await asyncio.to_thread(_event_tap, salt_lab, api_token)
    async with pulling_certd(cfg) as certd:
        try:
            cert, results = await _issue(certd, "pulled")
            await asyncio.sleep(1)  # the last events of the job reach the tap
            await asyncio.to_thread(stop_tap)
            assert all(r.ok for r in results.values()), [r.message for r in results.values()]
            for node in lab.nodes:
                assert served(lab, node.name, "pulled") == cert.serial
                d = lab.cert_dir(node.name, "pulled")
                assert d.is_symlink() and (d / "privkey.pem").stat().st_mode & 0o777 == 0o600
                assert (d / "combined.pem").stat().st_mode & 0o777 == 0o600
                assert (d / "privkey.pem").read_text() == cert.key_pem
                assert (d.parent / ".pulled.d" / ".certd").read_text() == \
                    "managed by certd; certificate pulled\n"
            fetched = await certd.store.events(kind="salt.bundle")
            assert sorted(e.data["minion"] for e in fetched) == ["fe1", "fe2"]

            body = _key_body(cert)
            # the master's job cache: every file of every job since the test started
            cached = [p for p in salt_lab.master_job_cache_dir.rglob("*")
                      if p.is_file() and p.stat().st_mtime >= started - 1]
            assert any(p.name == ".load.p" for p in cached)
            assert not [p for p in cached if body.encode() in p.read_bytes()]
            # the returns: the minions' return.p files in the same cache (salt-api's /jobs
            # needs the runner client, which this master does not enable), and the bus
            assert any(p.name == "return.p" for p in cached)
            pulls = [p.read_bytes().decode("latin-1") for p in cached
                     if p.name == ".load.p" and b"certd-pull-fetch" in p.read_bytes()]
            assert pulls, "the pull job is in the job cache"
            bus = b"".join(seen)
            assert b"certd-pull-fetch" in bus and body.encode() not in bus
            # ... up to the job's end: both minions' returns went by the tap
            assert all(f"/ret/{n.name}".encode() in bus for n in lab.nodes)

            # what the job data does hold: spent tokens. Replaying one is refused.
            tokens = set(re.findall(r"cdb_[A-Za-z0-9_-]{43}", pulls[0]))
            batch = re.search(r"certd-pull/([0-9a-f]{16})", pulls[0]).group(1)
            assert len(tokens) == 2
            url = f"{pull_url}/api/v1/salt/bundles/{batch}"
            for t in tokens:
                replay = await asyncio.to_thread(
                    requests.get, url, headers={"Authorization": f"Bearer {t}"}, timeout=10)
                assert replay.status_code == 401 and t not in replay.text
                assert batch not in replay.text

            # an expired token is refused; the same request with a live one is served
            now = utcnow()
            items = [("pulled", cert.serial)]
            expired, live = salt_pull.new_token(), salt_pull.new_token()
            fresh = salt_pull.new_batch()
            await certd.store.create_bundle_token(
                salt_pull.token_digest(expired), batch=fresh, minion="fe1", items=items,
                now=now - timedelta(minutes=3), expires_at=now - timedelta(minutes=1))
            await certd.store.create_bundle_token(
                salt_pull.token_digest(live), batch=fresh, minion="fe1", items=items,
                now=now, expires_at=now + timedelta(minutes=2))
            url = f"{pull_url}/api/v1/salt/bundles/{fresh}"

            def get(token):
                return requests.get(url, headers={"Authorization": f"Bearer {token}"},
                                    timeout=10)

            refused = await asyncio.to_thread(get, expired)
            served_ok = await asyncio.to_thread(get, live)
            again = await asyncio.to_thread(get, live)
            assert refused.status_code == 401 and again.status_code == 401
            assert refused.content == again.content  # one fixed answer
            assert served_ok.status_code == 200
            assert served_ok.content == salt_pull.bundle_tar([("pulled", cert)])
        finally:
            await asyncio.to_thread(stop_tap)


async def test_pull_failing_check_rolls_back_one_node(lab, salt_lab, tmp_path):
    """Pull mode, fe1's check fails: the job's onfail rollback puts fe1 back on its previous
    set; fe2, in the same job, keeps the new one."""
    lab.set_sites({"pullchk": ["pullchk.test"]})
    cfg = salt_config(lab, salt_lab, tmp_path, "pullchk", pull=True)
    async with pulling_certd(cfg) as certd:
        old, results = await _issue(certd, "pullchk")
    assert all(r.ok for r in results.values()), [r.message for r in results.values()]

    marker = lab.cert_dir("fe1", "pullchk").parent / ".salt-check-fails"
    marker.write_text("")
    try:
        cfg = salt_config(lab, salt_lab, tmp_path, "pullchk", pull=True,
                          check=f"test ! -e {salt_lab.node_root}/certs/.salt-check-fails")
        async with pulling_certd(cfg) as certd:
            new, results = await _issue(certd, "pullchk")
            events = await certd.store.events(certificate="pullchk", kind="deploy.check")
    finally:
        marker.unlink()
    assert new.serial != old.serial
    fe1, fe2 = results["fe1"], results["fe2"]
    assert not fe1.ok and fe1.kind == "check" and fe1.rolled_back, fe1.message
    assert fe1.message.startswith("salt[fe1]: check: "), fe1.message
    assert fe2.ok and not fe2.rolled_back, fe2.message
    d = lab.cert_dir("fe1", "pullchk")
    assert os.readlink(d) == f".pullchk.d/{old.serial}"
    assert (d / "privkey.pem").read_text() == old.key_pem
    assert served(lab, "fe1", "pullchk") == old.serial
    assert served(lab, "fe2", "pullchk") == new.serial
    assert events and events[0].node == "fe1"


async def test_pull_stopped_minion_fails_alone(lab, salt_lab, tmp_path):
    lab.set_sites({"pullmin": ["pullmin.test"]})
    cfg = salt_config(lab, salt_lab, tmp_path, "pullmin", timeout="2s", pull=True)
    await asyncio.to_thread(salt_lab.stop_minion, "fe2")
    try:
        async with pulling_certd(cfg) as certd:
            cert, results = await _issue(certd, "pullmin")
            fetched = await certd.store.events(kind="salt.bundle")
    finally:
        await asyncio.to_thread(salt_lab.start_minion, "fe2")
    assert results["fe1"].ok and served(lab, "fe1", "pullmin") == cert.serial
    assert not results["fe2"].ok and results["fe2"].kind == "unreachable"
    assert "did not answer" in results["fe2"].message
    assert not lab.cert_dir("fe2", "pullmin").exists()
    assert [e.data["minion"] for e in fetched] == ["fe1"]


async def test_pull_refuses_a_symlinked_versions_dir(lab, salt_lab, tmp_path):
    """Pull mode, `.pullplant.d -> ../victim` on fe1: the guard fails, so no place step
    writes; fe2 deploys from the same job."""
    lab.set_sites({"pullplant": ["pullplant.test"]})
    cfg = salt_config(lab, salt_lab, tmp_path, "pullplant", pull=True)
    with planted_symlink(lab, "pullplant") as (_, victim):
        async with pulling_certd(cfg) as certd:
            cert, results = await _issue(certd, "pullplant")
    assert not results["fe1"].ok and results["fe1"].kind == "refused", results["fe1"]
    assert results["fe1"].message == (
        f"salt[fe1]: {salt_lab.node_root}/certs/.pullplant.d is a symlink; "
        "refusing to write keys through it")
    assert os.listdir(victim) == ["precious.txt"] and victim.stat().st_mode & 0o777 == 0o755
    assert not lab.cert_dir("fe1", "pullplant").exists()
    assert results["fe2"].ok, results["fe2"].message
    assert served(lab, "fe2", "pullplant") == cert.serial
    # fe1 fetched the bundle all the same; the cleanup state removed it there too
    pulled = [salt_lab.workdir / f"minion-{m}" / "var/cache/salt/minion/certd-pull"
              for m in ("fe1", "fe2")]
    assert all(p.is_dir() and not list(p.iterdir()) for p in pulled), pulled
