"""dns-01 end to end against real software: two BIND 9 servers (a primary taking RFC 2136
updates signed with TSIG, a secondary following it by NOTIFY + zone transfer) and a pebble
that validates dns-01 through the primary (`-dnsserver`). A wildcard certificate is issued
and served by the lab's nginx frontends; the TXT records are gone afterwards; a wrong TSIG
key, a CNAME loop and an over-long CNAME chain fail before any order; a CNAME-delegated
`_acme-challenge` (acme-dns style) works; `present` waits for every authoritative server; an
alias added through the API under a dns-01 rule's suffix is issued over dns-01 too."""

from __future__ import annotations

import asyncio
import base64
import logging
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509

from certd import config as configuration
from certd.api import app as api
from certd.api.tokens import parse
from certd.app import open_certd, open_monitor
from certd.errors import AcmeError
from certd.issuance import dns01
from certd.issuance.solvers import Proof, dns01_txt_value
from tests.certd_lab import (
    challenge_lines,
    lab_config_data,
    served_serial,
    verified_handshake,
)
from tests.lab import wait_until
from tests.lab.bind import BindLab
from tests.test_domains_lab import TOKEN, H, _until

pytestmark = pytest.mark.lab

ZONE = "dns01.test"
DELEGATION_ZONE = "acme.test"  # where the delegated name's CNAME points (acme-dns style)
CUSTOMER_ZONE = "customer.test"  # a zone certd has no rule (and no key) for
CHAIN = 12  # CNAME links of long.dns01.test: more than dns01.MAX_CHAIN
RECORDS = [
    "_acme-challenge.delegated CNAME abc123.acme.test.",
    "_acme-challenge.loop CNAME hop.dns01.test.",
    "hop CNAME _acme-challenge.loop.dns01.test.",
    "_acme-challenge.long CNAME c1.dns01.test.",
    *(f"c{i} CNAME c{i + 1}.dns01.test." for i in range(1, CHAIN)),
]


@pytest.fixture(scope="module")
def bind(tmp_path_factory):
    # "test" too: CAA lookups through the primary walk up to it (and get an answer)
    server = BindLab.start(
        tmp_path_factory.mktemp("bind"), zones=(ZONE, DELEGATION_ZONE, CUSTOMER_ZONE, "test"),
        extra_records={ZONE: RECORDS,
                       CUSTOMER_ZONE: ["_acme-challenge.www CNAME cust42.acme.test."]})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dns_pebble(lab, bind):
    """A pebble of its own resolving every name through the BIND primary (the shared one
    keeps challtestsrv for the http-01 tests)."""
    pebble = lab.start_pebble(dns_address=bind.primary_address)
    try:
        yield pebble
    finally:
        pebble.stop()


def _rule(bind, zone: str, key_file, **extra) -> dict:
    return {"type": "dns-01", "server": bind.primary_address, "zone": zone,
            "tsig_key_name": bind.key_name, "tsig_algorithm": "hmac-sha256",
            "tsig_key_file": str(key_file), "nameservers": bind.nameservers,
            "propagation_timeout": "30s", **extra}


def _config(lab, bind, pebble, tmp_path, certificates, key_file=None, **domains):
    data = lab_config_data(lab, tmp_path / "state", certificates, pebble)
    data["domains"].update(domains)
    key_file = key_file or bind.key_file
    data["challenges"] = [
        _rule(bind, ZONE, key_file, name="lab-zone", suffix=ZONE),
        _rule(bind, DELEGATION_ZONE, key_file, name="acme-dns", suffix=DELEGATION_ZONE),
    ]
    return configuration.parse(data)


def _no_txt_left(bind, *names: str) -> None:
    for name in names:
        values = bind.wait_txt(name, lambda v: not any(v.values()), timeout=10)
        assert values == {"primary": [], "secondary": []}, (name, values)


