"""The monitor as an operator meets it, against the lab and as real processes: `certd check`
(exit status, JSON, table) after `certd renew`, and `certd run` serving /metrics and
/api/v1/alerts and forwarding an issuance failure to a real webhook receiver and SMTP server.

A private pebble issues 90-day certificates here: long enough not to be "short-lived" (the
expiry thresholds do not scale), short enough to pass the CA/B validity rule (R22), so with
pebble's root as `monitor.ca_bundle` a healthy node leaves only info-level findings.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
import trustme
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from certd import config as configuration
from certd.api import app as api
from certd.api.tokens import parse
from certd.app import open_certd, open_monitor

from tests.certd_lab import Daemon, lab_config_data, write_config
from tests.certd_lab import run_certd as certd
from tests.lab import free_port
from tests.notify_servers import SmtpServer, WebhookReceiver, mail_config

pytestmark = pytest.mark.lab

CHECKED = "chk-monitor.test"  # `certd check` tests
WATCHED = "mon-daemon.test"  # the daemon's healthy certificate
BROKEN = "monfail.test"  # resolves to 127.0.0.9, where nothing listens: validation fails
SITES = {"chk": [CHECKED], "mon": [WATCHED]}
NODES = ("web/fe1", "web/fe2")
TOKEN = "monitor-lab-token-0123456789"
VALIDITY = 90 * 86400


def status(config_path: Path) -> dict[str, dict]:
    out = certd(config_path, "status", "--json")
    assert out.returncode == 0, out.stderr
    return {row["name"]: row for row in json.loads(out.stdout)}


def _cert(name: str, domain: str) -> dict:
    return {"name": name, "domains": [domain], "frontends": ["web"]}


@pytest.fixture(scope="module")
def pebble90(lab):
    pebble = lab.start_pebble(validity_seconds=VALIDITY)
    try:
        yield pebble
    finally:
        pebble.stop()


@pytest.fixture(scope="module")
def root_file(pebble90, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trust") / "pebble-root.pem"
    path.write_text(pebble90.root_pem())
    return path


@pytest.fixture(autouse=True)
def _sites(lab):
    lab.set_sites(SITES)  # other modules replace the SNI map: set ours before each test


# ---------------------------------------------------------------------------- certd check


@pytest.fixture(scope="module")
def checked(lab, pebble90, root_file, tmp_path_factory) -> tuple[Path, dict]:
    """A store holding one certificate issued and deployed by `certd renew`, and the config
    data pointing at it (tests write variants of it next to the store)."""
    lab.set_sites(SITES)
    work = tmp_path_factory.mktemp("check")
    data = lab_config_data(lab, work / "state", [_cert("chk", CHECKED)], pebble90)
    data["monitor"] = {"ca_bundle": str(root_file), "timeout": "5s"}
    cfg = write_config(work / "c.yaml", data)
    out = certd(cfg, "renew", "chk")
    assert out.returncode == 0, out.stderr
    serial = status(cfg)["chk"]["serial"]
    for node in lab.nodes:
        lab.wait_served_serial(node.name, CHECKED, int(serial, 16))
    return work, data


def _variant(checked, name: str, **monitor) -> Path:
    work, data = checked
    return write_config(work / f"{name}.yaml",
                        {**data, "monitor": {**data["monitor"], **monitor}})


def _check_json(cfg: Path, *names: str) -> tuple[int, dict]:
    out = certd(cfg, "check", "--json", *names)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode in (0, 1, 2), out.stderr
    return out.returncode, json.loads(out.stdout)


def _checks(report: dict) -> set[tuple[str, str, str, str]]:
    return {(f["check"], f["severity"], f["domain"], f["node"]) for f in report["findings"]}


def test_check_healthy_nodes_only_info(checked):
    cfg = _variant(checked, "ok")
    code, report = _check_json(cfg)
    assert set(report) == {"probes", "seconds", "pending", "findings"}
    assert report["probes"] == 2 and report["seconds"] >= 0
    assert report["pending"] == 0  # deployed by `certd renew`: judged
    assert code == 0, report
    assert report["findings"], "pebble's certificates carry no revocation info: R29 is info"
    assert {f["severity"] for f in report["findings"]} == {"info"}, report
    assert {f["node"] for f in report["findings"]} == set(NODES)
    serial = status(cfg)["chk"]["serial"]
    for f in report["findings"]:
        assert set(f) == {"check", "severity", "domain", "node", "certificate", "message",
                          "serial", "days_remaining", "not_after"}
        assert f["domain"] == CHECKED and f["certificate"] == "chk"
        assert f["serial"] == serial and 85 < f["days_remaining"] <= 90
        assert datetime.fromisoformat(f["not_after"]).tzinfo is not None
    # naming the certificate probes the same targets
    code, named = _check_json(cfg, "chk")
    assert code == 0 and named["probes"] == 2 and _checks(named) == _checks(report)


def test_check_table_has_a_header_and_one_row_per_finding(checked):
    cfg = _variant(checked, "table")
    _, report = _check_json(cfg)
    out = certd(cfg, "check")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    n = len(report["findings"])
    assert lines[0].split()[:4] == ["SEVERITY", "CHECK", "DOMAIN", "NODE"]
    assert len(lines) == 1 + n + 1, out.stdout  # header, rows, the summary line
    rows = lines[1:1 + n]
    assert sorted((r.split()[1], r.split()[3]) for r in rows) == sorted(
        (f["check"], f["node"]) for f in report["findings"])
    assert lines[-1].startswith(f"2 probes, {n} findings in ")


def test_check_system_trust_store_rejects_pebble_chain(checked):
    cfg = _variant(checked, "system", ca_bundle=None)
    code, report = _check_json(cfg)
    assert code == 2, report
    chain = [f for f in report["findings"] if f["check"] == "chain"]
    assert {(f["node"], f["severity"]) for f in chain} == {(n, "critical") for n in NODES}
    assert all(f["domain"] == CHECKED for f in chain)


def test_check_warn_before_longer_than_the_lifetime_warns(checked):
    cfg = _variant(checked, "warn", warn_before="10000d", critical_before="1d")
    code, report = _check_json(cfg)
    assert code == 1, report
    expiry = [f for f in report["findings"] if f["check"] == "expiry"]
    assert {(f["node"], f["severity"]) for f in expiry} == {(n, "warning") for n in NODES}
    assert {f["severity"] for f in report["findings"]} <= {"info", "warning"}


def test_check_unknown_name_is_a_clean_error(checked):
    out = certd(_variant(checked, "unknown"), "check", "nope")
    assert out.returncode == 1
    assert "unknown certificate nope" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_check_unreachable_endpoint_is_a_finding(checked):
    port = free_port()  # nothing listens on 127.0.0.9
    cfg = _variant(checked, "endpoint",
                   endpoints=[{"address": "127.0.0.9", "port": port, "names": ["legacy.test"]}])
    code, report = _check_json(cfg)
    assert code == 2, report
    assert report["probes"] == 3
    down = [f for f in report["findings"] if f["check"] == "unreachable"]
    assert [(f["node"], f["severity"]) for f in down] == [(f"127.0.0.9:{port}", "error")]
    # the lab's nodes are still judged as before
    assert {f["node"] for f in report["findings"] if f["check"] != "unreachable"} == set(NODES)


async def test_metrics_without_auth_when_configured_so(checked):
    """`api.metrics_auth: false`: /metrics answers without a token, the API still wants one."""
    _, data = checked
    cfg = configuration.parse({**data, "api": {**data["api"], "metrics_auth": False}})
    async with open_certd(cfg) as service, open_monitor(cfg, service) as monitor:
        await monitor.sweep()
        app = api.build_app(service, parse(f"test {TOKEN}\n", "tokens"), monitor=monitor)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/metrics")
            assert resp.status == 200
            families = _families(await resp.text())
            assert (await client.get("/api/v1/alerts")).status == 401
    for node in NODES:
        assert _value(families["certd_served_certificate_stale"],
                      "certd_served_certificate_stale", domain=CHECKED, node=node) == 0


# ---------------------------------------------------------------------------- certd run


def _daemon_config(lab, pebble, root_file: Path, tmp_path: Path, certificates: list[dict],
                   notifiers: list[dict]) -> Path:
    data = lab_config_data(lab, tmp_path / "state", certificates, pebble)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"test {TOKEN}\n")
    data["api"]["tokens_file"] = str(tokens)
    data["monitor"] = {"ca_bundle": str(root_file), "interval": "24h", "jitter": "0s",
                       "timeout": "5s"}
    # grouped as by default, in a shorter window (the forwarder already runs every 30 s)
    data["alerts"] = {"notifiers": notifiers, "group_window": "2s"}
    return write_config(tmp_path / "c.yaml", data)


def _api_listen(cfg: Path) -> str:
    return yaml.safe_load(cfg.read_text())["api"]["listen"]


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples, name: str, **labels) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


async def test_daemon_metrics_and_alerts(lab, pebble90, root_file, tmp_path):
    receiver = await WebhookReceiver().start()
    cfg = _daemon_config(lab, pebble90, root_file, tmp_path, [_cert("mon", WATCHED)],
                         [{"type": "webhook", "url": receiver.url}, {"type": "log"}])
    daemon = None
    try:
        # issued and deployed first, so the daemon's first monitor sweep sees it
        out = await asyncio.to_thread(certd, cfg, "renew", "mon")
        assert out.returncode == 0, out.stderr
        row = (await asyncio.to_thread(status, cfg))["mon"]
        for node in lab.nodes:
            await asyncio.to_thread(lab.wait_served_serial, node.name, WATCHED,
                                    int(row["serial"], 16))
        daemon = Daemon(cfg, tmp_path / "certd.log")
        await asyncio.to_thread(daemon.wait_log, "monitor: swept 2 probes (")
        api = "http://" + _api_listen(cfg)
        async with aiohttp.ClientSession() as http:
            async with http.get(api + "/metrics") as resp:
                assert resp.status == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with http.get(api + "/metrics", headers=auth) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
                scraped = time.time()
            async with http.get(api + "/api/v1/alerts", headers=auth) as resp:
                assert resp.status == 200
                alerts = await resp.json()
            async with http.get(api + "/api/v1/alerts?min_severity=warning",
                                headers=auth) as resp:
                serious = await resp.json()
            async with http.get(api + "/api/v1/alerts?min_severity=bad",
                                headers=auth) as resp:
                assert resp.status == 400
    finally:
        if daemon is not None:
            assert daemon.stop() == 0, daemon.log()[-3000:]
        await receiver.stop()
    assert "Traceback" not in daemon.log()

    families = _families(text)
    not_after = datetime.fromisoformat(row["not_after"]).timestamp()
    assert _value(families["certd_certificate_not_after_timestamp_seconds"],
                  "certd_certificate_not_after_timestamp_seconds",
                  certificate="mon") == pytest.approx(not_after, abs=1)
    expiry = families["certd_served_certificate_expiry_seconds"]
    stale = families["certd_served_certificate_stale"]
    for node in NODES:
        left = _value(expiry, "certd_served_certificate_expiry_seconds",
                      domain=WATCHED, node=node)
        assert abs(left - (not_after - scraped)) < 60, (node, left)
        assert _value(stale, "certd_served_certificate_stale", domain=WATCHED, node=node) == 0
    renewals = families["certd_renewals"]
    assert _value(renewals, "certd_renewals_total", result="ok") >= 1
    assert _value(renewals, "certd_renewals_total", result="failed") == 0
    challenges = families["certd_challenge_requests"]
    assert {s.labels["result"] for s in challenges} >= {"served", "not_found", "error"}
    assert all(s.name == "certd_challenge_requests_total" for s in challenges)
    findings = families["certd_monitor_findings"]
    assert _value(findings, "certd_monitor_findings", severity="critical") == 0
    assert _value(findings, "certd_monitor_findings", severity="info") >= 2
    assert "certd_monitor_last_sweep_timestamp_seconds" in families

    # the active findings: info only (R29 on both nodes), nothing at warning or above
    assert set(alerts) == {"items"} and alerts["items"], alerts
    for item in alerts["items"]:
        assert {"check", "severity", "domain", "node", "certificate", "message", "serial",
                "not_after", "days_remaining", "first_seen", "last_seen",
                "notified_at"} <= set(item)
        assert item["severity"] == "info" and item["certificate"] == "mon"
        assert item["node"] in NODES and item["domain"] == WATCHED
    assert serious == {"items": []}
    assert receiver.bodies == []  # info findings stay below the webhook's min_severity


async def test_daemon_forwards_issue_failure_to_webhook_and_mail(lab, pebble90, root_file,
                                                                 tmp_path):
    ca = trustme.CA()
    smtp = await asyncio.to_thread(lambda: SmtpServer(ca).start())
    receiver = await WebhookReceiver().start()
    mail = mail_config(tmp_path, smtp, ca).model_dump(mode="json", by_alias=True,
                                                      exclude={"timeout"})
    cfg = _daemon_config(lab, pebble90, root_file, tmp_path, [_cert("monfail", BROKEN)],
                         [{"type": "webhook", "url": receiver.url}, mail])
    lab.add_a(BROKEN, "127.0.0.9")
    daemon = None
    try:
        daemon = Daemon(cfg, tmp_path / "certd.log")
        await asyncio.to_thread(daemon.wait_log, "sweep done")
        # the forwarder starts at the newest event when the daemon starts: a failure
        # recorded now (by another process sharing the store) is certainly after it
        out = await asyncio.to_thread(certd, cfg, "renew", "monfail")
        assert out.returncode == 1 and "failed" in out.stderr
        deadline = time.monotonic() + 75  # the forwarder runs every 30 s
        while time.monotonic() < deadline and not (_failures(receiver) and smtp.messages):
            await asyncio.sleep(0.5)
        assert _failures(receiver), (receiver.bodies, daemon.log()[-3000:])
        assert smtp.messages, daemon.log()[-3000:]
    finally:
        lab.clear_a(BROKEN)
        if daemon is not None:
            assert daemon.stop() == 0, daemon.log()[-3000:]
        await receiver.stop()
        await asyncio.to_thread(smtp.stop)
    assert "Traceback" not in daemon.log()

    sent = _failures(receiver)
    assert len(sent) == 1  # the daemon's own failure and the CLI's: one notice within `repeat`
    body = sent[0]
    assert body["severity"] == "error" and body["node"] is None
    assert "urn:ietf:params:acme:error:" in body["message"]
    assert "monfail" in body["text"] and body["at"]
    assert all(b["event"] == "issue.failed" for b in receiver.bodies)
    mails = [m for m in smtp.messages if "monfail" in m["Subject"]]
    assert len(mails) == 1 and "issue.failed" in mails[0].get_content()


def _failures(receiver: WebhookReceiver) -> list[dict]:
    return [b for b in receiver.bodies
            if b["event"] == "issue.failed" and b["certificate"] == "monfail"]
