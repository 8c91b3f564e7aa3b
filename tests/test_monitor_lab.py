"""The monitor end to end in the lab: pebble issues a short-validity certificate, certd deploys
it to both nginx nodes, the monitor looks at what each node serves and a warning reaches a
real webhook receiver and a real SMTP server once; a longer certificate clears it with one
`resolved` notice; one node given an older certificate by hand is `stale`, alone; an endpoint
nobody answers is a finding, not a crash; /metrics says the same, parsed by prometheus_client."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from datetime import timedelta

import pytest
import trustme
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from certd import config as configuration
from certd.api import app as api
from certd.api.tokens import parse
from certd.app import challenge_listener, open_certd, open_monitor
from certd.model import Deployment, DeployStatus, utcnow
from tests.certd_lab import lab_config_data, served_serial, write_config
from tests.lab import free_port
from tests.notify_servers import SmtpServer, WebhookReceiver, mail_config

pytestmark = pytest.mark.lab
NAME, DOMAIN = "mon", "mon.test"
TOKEN = "monitor-token-0123456789"
DAY = 86400


@pytest.fixture
def pebbles(lab):
    """Two more CAs: one issuing 20-day certificates, one 90-day ones."""
    short = lab.start_pebble(validity_seconds=20 * DAY)
    long = lab.start_pebble(validity_seconds=90 * DAY)
    try:
        yield short, long
    finally:
        short.stop()
        long.stop()


@pytest.fixture
async def receivers(tmp_path):
    ca = trustme.CA()
    webhook = await WebhookReceiver().start()
    smtp = SmtpServer(ca).start()
    try:
        yield webhook, smtp, mail_config(tmp_path, smtp, ca)
    finally:
        smtp.stop()
        await webhook.stop()


DEAD_PORT = free_port(["127.0.0.9"])  # nothing listens there


def _config(lab, tmp_path, pebble, webhook, mail, bundle):
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": NAME, "domains": [DOMAIN], "frontends": ["web"]}], pebble)
    data["monitor"] = {"ca_bundle": str(bundle), "stale_grace": "1m",
                       "endpoints": [{"address": "127.0.0.9", "port": DEAD_PORT,
                                      "names": ["legacy.test"]}]}
    data["alerts"] = {"notifiers": [{"type": "webhook", "url": webhook.url},
                                    mail.model_dump(mode="json", by_alias=True,
                                                    exclude={"timeout"})]}
    return configuration.parse(data)


def _notices(bodies):
    """The webhook's notices, digests unpacked into their items."""
    return [i for b in bodies for i in (b["items"] if b["event"] == "digest" else [b])]


def _by_check(findings, check):
    return sorted((f for f in findings if f.check == check), key=lambda f: f.node)