async def test_wildcard_certificate_over_dns01_served_by_the_frontends(lab, bind, dns_pebble,
                                                                       tmp_path):
    domains = [f"*.{ZONE}", ZONE]
    lab.set_sites({"wild": domains})
    cfg = _config(lab, bind, dns_pebble, tmp_path,
                  [{"name": "wild", "domains": domains, "frontends": ["web"]}])
    orders = dns_pebble.count_new_orders()
    http_before = {n.name: len(challenge_lines(lab, n.name, ZONE)) for n in lab.nodes}

    async with open_certd(cfg) as certd:
        cert = await certd.renew("wild")
        results = await certd.deploy("wild")
        # the monitor probes every name of it on every node, the wildcard's too
        roots = tmp_path / "roots.pem"
        roots.write_text(await asyncio.to_thread(dns_pebble.root_pem))
        certd.config = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(
            update={"ca_bundle": roots})})
        async with open_monitor(certd.config, certd) as monitor:
            report = await monitor.sweep()
    # both names, the wildcard included, on both nodes: served, covered, current (pebble's
    # 5-year certificates without revocation info are all the monitor finds)
    assert {(f.domain, f.node) for f in report.findings} == {
        (d, f"web/{n.name}") for d in domains for n in lab.nodes}
    assert {f.check for f in report.findings} <= {"posture.validity", "posture.revocation"}, \
        [(f.check, f.domain, f.message) for f in report.findings]

    assert set(cert.domains) == set(domains)
    assert [r.ok for r in results] == [True, True], [r.message for r in results]
    assert dns_pebble.count_new_orders() == orders + 1
    leaf = x509.load_pem_x509_certificate(cert.cert_pem.encode())
    assert set(leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)) == set(domains)
    # no HTTP validation happened: pebble looked in the DNS only
    assert {n.name: len(challenge_lines(lab, n.name, ZONE)) for n in lab.nodes} == http_before
    root = await asyncio.to_thread(dns_pebble.root_pem)
    for node in lab.nodes:
        for server_name in (f"www.{ZONE}", f"other.{ZONE}", ZONE):
            served = await asyncio.to_thread(lab.wait_served_serial, node.name, server_name,
                                             int(cert.serial, 16), 10)
            der = await asyncio.to_thread(verified_handshake, node.address, lab.tls_port,
                                          server_name, root)
            assert x509.load_der_x509_certificate(der).serial_number == served.serial_number
    # both values (the wildcard's and the apex's) were removed from both servers
    await asyncio.to_thread(_no_txt_left, bind, f"_acme-challenge.{ZONE}")


