"""Renewal against real software: pebble issuing short-lived certificates, the daemon renewing
on its own, a CA outage and recovery, badNonce storms, kill -9 at every step, and concurrent
renewals that must reach the CA once."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography import x509

from certd import keys
from certd.store.sqlite import SqliteStore
from tests.certd_lab import Daemon, lab_config_data, write_config
from tests.certd_lab import run_certd as certd

pytestmark = pytest.mark.lab


def _cert(name, *domains):
    return {"name": name, "domains": list(domains), "frontends": ["web"]}


def served_serial(lab, node, name):
    return lab.served_certificate(node, name).serial_number


def wait_new_serial(lab, name, old: int, timeout: float):
    """Until both nodes serve the same serial, different from `old`; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            serials = {served_serial(lab, n.name, name) for n in lab.nodes}
        except OSError:  # nothing deployed yet: nginx fails the handshake
            serials = set()
        if len(serials) == 1 and old not in serials:
            return serials.pop()
        time.sleep(0.2)
    raise AssertionError(f"{name}: no new serial served within {timeout}s")


def stored(state_dir, name):
    async def read():
        store = SqliteStore(state_dir / "certd.db")
        await store.open()
        try:
            return (await store.current_certificate(name), await store.events(certificate=name,
                                                                               limit=1000))
        finally:
            await store.close()
    return asyncio.run(read())


def test_daemon_renews_by_itself_survives_a_ca_outage_and_recovers(lab, tmp_path):
    pebble = lab.start_pebble(validity_seconds=24)  # renewal due after 12 s (half, < 10 days)
    try:
        lab.set_sites({"short": ["short.test"]})
        data = lab_config_data(lab, tmp_path / "state", [_cert("short", "short.test")], pebble)
        data["renewal"] = {"jitter": "0s", "backoff": ["1s", "2s", "3s"]}
        daemon = Daemon(write_config(tmp_path / "c.yaml", data), tmp_path / "certd.log")
        try:
            first = wait_new_serial(lab, "short.test", 0, timeout=30)
            second = wait_new_serial(lab, "short.test", first, timeout=30)  # nobody asked
            assert second != first

            pebble.stop()  # the CA goes away
            outage = time.monotonic()
            daemon.wait_log("certificate[short]: acme:", timeout=30)
            time.sleep(6)
            assert daemon.alive()
            # nodes keep serving what they have
            assert {served_serial(lab, n.name, "short.test") for n in lab.nodes} == {second}
            _, events = stored(tmp_path / "state", "short")
            failures = [e for e in events if e.kind == "issue.failed"]
            assert failures and all(e.data["type"] == "certd:unreachable" for e in failures)
            attempts = sorted(e.data["attempts"] for e in failures)
            assert attempts == list(range(1, len(attempts) + 1))
            assert len(failures) <= 2 + (time.monotonic() - outage) / 1  # no tight loop
            gaps = [b.at - a.at for a, b in zip(failures[::-1], failures[::-1][1:])]
            assert all(later >= earlier * 0.8 for earlier, later in zip(gaps, gaps[1:]))

            pebble.start()  # recovery, without restarting certd
            third = wait_new_serial(lab, "short.test", second, timeout=30)
            assert third not in (first, second) and daemon.alive()
        finally:
            assert daemon.stop() == 0, daemon.log()[-3000:]
    finally:
        pebble.stop()


def test_renews_through_a_badnonce_storm(lab, tmp_path):
    pebble = lab.start_pebble(env={"PEBBLE_WFE_NONCEREJECT": "50"})
    try:
        lab.set_sites({"storm": ["storm.test", "www.storm.test"]})
        cfg = write_config(tmp_path / "c.yaml", lab_config_data(
            lab, tmp_path / "state", [_cert("storm", "storm.test", "www.storm.test")], pebble))
        first = certd(cfg, "renew", "storm")
        assert first.returncode == 0, first.stderr[-2000:]
        again = certd(cfg, "renew", "storm", "--force")
        assert again.returncode == 0, again.stderr[-2000:]
        cert, _ = stored(tmp_path / "state", "storm")
        for node in lab.nodes:
            lab.wait_served_serial(node.name, "www.storm.test", int(cert.serial, 16))
        # pebble does not log its rejections: certd's retries (debug log) show they happened
        assert "badNonce on" in first.stderr + again.stderr
    finally:
        pebble.stop()


def _node_set_is_consistent(lab, node, name) -> int:
    """The files a node would serve form one set: key matches cert, fullchain starts with it."""
    d = lab.cert_dir(node, name)
    cert = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
    key = keys.key_from_pem((d / "privkey.pem").read_text())
    assert keys.same_public_key(cert, key)
    assert (d / "fullchain.pem").read_text().startswith((d / "cert.pem").read_text())
    combined = (d / "combined.pem").read_text()
    assert combined.startswith((d / "privkey.pem").read_text())
    return cert.serial_number


@pytest.mark.parametrize("point", ["issue:key-saved", "issue:finalized", "issue:stored",
                                   "deploy:writing", "deploy:switched"])
def test_kill_9_at_any_point_loses_nothing_and_renews_once(lab, tmp_path, point):
    name = "crash-" + point.replace(":", "-")
    domain = f"{name}.test"
    lab.set_sites({name: [domain]})
    cfg = write_config(tmp_path / "c.yaml", lab_config_data(
        lab, tmp_path / "state", [_cert(name, domain)]))
    assert certd(cfg, "renew", name).returncode == 0
    old, _ = stored(tmp_path / "state", name)
    issued_before = lab.pebble.count_issued()

    crashed = certd(cfg, "renew", name, "--force", env={"CERTD_FAILPOINT": point})
    assert crashed.returncode == -9, crashed.stderr[-2000:]

    # right after the crash: the store holds one consistent pair, every node one set
    current, _ = stored(tmp_path / "state", name)
    assert keys.same_public_key(
        x509.load_pem_x509_certificate(current.cert_pem.encode()),
        keys.key_from_pem(current.key_pem))
    for node in lab.nodes:
        assert _node_set_is_consistent(lab, node.name, name) in (
            int(old.serial, 16), int(current.serial, 16))

    recovered = certd(cfg, "renew", name)  # what the daemon's sweep would do
    assert recovered.returncode == 0, recovered.stderr[-2000:]
    final, _ = stored(tmp_path / "state", name)
    assert final.serial != old.serial
    assert lab.pebble.count_issued() - issued_before == 1  # renewed exactly once
    for node in lab.nodes:
        lab.wait_served_serial(node.name, domain, int(final.serial, 16))
        assert _node_set_is_consistent(lab, node.name, name) == int(final.serial, 16)


def test_concurrent_forced_renewals_and_the_daemon_order_once(lab, tmp_path):
    lab.set_sites({"once": ["once.test"]})
    cfg = write_config(tmp_path / "c.yaml", lab_config_data(
        lab, tmp_path / "state", [_cert("once", "once.test")]))
    daemon = Daemon(cfg, tmp_path / "certd.log")
    try:
        daemon.wait_log("sweep done")
        orders = lab.pebble.count_new_orders()
        with ThreadPoolExecutor(2) as pool:  # both at once
            procs = list(pool.map(lambda _: certd(cfg, "renew", "once", "--force"), range(2)))
        outs = [(p.stdout, p.stderr) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert lab.pebble.count_new_orders() - orders == 1
        assert daemon.alive()
    finally:
        assert daemon.stop() == 0