async def test_expiry_warning_once_then_resolved_and_a_stale_node(lab, pebbles, receivers,
                                                                  tmp_path):
    short, long = pebbles
    webhook, smtp, mail = receivers
    bundle = tmp_path / "roots.pem"
    bundle.write_text(short.root_pem() + long.root_pem())
    lab.set_sites({NAME: [DOMAIN]})
    # the monitor looks 15 days ahead: a 20-day certificate then has 5 days left, under its
    # scaled warning line (28 d x 20/90 = 6.2 d) and above the critical one (1.6 d)
    later = {"at": utcnow() + timedelta(days=15)}
    cfg = _config(lab, tmp_path, short, webhook, mail, bundle)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        first = await certd.renew(NAME)
        assert all(r.ok for r in await certd.deploy(NAME))
        async with open_monitor(cfg, certd) as monitor:
            monitor.clock = lambda: later["at"]
            report = await monitor.sweep()
            expiry = _by_check(report.findings, "expiry")
            assert [(f.node, f.severity.value, f.serial) for f in expiry] == [
                ("web/fe1", "warning", first.serial), ("web/fe2", "warning", first.serial)]
            assert 4.9 <= expiry[0].days_remaining <= 5.1
            down = _by_check(report.findings, "unreachable")
            assert [f.domain for f in down] == ["legacy.test"]
            assert not _by_check(report.findings, "stale")
            assert not _by_check(report.findings, "chain")
            await monitor.alerts.drain(20)
            # grouped (alerts.group_window): one message per severity, notices inside
            assert len({b["severity"] for b in webhook.bodies}) == len(webhook.bodies)
            warned = [b for b in _notices(webhook.bodies) if b["check"] == "expiry"]
            assert sorted((b["event"], b["node"], b["severity"]) for b in warned) == [
                ("finding", "web/fe1", "warning"), ("finding", "web/fe2", "warning")]
            assert all(b["domain"] == DOMAIN and b["certificate"] == NAME
                       and 4.9 <= b["days_remaining"] <= 5.1 for b in warned)
            [mailed] = [m.get_content() for m in smtp.messages
                        if "expir" in m.get_content().lower()]
            assert all(f"{DOMAIN} on web/{n}: expires in " in mailed
                       for n in ("fe1", "fe2"))
            sent = (len(webhook.bodies), len(smtp.messages))

            later["at"] += timedelta(hours=1)  # the next sweep: same findings, no new notice
            await monitor.sweep()
            await monitor.alerts.drain(20)
            assert (len(webhook.bodies), len(smtp.messages)) == sent

    # a 90-day certificate from the other CA, deployed: the warning clears, once
    cfg_long = _config(lab, tmp_path, long, webhook, mail, bundle)
    async with open_certd(cfg_long) as certd, challenge_listener(cfg_long, certd):
        second = await certd.renew(NAME, force=True)
        assert second.serial != first.serial
        assert all(r.ok for r in await certd.deploy(NAME))
        async with open_monitor(cfg_long, certd) as monitor:
            monitor.clock = lambda: later["at"]
            report = await monitor.sweep()
            assert not _by_check(report.findings, "expiry")
            await monitor.alerts.drain(20)
            resolved = [b for b in _notices(webhook.bodies[sent[0]:])
                        if b["event"] == "resolved"]
            assert sorted((b["check"], b["node"]) for b in resolved) == [
                ("expiry", "web/fe1"), ("expiry", "web/fe2")]
            [mailed] = [m.get_content() for m in smtp.messages[sent[1]:]
                        if "resolved" in m.get_content().lower()]
            assert all(f"{DOMAIN} on web/{n}: resolved (was: expires in " in mailed
                       for n in ("fe1", "fe2"))

            # fe2 is handed the old certificate by hand: stale there, and only there
            fe2 = lab.cert_dir("fe2", NAME).resolve()
            old = tmp_path / "old"
            old.mkdir()
            (old / "fullchain.pem").write_text(first.cert_pem + first.chain_pem)
            (old / "privkey.pem").write_text(first.key_pem)
            for f in ("fullchain.pem", "privkey.pem"):
                (fe2 / f).unlink()
                shutil.copy(old / f, fe2 / f)
            assert served_serial(lab, "fe2", DOMAIN) == first.serial
            assert served_serial(lab, "fe1", DOMAIN) == second.serial
            report = await monitor.sweep()
            stale = _by_check(report.findings, "stale")
            assert [(f.node, f.serial) for f in stale] == [("web/fe2", first.serial)]

            app = api.build_app(certd, parse(f"ops {TOKEN}\n", "tokens"), monitor=monitor)
            async with TestClient(TestServer(app)) as client:
                resp = await client.get("/metrics")
                assert resp.status == 401
                resp = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
                assert resp.status == 200
                text = await resp.text()
                resp = await client.get("/api/v1/alerts?min_severity=warning",
                                        headers={"Authorization": f"Bearer {TOKEN}"})
                alerts = (await resp.json())["items"]
    assert ("stale", "web/fe2") in {(a["check"], a["node"]) for a in alerts}
    assert ("unreachable", "legacy.test") in {(a["check"], a["domain"]) for a in alerts}

    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("certd_certificate_not_after_timestamp_seconds",
                    (("certificate", NAME),))] == second.not_after.timestamp()
    stale_of = {node: samples[("certd_served_certificate_stale",
                               (("domain", DOMAIN), ("node", f"web/{node}")))]
                for node in ("fe1", "fe2")}
    assert stale_of == {"fe1": 0, "fe2": 1}
    left = samples[("certd_served_certificate_expiry_seconds",
                    (("domain", DOMAIN), ("node", "web/fe1")))]
    assert abs(left - (second.not_after - utcnow()).total_seconds()) < 120
    assert samples[("certd_renewals_total", (("result", "ok"),))] >= 2


FLEET = 25  # certificates x 2 nodes = 50 certificate/node pairs, several findings each


