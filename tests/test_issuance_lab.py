"""End to end against real software: pebble validates through haproxy and two nginx
frontends, certd answers challenges, issues, deploys with the file deployer, and each node
serves the new certificate."""

from __future__ import annotations

import asyncio

import pytest
from cryptography import x509

from certd.app import challenge_listener, open_certd
from certd.errors import AcmeError
from certd.model import CertStatus
from tests.certd_lab import (
    Daemon,
    challenge_lines,
    lab_config,
    lab_config_data,
    verified_handshake,
    write_config,
)

pytestmark = pytest.mark.lab


def _cert(name: str, *domains: str) -> dict:
    return {"name": name, "domains": list(domains), "frontends": ["web"]}


async def _issue_and_deploy(lab, tmp_path, pebble, name, domains):
    cfg = lab_config(lab, tmp_path / "state", [_cert(name, *domains)], pebble)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        cert = await certd.renew(name)
        results = await certd.deploy(name)
        events = await certd.store.events(certificate=name)
    return cert, results, events


def _check_served(lab, pebble, cert, domains):
    root = pebble.root_pem()
    for node in lab.nodes:
        for domain in domains:
            served = lab.wait_served_serial(node.name, domain, int(cert.serial, 16), timeout=10)
            assert served.serial_number == int(cert.serial, 16)
            der = verified_handshake(node.address, lab.tls_port, domain, root)
            assert x509.load_der_x509_certificate(der).serial_number == served.serial_number


async def test_two_name_certificate_through_both_frontends(lab, tmp_path):
    domains = ("portal.test", "www.portal.test")
    lab.set_sites({"portal": list(domains)})
    before = {n.name: sum(len(challenge_lines(lab, n.name, d)) for d in domains)
              for n in lab.nodes}

    cert, results, events = await _issue_and_deploy(lab, tmp_path, lab.pebble, "portal",
                                                    domains)

    assert cert is not None and set(cert.domains) == set(domains)
    assert [r.ok for r in results] == [True, True], [r.message for r in results]
    assert {e.kind for e in events} >= {"issue.ok", "deploy.ok"}
    # pebble sent its validation requests through the load balancer to both frontends,
    # and both proxied them to certd, which answered 200
    for node in lab.nodes:
        lines = [line for d in domains for line in challenge_lines(lab, node.name, d)]
        new = lines[before[node.name]:] if len(lines) > before[node.name] else []
        assert new, f"no validation request reached {node.name}"
        assert all(" 200 " in line for line in new), new
    await asyncio.to_thread(_check_served, lab, lab.pebble, cert, domains)
    # the deployed layout
    for node in lab.nodes:
        d = lab.cert_dir(node.name, "portal")
        assert d.is_symlink()
        assert {p.name for p in d.iterdir()} == {
            "fullchain.pem", "privkey.pem", "cert.pem", "chain.pem", "combined.pem"}
        assert (d / "privkey.pem").stat().st_mode & 0o777 == 0o600


async def test_bad_nonce_retries(lab, tmp_path, caplog):
    caplog.set_level("DEBUG", logger="certd.issuance.client")
    pebble = await asyncio.to_thread(lab.start_pebble, {"PEBBLE_WFE_NONCEREJECT": "30"})
    try:
        domains = ("nonce.test", "www.nonce.test")
        lab.set_sites({"nonce": list(domains)})
        cert, results, _ = await _issue_and_deploy(lab, tmp_path, pebble, "nonce", domains)
        assert all(r.ok for r in results)
        await asyncio.to_thread(_check_served, lab, pebble, cert, domains)
        # pebble does not log its rejections: certd's retries show they happened
        assert "badNonce on" in caplog.text
    finally:
        await asyncio.to_thread(pebble.stop)


async def test_failed_validation_is_recorded_with_the_ca_error(lab, tmp_path):
    lab.add_a("nowhere.test", "127.0.0.9")  # nothing listens there
    try:
        cfg = lab_config(lab, tmp_path / "state", [_cert("nowhere", "nowhere.test")])
        async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
            with pytest.raises(AcmeError) as info:
                await certd.renew("nowhere")
            state = await certd.store.get_state("nowhere")
            events = await certd.store.events(certificate="nowhere", kind="issue.failed")
            orders = await certd.store.orders("nowhere")
    finally:
        lab.clear_a("nowhere.test")
    assert info.value.type.startswith("urn:ietf:params:acme:error:")
    assert state.status is CertStatus.FAILED and state.attempts == 1
    assert info.value.type in state.last_error and state.next_attempt_at is not None
    assert events and events[0].data["type"] == info.value.type
    assert orders[0].status == "invalid"


def test_daemon_issues_deploys_restarts_without_new_order_and_survives_failures(
        lab, tmp_path):
    """`certd run` as a process: issues what is missing, keeps running when one certificate
    fails validation, and a restart places no new order for a still-valid certificate."""
    lab.set_sites({"daemon": ["daemon.test"]})
    lab.add_a("broken.test", "127.0.0.9")
    data = lab_config_data(lab, tmp_path / "state",
                           [_cert("daemon", "daemon.test"), _cert("broken", "broken.test")])
    config_path = write_config(tmp_path / "config.yaml", data)
    orders_before = lab.pebble.count_new_orders()

    daemon = Daemon(config_path, tmp_path / "certd.log")
    try:
        daemon.wait_log("sweep done", timeout=90)
        assert daemon.alive()
        log = daemon.log()
        assert "deployed serial" in log
        assert "certificate[broken]" in log and "urn:ietf:params:acme:error:" in log
    finally:
        assert daemon.stop() == 0, daemon.log()[-2000:]
    orders_first_run = lab.pebble.count_new_orders() - orders_before
    assert orders_first_run == 2  # one per certificate

    served = lab.served_certificate("fe1", "daemon.test")
    daemon = Daemon(config_path, tmp_path / "certd2.log")
    try:
        daemon.wait_log("sweep done", timeout=60)
    finally:
        assert daemon.stop() == 0
        lab.clear_a("broken.test")
    # still valid: no new order for it; the broken one is backing off (no new order either)
    assert lab.pebble.count_new_orders() - orders_before == orders_first_run
    assert lab.served_certificate("fe2", "daemon.test").serial_number == served.serial_number


async def test_responder_through_frontends_never_echoes(lab, tmp_path):
    cfg = lab_config(lab, tmp_path / "state", [])
    paths = ("/.well-known/acme-challenge/../../etc/passwd",
             "/.well-known/acme-challenge/short",
             "/.well-known/acme-challenge/" + "A" * 43,
             "/.well-known/acme-challenge/%3Cscript%3E" + "B" * 30)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        answers = [await asyncio.to_thread(lab.http_get, "portal.test", p) for p in paths]
    for status, body in answers:
        assert status == 404
        assert "passwd" not in body and "script" not in body and "AAAA" not in body
        assert "BBBB" not in body
