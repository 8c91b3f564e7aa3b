"""dns-persist-01 pre-validation for aliases (issue 14, item 4) against real software:
acme2certifier 0.46 with `dns_persist_01_support` and certd (`domains.resolver`) both
resolving through a real BIND 9 (tests/lab/bind.py, the dns-01 tests' server, here
authoritative for the whole `test` zone), where the test publishes and withdraws the customer's
TXT record with RFC 2136 updates signed with the lab's TSIG key, as a customer's DNS provider
would; the lab's haproxy -> nginx frontends for the deployment.

An alias added with `validation: dns-persist` answers with the record to publish and waits
(`awaiting_dns`, no order at the CA) while the record is missing, names another account or
holds garbage; once the record is right it is issued with dns-persist-01 (no HTTP challenge
goes through the frontends), deployed on both nodes, and renewed with nothing more."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from certd import aliases, cli_domains
from certd import config as configuration
from certd.api import app as api
from certd.api.tokens import parse
from certd.app import challenge_listener, open_certd
from certd.errors import AcmeError
from certd.issuance import dns_persist
from certd.model import CertStatus
from certd.scheduler import Scheduler
from certd.sweep import Sweeper
from tests.certd_lab import lab_config_data, served_serial
from tests.lab.a2c import Acme2Certifier
from tests.lab.bind import BindLab

pytestmark = pytest.mark.lab
TOKEN = "lab-persist-token-0123456789"
H = {"Authorization": f"Bearer {TOKEN}"}
ISSUER = "a2c.lab.test"  # acme2certifier's CAA identity = the issuer domain name
DOMAIN = "persist-alias.test"
RECORD = f"_validation-persist.{DOMAIN}"
MARK = "HOSTILE-MARK"  # in every hostile record: must never come back in a message

PERSIST_A2C = {"extra_config": {
    "Challenge": {"dns_persist_01_support": "True"},
    "Directory": {"caaidentities": json.dumps([ISSUER])},
}}


@pytest.fixture(scope="module")
def bind(tmp_path_factory):
    """BIND 9 authoritative for `test` (every name of it -> 127.0.0.1), recursing for
    loopback clients (what set_servfail needs)."""
    with BindLab.start(tmp_path_factory.mktemp("bind"), zones=("test",)) as server:
        yield server


@pytest.fixture
def a2c(lab, bind, tmp_path_factory, request):
    """tests/lab/fixtures.py's `a2c`, resolving through `bind` instead of challtestsrv (same
    name: the lab's failure report still appends its log)."""
    with Acme2Certifier.start(tmp_path_factory.mktemp("a2c"), lab=lab,
                              dns_address=bind.primary_address,
                              **(getattr(request, "param", None) or {})) as server:
        yield server


def _set_txt(bind, value: str, record: str = RECORD) -> None:
    """Publish one more TXT value at `record` (RFC 2136 update, TSIG-signed)."""
    bind.add_records(record, "TXT", [value])


def _clear_txt(bind, record: str = RECORD) -> None:
    bind.delete_records(record, "TXT")


def _challenge_requests(lab) -> int:
    return sum("/.well-known/acme-challenge/" in line
               for node in lab.nodes for line in lab.access_log(node.name))


def _config(lab, bind, a2c, tmp_path):
    """The lab's config with acme2certifier as the one CA (its CAA identity: ISSUER),
    resolving through BIND."""
    data = lab_config_data(lab, tmp_path / "state", [])
    data["acme"] = {"directory": a2c.directory_url, "timeout": "10s", "order_timeout": "60s",
                    "caa_identities": [ISSUER]}
    data["domains"]["default_frontends"] = ["web"]
    data["domains"]["resolver"] = bind.primary_address
    return configuration.parse(data)