async def test_pending_pairs_are_not_judged_then_a_flood_arrives_as_digests(
        lab, pebbles, receivers, tmp_path):
    """The issue's first sweep: certificates issued, not yet deployed. While their deployment
    has not begun (within `stale_grace` of issuance) or is in progress, each name is `pending`
    (in the sweep, in `certd check --json`, in /api/v1/alerts) and nobody is notified. Judged
    after that, the flood of findings (the nodes serve their fallback certificate) reaches the
    real webhook receiver and SMTP server as at most one message per severity each; once
    those certificates are gone, one grouped `resolved` each."""
    short, _ = pebbles
    webhook, smtp, mail = receivers
    bundle = tmp_path / "roots.pem"
    bundle.write_text(short.root_pem())
    names = [f"fl{i:02d}" for i in range(FLEET)]
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": n, "domains": [f"{n}.flood.test"], "frontends": ["web"]}
                            for n in names], short)
    data["monitor"] = {"ca_bundle": str(bundle), "stale_grace": "10m", "protocols": False}
    data["alerts"] = {"notifiers": [{"type": "webhook", "url": webhook.url},
                                    mail.model_dump(mode="json", by_alias=True,
                                                    exclude={"timeout"})]}
    cfg = configuration.parse(data)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        await asyncio.gather(*(certd.renew(n) for n in names))  # issued, not deployed
        async with open_monitor(cfg, certd) as monitor:
            report = await monitor.sweep()
            assert report.probes == 0 and report.pending == 2 * FLEET
            assert {(f.check, f.severity.value) for f in report.findings} == {("pending", "info")}
            assert all("not deployed yet" in f.message for f in report.findings)
            # `certd check`, another process on the same store, agrees
            out = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "certd", "-c",
                                 str(write_config(tmp_path / "c.yaml", data)), "check", "--json"],
                capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            checked = json.loads(out.stdout)
            assert checked["pending"] == 2 * FLEET and checked["probes"] == 0
            assert {f["check"] for f in checked["findings"]} == {"pending"}
            await monitor.alerts.drain(20)
            assert (webhook.bodies, smtp.messages) == ([], [])

            # a deploy in flight on fl00/fe1; everything else is judged (past the grace)
            later = utcnow() + timedelta(minutes=11)
            monitor.clock = lambda: later
            cert = await certd.store.current_certificate("fl00")
            await certd.store.put_deployment(Deployment(
                "fl00", "web", "fe1", cert.serial, DeployStatus.DEPLOYING, "",
                later - timedelta(seconds=5)))
            report = await monitor.sweep()
            pending = [(f.certificate, f.node) for f in report.findings if f.check == "pending"]
            assert pending == [("fl00", "web/fe1")]
            assert "deployment in progress" in report.findings[-1].message
            judged = [f for f in report.findings if f.check != "pending"]
            assert len({(f.certificate, f.node) for f in judged}) == 2 * FLEET - 1
            assert len(judged) >= 2 * FLEET - 1 and report.notices == len(judged)
            assert not any(f.certificate == "fl00" and f.node == "web/fe1" for f in judged)
            await monitor.alerts.drain(20)

            app = api.build_app(certd, parse(f"ops {TOKEN}\n", "tokens"), monitor=monitor)
            async with TestClient(TestServer(app)) as client:
                resp = await client.get("/api/v1/alerts",
                                        headers={"Authorization": f"Bearer {TOKEN}"})
                items = (await resp.json())["items"]
    assert [(a["certificate"], a["node"], a["severity"]) for a in items
            if a["check"] == "pending"] == [("fl00", "web/fe1", "info")]

    severities = sorted({f.severity.value for f in judged})
    assert sorted(b["severity"] for b in webhook.bodies) == severities  # one per severity
    assert len(smtp.messages) == len(severities)
    for body in webhook.bodies:
        expected = [f for f in judged if f.severity.value == body["severity"]]
        if len(expected) == 1:  # a group of one: today's single notice
            assert body["event"] == "finding"
            continue
        assert (body["event"], body["count"]) == ("digest", len(expected))
        assert {(i["certificate"], i["node"], i["check"]) for i in body["items"]} == {
            (f.certificate, f.node, f.check) for f in expected}
    sent = (len(webhook.bodies), len(smtp.messages))

    # those certificates are gone from the configuration: their findings clear, grouped
    gone = configuration.parse({**data, "certificates": [
        {"name": "other", "domains": ["other.flood.test"], "frontends": ["web"]}]})
    async with open_certd(gone) as certd, open_monitor(gone, certd) as monitor:
        monitor.clock = lambda: later + timedelta(minutes=1)
        report = await monitor.sweep()
        await monitor.alerts.drain(20)
    resolved = webhook.bodies[sent[0]:]
    assert [(b["event"], b["events"], b["count"]) for b in resolved] == [
        ("digest", {"resolved": len(judged)}, len(judged))]
    assert [m["Subject"] for m in smtp.messages[sent[1]:]] == [
        f"[certd] RESOLVED {len(judged)} findings"]
