"""Two real CAs in order (acme.issuers): pebble first, acme2certifier second, both validating
through the lab's haproxy -> nginx -> certd chain. pebble stopped (by PID) -> orders go to
acme2certifier (counted on both sides), with the fallback recorded; pebble started again ->
new orders go to pebble again. ARI is asked only of the CA that issued a certificate
(acme2certifier offers it, Debian's pebble does not: its renewalInfo requests are counted in
acme2certifier's request log), a renewal ordered from the other CA carries no `replaces`,
and revocation goes to the issuing CA. A name pebble refuses (its domain blocklist: rejectedIdentifier) goes to
acme2certifier without cooling pebble down. The cooldown is in the store: a second instance
on it skips pebble with no failed order of its own. Preflight's CAA check accepts either CA. The
pool's decisions one by one, with scripted CAs: tests/test_issuers.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from certd import config as configuration
from certd import metrics
from certd.app import challenge_listener, open_certd
from certd.model import utcnow
from certd.sweep import Sweeper
from certd.views import certificate_views
from tests.certd_lab import lab_config_data

pytestmark = pytest.mark.lab

NAMES = ("one", "two", "three", "four", "five")


def _config(lab, pebble, a2c, tmp_path):
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": n, "domains": [f"{n}.fallback.test"], "frontends": ["web"]}
                            for n in NAMES], pebble)
    data["acme"] = {
        "timeout": "10s", "order_timeout": "60s", "issuer_cooldown": "5m",
        "issuers": [
            {"name": "pebble", "directory": pebble.directory_url,
             "ca_bundle": str(pebble.ca_bundle), "caa_identities": ["pebble.letsencrypt.org"]},
            {"name": "a2c", "directory": a2c.directory_url,
             "caa_identities": ["a2c.lab.test"]},
        ]}
    return configuration.parse(data)


def _renewal_info_requests(a2c) -> int:
    """renewalInfo requests acme2certifier answered (its WSGI server logs every request line:
    '127.0.0.1 - - [date] "GET /acme/renewal-info/CERTID HTTP/1.1" 200 ...')."""
    path = "/" + a2c.directory()["renewalInfo"].split("/", 3)[3]
    return sum(1 for line in a2c.log_text().splitlines() if f'"GET {path}' in line)


def _force(certd, name):
    return certd.renew(name, force=True, requested_at=utcnow())


async def test_orders_fall_back_to_the_next_ca_and_return(lab, a2c, tmp_path):
    pebble = lab.start_pebble()
    try:
        await _run(lab, pebble, a2c, tmp_path)
    finally:
        pebble.stop()


async def _run(lab, pebble, a2c, tmp_path):
    lab.set_sites({n: [f"{n}.fallback.test"] for n in NAMES})
    cfg = _config(lab, pebble, a2c, tmp_path)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        # both up: the first issuer takes the order
        first = await certd.renew("one")
        kept = await certd.renew("three")
        assert first.issuer == pebble.directory_url == kept.issuer
        assert pebble.count_new_orders() == 2 and a2c.count_new_orders() == 0

        # pebble down (stopped by PID): the orders go to acme2certifier
        await asyncio.to_thread(pebble.stop)
        second = await certd.renew("two")
        assert second.issuer == a2c.directory_url
        assert a2c.count_new_orders() == 1 and pebble.count_new_orders() == 2
        [fallback] = await certd.store.events(kind="issue.fallback", certificate="two")
        assert fallback.data["from"] == pebble.directory_url
        assert fallback.data["to"] == a2c.directory_url and fallback.data["reason"] == "down"

        # a renewal of pebble's certificate, ordered from acme2certifier: no `replaces`
        renewed = await _force(certd, "one")
        assert renewed.issuer == a2c.directory_url and renewed.serial != first.serial
        assert a2c.count_new_orders() == 2
        assert [o["replaces"] for o in a2c.new_orders()] == [None, None]
        views = {v["name"]: v for v in await certificate_views(certd, certd.specs(), utcnow())}
        assert views["two"]["issuer"] == a2c.directory_url
        assert views["two"]["issuer_name"] == "a2c" and views["three"]["issuer_name"] == "pebble"
        scrape = (await metrics.render(metrics.Sources(certd))).decode()
        assert f'certd_issuer_up{{issuer="{pebble.directory_url}",name="pebble"}} 0.0' in scrape
        assert f'certd_certificates_by_issuer{{issuer="{a2c.directory_url}"}} 2.0' in scrape

        # ARI only at the issuing CA: acme2certifier's certificate is asked there, pebble's
        # ("three") never is
        sweeper = Sweeper(certd)
        asked = _renewal_info_requests(a2c)
        state = await sweeper.check_ari("three")
        assert state.window_start is None and _renewal_info_requests(a2c) == asked
        state = await sweeper.check_ari("two")
        assert state.window_start is not None and _renewal_info_requests(a2c) == asked + 1

        # pebble back: while it cools down (5 minutes on certd's clock), orders still go to
        # acme2certifier, from every instance sharing the store: a second one, which saw no
        # failure and would find pebble answering, skips it (the cooldown is in the store)
        await asyncio.to_thread(pebble.start)
        before = pebble.count_new_orders()
        async with open_certd(cfg) as other:
            assert (await other.renew("four")).issuer == a2c.directory_url
            assert pebble.count_new_orders() == before and a2c.count_new_orders() == 3
            assert await other.store.events(kind="issue.fallback", certificate="four") == []
            scrape = (await metrics.render(metrics.Sources(other))).decode()
            assert (f'certd_issuer_up{{issuer="{pebble.directory_url}",name="pebble"}} 0.0'
                    in scrape)
        certd.clock = lambda: utcnow() + timedelta(minutes=6)
        before = pebble.count_new_orders()
        back = await certd.renew("five")
        assert back.issuer == pebble.directory_url
        assert pebble.count_new_orders() == before + 1 and a2c.count_new_orders() == 3
        # and a renewal of acme2certifier's certificate goes to pebble, without `replaces`
        again = await _force(certd, "two")
        assert again.issuer == pebble.directory_url and a2c.count_new_orders() == 3
        assert pebble.count_new_orders() == before + 2

        # a sweep with everything issued: each certificate's ARI at its own CA only:
        # acme2certifier's "one" and "four" (not fetched yet), never pebble's three
        asked = _renewal_info_requests(a2c)
        result = await sweeper.sweep()
        assert result.failed == 0 and result.renewed == 0
        assert _renewal_info_requests(a2c) == asked + 2

        # revocation goes to the issuing CA: pebble's certificate at pebble, acme2certifier's
        # at acme2certifier (pebble would refuse a certificate it does not know)
        await certd._revoke("two")
        assert pebble.certificate_status(again.serial)["Status"] == "Revoked"
        await certd._revoke("one")
        [ok] = await certd.store.events(kind="revoke.ok", certificate="one")
        assert ok.data["serial"] == renewed.serial


async def test_caa_accepts_any_configured_issuer_with_its_own_account(lab):
    """Preflight's CAA check (a real DNS server: the lab's challtestsrv) with two issuers:
    a record naming the second CA passes, its accounturi compared with that CA's account."""
    from certd import preflight

    domain = "caa-second.fallback.test"
    first, second = "https://ca-one.example/acct/1", "https://ca-two.example/acct/2"
    lab.add_caa(domain, [("issue", f"ca-two.example; accounturi={second}")])

    async def check(identities, accounts):
        return await preflight.check_caa(
            domain, resolver=("127.0.0.1", lab.challtestsrv.dns_port),
            ca_identities=identities, account_uri=accounts, method="http-01")

    try:
        both = await check(["ca-one.example", "ca-two.example"],
                           {"ca-one.example": first, "ca-two.example": second})
        swapped = await check(["ca-one.example", "ca-two.example"],
                              {"ca-one.example": second, "ca-two.example": first})
        only_first = await check(["ca-one.example"], {"ca-one.example": first})
    finally:
        lab.clear_caa(domain)
    assert both.ok, both.reason
    assert not swapped.ok and "accounturi names another account" in swapped.reason
    assert second not in swapped.reason  # the tenant's value is not quoted
    assert not only_first.ok and "allows other CAs only" in only_first.reason