async def test_wrong_tsig_key_fails_before_any_order(lab, bind, dns_pebble, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    wrong_secret = base64.b64encode(b"not the server's secret, 32 byt").decode()
    wrong = tmp_path / "wrong.key"
    wrong.write_text(wrong_secret + "\n")
    cfg = _config(lab, bind, dns_pebble, tmp_path,
                  [{"name": "wrongkey", "domains": [f"wk.{ZONE}"], "frontends": ["web"]}],
                  key_file=wrong)
    orders = dns_pebble.count_new_orders()

    async with open_certd(cfg) as certd:
        with pytest.raises(AcmeError) as caught:
            await certd.renew("wrongkey")
        state = await certd.store.get_state("wrongkey")

    message = str(caught.value)
    assert caught.value.type == "certd:preflight"
    assert "BADSIG" in message and "tsig_key_file" in message, message
    assert "nothing sent to the CA" in message
    assert dns_pebble.count_new_orders() == orders  # not one order
    assert state is not None and "BADSIG" in (state.last_error or "")
    # neither secret is ever written anywhere
    for secret in (wrong_secret, bind.secret):
        assert secret not in message and secret not in caplog.text


async def test_cname_delegated_challenge(lab, bind, dns_pebble, tmp_path):
    """_acme-challenge.delegated.dns01.test is a CNAME into acme.test (another zone, its own
    rule): the TXT goes there, pebble finds it through the CNAME, and it is removed after."""
    name = f"delegated.{ZONE}"
    cfg = _config(lab, bind, dns_pebble, tmp_path,
                  [{"name": "delegated", "domains": [name], "frontends": ["web"]}])
    orders = dns_pebble.count_new_orders()
    async with open_certd(cfg) as certd:
        cert = await certd.renew("delegated")
    assert cert.domains == (name,)
    assert dns_pebble.count_new_orders() == orders + 1
    await asyncio.to_thread(_no_txt_left, bind, f"abc123.{DELEGATION_ZONE}",
                            f"_acme-challenge.{name}")


@pytest.mark.parametrize("label, words", [
    ("loop", "loops"),
    ("long", f"longer than {dns01.MAX_CHAIN} links"),
])
async def test_hostile_cname_chain_fails_clearly_before_any_order(lab, bind, dns_pebble,
                                                                  tmp_path, label, words):
    name = f"{label}.{ZONE}"
    cfg = _config(lab, bind, dns_pebble, tmp_path,
                  [{"name": label, "domains": [name], "frontends": ["web"]}])
    orders = dns_pebble.count_new_orders()
    started = time.monotonic()
    async with open_certd(cfg) as certd:
        with pytest.raises(AcmeError) as caught:
            await certd.renew(label)
    message = str(caught.value)
    assert words in message and f"_acme-challenge.{name}" in message, message
    # no name from the chain is quoted: only the identifier's own record name
    assert "hop." not in message and "c1." not in message and "c9." not in message
    assert dns_pebble.count_new_orders() == orders
    assert time.monotonic() - started < 60  # bounded (generous: 2 shared cores)


def _solver(bind, **zone_options) -> dns01.Dns01Solver:
    rule = configuration.parse({"challenges": [
        _rule(bind, ZONE, bind.key_file, suffix=ZONE, **zone_options)]}).challenges[0]
    return dns01.Dns01Solver(dns01.zone_from_rule(rule, "challenges[0]"))


async def test_present_returns_only_once_every_server_serves_it(bind):
    solver = _solver(bind)
    proof = Proof("c", f"wait.{ZONE}", "t" * 43, "t" * 43 + ".thumb", "authz")
    value = dns01_txt_value(proof.key_authorization)
    record = f"_acme-challenge.wait.{ZONE}"
    bind.pause("secondary")
    try:
        task = asyncio.create_task(solver.present(proof))
        # the primary has it, the frozen secondary cannot: present() keeps waiting
        await asyncio.to_thread(wait_until, lambda: bind.query(record, "TXT") == [value], 10,
                                0.05, "the primary to serve the record")
        await asyncio.sleep(1.0)
        assert not task.done()
    finally:
        bind.resume("secondary")
    await asyncio.wait_for(task, 30)
    assert bind.txt_everywhere(record) == {"primary": [value], "secondary": [value]}
    await solver.cleanup(proof)
    await asyncio.to_thread(_no_txt_left, bind, record)


async def test_present_gives_up_clearly_when_a_server_never_serves_it(bind):
    solver = _solver(bind, propagation_timeout="2s")
    proof = Proof("c", f"stuck.{ZONE}", "s" * 43, "s" * 43 + ".thumb", "authz")
    bind.pause("secondary")
    try:
        with pytest.raises(dns01.Dns01Error) as caught:
            await asyncio.wait_for(solver.present(proof), 30)
    finally:
        bind.resume("secondary")
    message = str(caught.value)
    assert "not served by" in message and bind.secondary_address in message, message
    assert bind.primary_address not in message.split("not served by")[1]
    assert caught.value.transient
    await solver.cleanup(proof)
    await asyncio.to_thread(_no_txt_left, bind, f"_acme-challenge.stuck.{ZONE}")


async def test_nameservers_found_from_the_zone_ns_set(bind):
    """Without `nameservers`, the servers checked are the zone's NS set's addresses on the
    update server's port (the lab's NS names both point to 127.0.0.1)."""
    solver = _solver(bind, nameservers=None)
    servers = await solver._authoritative(solver.zone, "test")
    assert servers == [("127.0.0.1", bind.ports["primary"])]
    proof = Proof("c", f"ns.{ZONE}", "n" * 43, "n" * 43 + ".thumb", "authz")
    await solver.present(proof)
    await solver.cleanup(proof)


async def test_cleanup_removes_only_its_own_value(bind):
    solver = _solver(bind)
    first = Proof("c", f"two.{ZONE}", "a" * 43, "a" * 43 + ".thumb", "authz1")
    second = Proof("c", f"two.{ZONE}", "b" * 43, "b" * 43 + ".thumb", "authz2", wildcard=True)
    await solver.present(first)
    await solver.present(second)
    await solver.cleanup(first)
    record = f"_acme-challenge.two.{ZONE}"
    wanted = [dns01_txt_value(second.key_authorization)]
    await asyncio.to_thread(bind.wait_txt, record,
                            lambda v: v == {"primary": wanted, "secondary": wanted})
    await solver.cleanup(second)
    await solver.cleanup(second)  # already gone: no error
    await asyncio.to_thread(_no_txt_left, bind, record)


async def test_caa_checked_for_dns01_before_any_order(lab, bind, dns_pebble, tmp_path):
    """Preflight's CAA check for a dns-01 name asks for dns-01 (RFC 8657 validationmethods):
    a CAA record allowing the CA by http-01 only stops the order before the CA sees it."""
    name = f"caa.{ZONE}"
    cfg = _config(lab, bind, dns_pebble, tmp_path,
                  [{"name": "caa", "domains": [name], "frontends": ["web"]}])
    orders = dns_pebble.count_new_orders()
    await asyncio.to_thread(lab.add_caa, name,
                            [("issue", "pebble.letsencrypt.org; validationmethods=http-01")])
    try:
        async with open_certd(cfg) as certd:
            with pytest.raises(AcmeError) as caught:
                await certd.renew("caa")
            assert "validationmethods exclude dns-01" in str(caught.value), caught.value
            assert dns_pebble.count_new_orders() == orders
            await asyncio.to_thread(lab.add_caa, name, [
                ("issue", "pebble.letsencrypt.org; validationmethods=dns-01")])
            cert = await certd.renew("caa", force=True)
        assert cert.domains == (name,)
        assert dns_pebble.count_new_orders() == orders + 1
    finally:
        await asyncio.to_thread(lab.clear_caa, name)


async def test_acme_dns_delegation_from_a_zone_certd_cannot_update(lab, bind, dns_pebble,
                                                                   tmp_path):
    """acme-dns style: the customer's www.customer.test has `_acme-challenge` CNAMEd into
    acme.test once; certd has a key for acme.test only. The CNAME is found through the
    resolver (here the primary, which serves customer.test), the record goes into acme.test,
    pebble follows the CNAME, and the record is removed afterwards."""
    name = f"www.{CUSTOMER_ZONE}"
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": "customer", "domains": [name], "frontends": ["web"]}],
                           dns_pebble)
    data["domains"]["resolver"] = bind.primary_address
    data["challenges"] = [_rule(bind, DELEGATION_ZONE, bind.key_file, names=[name])]
    cfg = configuration.parse(data)
    orders = dns_pebble.count_new_orders()
    async with open_certd(cfg) as certd:
        cert = await certd.renew("customer")
    assert cert.domains == (name,)
    assert dns_pebble.count_new_orders() == orders + 1
    await asyncio.to_thread(_no_txt_left, bind, f"cust42.{DELEGATION_ZONE}")