async def _until(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await predicate()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _recheck(certd, sweeper):
    """The backoff's time has come (as the scheduler would wake for it): one sweep."""
    state = await certd.store.get_state(DOMAIN)
    await certd.store.put_state(replace(state, next_attempt_at=None))
    return await sweeper.sweep()


@pytest.mark.parametrize("a2c", [PERSIST_A2C], indirect=True)
async def test_dns_persist_alias_waits_for_its_record_then_issues(lab, bind, a2c, tmp_path,
                                                                 capsys):
    lab.set_sites({DOMAIN: [DOMAIN]})
    _clear_txt(bind)
    cfg = _config(lab, bind, a2c, tmp_path)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        sweeper = Sweeper(certd)
        app = api.build_app(certd, parse(f"platform {TOKEN}\n", "tokens"))
        async with TestClient(TestServer(app)) as client:
            challenges_before = _challenge_requests(lab)

            # 1. added: the exact record to publish, awaiting_dns, certd's account registered
            resp = await client.post("/api/v1/domains", headers=H,
                                     json={"domain": DOMAIN, "validation": "dns-persist"})
            assert resp.status == 202, await resp.text()
            body = await resp.json()
            account = certd.issuer.client.account_uri
            assert account and account.startswith(a2c.base_url + "/")
            assert body["status"] == "awaiting_dns" and body["validation"] == "dns-persist"
            assert body["dns_record"] == {"name": RECORD, "type": "TXT",
                                          "value": f"{ISSUER}; accounturi={account}"}
            record_value = body["dns_record"]["value"]

            # the same from the shell: `certd domains add --validation dns-persist`
            cli = cli_domains.Api.__new__(cli_domains.Api)
            cli.base, cli.headers = str(client.make_url("")).rstrip("/"), H
            args = argparse.Namespace(domains_command="add", domain="persist-cli.test",
                                      frontends=None, validation="dns-persist", wait=False,
                                      profile=None)
            assert await cli_domains._domains(cli, args) == 0
            printed = capsys.readouterr().out.splitlines()
            assert printed == ["persist-cli.test: awaiting_dns",
                               "publish: _validation-persist.persist-cli.test. TXT "
                               f"\"{ISSUER}; accounturi={account}\""]

            # the background job looked once: nothing there, no order at the CA
            async def looked():
                return await certd.store.events(certificate=DOMAIN, kind="issue.awaiting_dns")
            events = await _until(looked, what="the first record check")
            assert f"no TXT record at {RECORD}" in events[0].message
            state = await certd.store.get_state(DOMAIN)
            assert state.status is CertStatus.AWAITING_DNS and state.attempts == 1
            wait = (state.next_attempt_at - state.updated_at).total_seconds()
            assert 53 < wait < 67  # 1 min (±10 %) after the first look
            assert a2c.count_new_orders() == 0

            # 2. the sweep leaves it alone while backing off; when due it looks again
            await sweeper.sweep()
            assert (await certd.store.get_state(DOMAIN)).attempts == 1  # not looked at
            assert a2c.count_new_orders() == 0
            await _recheck(certd, sweeper)
            state = await certd.store.get_state(DOMAIN)
            assert state.status is CertStatus.AWAITING_DNS and state.attempts == 2
            assert 107 < (state.next_attempt_at - state.updated_at).total_seconds() < 133
            assert a2c.count_new_orders() == 0
            assert len(await looked()) == 1  # the same reason again: no second event

            # 3. a record naming another account is refused by certd, before the CA
            _set_txt(bind, f"{ISSUER}; accounturi={a2c.base_url}/acme/acct/someoneelse")
            await _recheck(certd, sweeper)
            shown = await (await client.get(f"/api/v1/domains/{DOMAIN}", headers=H)).json()
            assert shown["status"] == "awaiting_dns"
            assert "names another ACME account" in shown["last_error"]
            assert a2c.count_new_orders() == 0
            _clear_txt(bind)

            # 4. hostile contents: refused in fixed words, never quoted back
            for hostile in (f"{MARK}\u0007\u001b[31m; accounturi={account}",
                            f"{ISSUER}; accounturi={account}; accounturi={MARK}",
                            f"{ISSUER}; accounturi={account} {MARK}",
                            f"{ISSUER}; {MARK}",
                            f"\u00e9{MARK}.example; accounturi={account}",
                            f"{ISSUER}; accounturi={account}; persistUntil=1{MARK}",
                            ";" * 600 + MARK):  # (three strings of one record)
                _set_txt(bind, hostile)
                await _recheck(certd, sweeper)
                _clear_txt(bind)
                shown = await (await client.get(f"/api/v1/domains/{DOMAIN}", headers=H)).json()
                assert shown["status"] == "awaiting_dns", hostile
                assert MARK not in json.dumps(shown) and "\x1b" not in shown["last_error"]
                assert "malformed" in shown["last_error"], (hostile, shown["last_error"])
            # a DNS server that fails (SERVFAIL): still waiting, said so
            bind.set_servfail(RECORD)
            try:
                await _recheck(certd, sweeper)
            finally:
                bind.clear_servfail(RECORD)
            state = await certd.store.get_state(DOMAIN)
            assert state.status is CertStatus.AWAITING_DNS and "SERVFAIL" in state.last_error
            # an expired record and another CA's record
            _set_txt(bind, f"{ISSUER}; accounturi={account}; persistUntil=1000000000")
            await _recheck(certd, sweeper)
            assert "expired" in (await certd.store.get_state(DOMAIN)).last_error
            _clear_txt(bind)
            _set_txt(bind, f"other-ca.example; accounturi={account}")
            await _recheck(certd, sweeper)
            assert "names another CA" in (await certd.store.get_state(DOMAIN)).last_error
            _clear_txt(bind)
            events = await certd.store.events(certificate=DOMAIN, limit=200)
            assert all(MARK not in e.message and MARK not in json.dumps(e.data)
                       for e in events)
            assert a2c.count_new_orders() == 0

            # CAA (RFC 8657) that allows this CA only by http-01: a preflight failure once
            # the record is right, still nothing sent to the CA
            _set_txt(bind, record_value)
            bind.set_records(DOMAIN, "CAA", [f'0 issue "{ISSUER}; validationmethods=http-01"'])
            try:
                await _recheck(certd, sweeper)
            finally:
                bind.delete_records(DOMAIN, "CAA")
                _clear_txt(bind)
            state = await certd.store.get_state(DOMAIN)
            assert state.status is CertStatus.FAILED
            assert "validationmethods exclude dns-persist-01" in state.last_error
            assert a2c.count_new_orders() == 0

            # 5. the right record (beside an unrelated one): issued with dns-persist-01,
            # deployed on both nodes, no HTTP challenge through the frontends
            _set_txt(bind, "v=spf1 -all")
            _set_txt(bind, record_value)
            result = await _recheck(certd, sweeper)
            assert result.renewed == 1, await certd.store.get_state(DOMAIN)
            assert a2c.count_new_orders() == 1
            shown = await (await client.get(f"/api/v1/domains/{DOMAIN}", headers=H)).json()
            assert shown["status"] == "deployed", shown
            serial = shown["certificate"]["serial"]
            for node in lab.nodes:
                assert served_serial(lab, node.name, DOMAIN) == serial
            assert _challenge_requests(lab) == challenges_before
            # the CA validated dns-persist-01 and nothing else
            done = [c for c in a2c.challenges() if c[1] != "pending"]
            assert done == [("dns-persist-01", "valid")], a2c.challenges()

            # 6. renewals need nothing more: the same record, a new certificate
            resp = await client.post(f"/api/v1/certificates/{DOMAIN}/renew", headers=H)
            assert resp.status == 202

            async def renewed():
                cert = await certd.store.current_certificate(DOMAIN)
                return cert if cert and cert.serial != serial else None
            cert = await _until(renewed, what="the renewal")
            assert a2c.count_new_orders() == 2
            assert _challenge_requests(lab) == challenges_before
            done = [c for c in a2c.challenges() if c[1] != "pending"]
            assert done == [("dns-persist-01", "valid")] * 2, a2c.challenges()

            # 7. the record withdrawn: the next renewal waits again, nothing sent to the CA
            _clear_txt(bind)
            with pytest.raises(AcmeError, match="no TXT record"):
                await certd.renew(DOMAIN, force=True)
            state = await certd.store.get_state(DOMAIN)
            assert state.status is CertStatus.AWAITING_DNS
            assert a2c.count_new_orders() == 2
            assert (await certd.store.current_certificate(DOMAIN)).serial == cert.serial


@pytest.mark.parametrize("a2c", [{"extra_config": {
    "Directory": {"caaidentities": json.dumps([ISSUER])}}}], indirect=True)
async def test_ca_without_dns_persist_is_a_clear_error(lab, bind, a2c, tmp_path):
    """The record is there, but this CA does not offer dns-persist-01 (acme2certifier without
    `dns_persist_01_support`): the order fails saying so, and no HTTP challenge is tried."""
    domain = "persist-unoffered.test"
    record = f"_validation-persist.{domain}"
    cfg = _config(lab, bind, a2c, tmp_path)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        added = await aliases.add(certd, domain, who="ci", validation="dns-persist")
        records = await aliases.dns_records(certd, [added.alias])
        _set_txt(bind, records[domain]["value"], record)
        try:
            with pytest.raises(AcmeError) as caught:
                await certd.renew(domain)
        finally:
            _clear_txt(bind, record)
        assert f"no dns-persist-01 challenge offered for {domain}" in str(caught.value)
        state = await certd.store.get_state(domain)
        assert state.status is CertStatus.FAILED
        assert "no dns-persist-01 challenge offered" in state.last_error
        assert a2c.count_new_orders() == 1
        assert all(status == "pending" for _, status in a2c.challenges())


@pytest.mark.parametrize("a2c", [PERSIST_A2C], indirect=True)
async def test_the_scheduler_finds_the_record_on_its_own(lab, bind, a2c, tmp_path,
                                                         monkeypatch):
    """No test-driven sweeps: the daemon's scheduler wakes at each re-check time (the
    backoff shortened to seconds here; the scheduler's 10 s minimum gap applies) and issues
    once the record appears."""
    monkeypatch.setattr(dns_persist, "RECHECK_FIRST", timedelta(seconds=1))
    domain = "persist-scheduled.test"
    record = f"_validation-persist.{domain}"
    lab.set_sites({domain: [domain]})
    cfg = _config(lab, bind, a2c, tmp_path)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        added = await aliases.add(certd, domain, who="ci", validation="dns-persist")
        value = (await aliases.dns_records(certd, [added.alias]))[domain]["value"]
        scheduler = Scheduler(Sweeper(certd), cfg.renewal)
        scheduler.start()
        try:
            async def waiting():
                state = await certd.store.get_state(domain)
                return state if state and state.attempts >= 2 else None
            await _until(waiting, what="two looks at the missing record")
            assert a2c.count_new_orders() == 0
            _set_txt(bind, value, record)

            async def deployed():
                state = await certd.store.get_state(domain)
                return state if state and state.status is CertStatus.DEPLOYED else None
            await _until(deployed, timeout=90, what="issued and deployed by the scheduler")
        finally:
            await scheduler.stop()
            _clear_txt(bind, record)
        assert a2c.count_new_orders() == 1
        serial = (await certd.store.current_certificate(domain)).serial
        for node in lab.nodes:
            assert served_serial(lab, node.name, domain) == serial