async def test_a_name_the_first_ca_refuses_goes_to_the_next(lab, a2c, tmp_path):
    """pebble with a domain blocklist (its `domainBlocklist` setting) refuses the name at
    newOrder (`rejectedIdentifier`): acme2certifier issues it, and pebble, which is not down,
    stays first in line for the others."""
    import json

    blocked = "blocked.fallback.test"
    pebble = lab.start_pebble()
    try:
        await asyncio.to_thread(pebble.stop)
        settings = json.loads(pebble.config_path.read_text())
        settings["pebble"]["domainBlocklist"] = [blocked]
        pebble.config_path.write_text(json.dumps(settings))
        await asyncio.to_thread(pebble.start)
        names = {"blocked": blocked, "plain": "plain.fallback.test"}
        lab.set_sites({n: [d] for n, d in names.items()})
        data = lab_config_data(lab, tmp_path / "state",
                               [{"name": n, "domains": [d], "frontends": ["web"]}
                                for n, d in names.items()], pebble)
        data["acme"] = {"timeout": "10s", "order_timeout": "60s", "issuers": [
            {"name": "pebble", "directory": pebble.directory_url,
             "ca_bundle": str(pebble.ca_bundle), "caa_identities": ["pebble.letsencrypt.org"]},
            {"name": "a2c", "directory": a2c.directory_url, "caa_identities": ["a2c.lab.test"]}]}
        cfg = configuration.parse(data)
        async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
            refused = await certd.renew("blocked")
            plain = await certd.renew("plain")
            [event] = await certd.store.events(kind="issue.fallback")
            healthy = certd.issuers.views(utcnow())[0]["healthy"]
    finally:
        pebble.stop()
    assert refused.issuer == a2c.directory_url and a2c.count_new_orders() == 1
    assert event.data["reason"] == "rejectedIdentifier" and event.certificate == "blocked"
    assert plain.issuer == pebble.directory_url and healthy