async def test_alias_under_a_dns01_suffix_is_issued_over_dns01(lab, bind, dns_pebble,
                                                               tmp_path):
    """An alias added through the API (POST /api/v1/domains) for a name under the `lab-zone`
    rule's suffix takes the dns-01 path: proved by a TXT record on BIND (removed afterwards;
    no HTTP challenge through the frontends, and no challenge listener running at all),
    deployed and served by both nginx nodes. A wildcard alias is still refused."""
    domain = f"shop.{ZONE}"
    lab.set_sites({domain: [domain]})
    cfg = _config(lab, bind, dns_pebble, tmp_path, [], default_frontends=["web"],
                  resolver=bind.primary_address)
    orders = dns_pebble.count_new_orders()
    http_before = {n.name: len(challenge_lines(lab, n.name, domain)) for n in lab.nodes}
    async with open_certd(cfg) as certd:
        app = api.build_app(certd, parse(f"platform {TOKEN}\n", "tokens"))
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/api/v1/domains", json={"domain": f"*.{ZONE}"},
                                     headers=H)
            problem = await resp.json()
            assert resp.status == 422 and "wildcard" in problem["detail"], problem
            assert await certd.store.get_alias(f"*.{ZONE}") is None

            resp = await client.post("/api/v1/domains", json={"domain": domain}, headers=H)
            assert resp.status == 202, await resp.text()
            body = await _until(client, f"/api/v1/domains/{domain}",
                                lambda s, b: b.get("status") in ("deployed", "failed"))
            assert body["status"] == "deployed", body
            serial = body["certificate"]["serial"]
            assert {(d["node"], d["serial"], d["status"]) for d in body["deployments"]} == {
                (n.name, serial, "deployed") for n in lab.nodes}
    assert dns_pebble.count_new_orders() == orders + 1
    for node in lab.nodes:
        assert served_serial(lab, node.name, domain) == serial
    # pebble looked in the DNS only, and the record is gone from both servers
    assert {n.name: len(challenge_lines(lab, n.name, domain)) for n in lab.nodes} == http_before
    await asyncio.to_thread(_no_txt_left, bind, f"_acme-challenge.{domain}")
