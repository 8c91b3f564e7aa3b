"""Migration from certbot against real software: the real certbot (PyPI, in .certbot-venv:
`bash scripts/certbot-venv`) obtains certificates from the lab's pebble, answering HTTP-01
behind the lab's haproxy and nginx where certd's challenge listener will later be; certd
imports its live/ + renewal/ + accounts/ tree; the daemon deploys the imported certificate
to both nginx nodes, `certd check` probes it, all without a new order (pebble's order count);
then, made due by the config, certd renews it through certbot's own ACME account."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from certd.model import utcnow
from tests.certd_lab import Daemon, lab_config_data, poll, served_serial, write_config
from tests.certd_lab import run_certd as certd
from tests.lab.salt import REPO_ROOT
from tests.test_import import snapshot

pytestmark = pytest.mark.lab

CERTBOT_VENV = REPO_ROOT / ".certbot-venv"
CERTBOT = CERTBOT_VENV / "bin" / "certbot"
DAY = 86400
MIG = {"name": "mig", "domains": ["mig.test", "www.mig.test"], "frontends": ["web"]}


def run_certbot(lab, pebble, config_dir: Path, *domains: str) -> subprocess.CompletedProcess:
    """`certbot certonly --standalone` against `pebble`, its HTTP-01 responder where the lab's
    nginx nodes send /.well-known/acme-challenge/ (certd's challenge listener address: certd
    is not running yet). Killed by PID after 120 s."""
    host, port = lab.challenge_listen.rsplit(":", 1)
    work = config_dir.parent
    return subprocess.run(
        [str(CERTBOT), "certonly", "--standalone", "--non-interactive", "--agree-tos",
         "--register-unsafely-without-email", "--server", pebble.directory_url,
         "--config-dir", str(config_dir), "--work-dir", str(work / "work"),
         "--logs-dir", str(work / "logs"), "--http-01-address", host, "--http-01-port", port,
         *(arg for d in domains for arg in ("-d", d))],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "REQUESTS_CA_BUNDLE": str(pebble.ca_bundle)})


def serials_served(lab, domain: str) -> set[str]:
    return {served_serial(lab, n.name, domain) for n in lab.nodes}


def test_certbot_tree_imported_deployed_monitored_renewed(lab, tmp_path):
    if not CERTBOT.exists():
        pytest.fail(f"certbot is not installed in {CERTBOT_VENV}: run `bash scripts/certbot-venv`",
                    pytrace=False)
    timings = {}
    pebble = lab.start_pebble(validity_seconds=90 * DAY)  # Let's Encrypt's lifetime
    daemon = None
    try:
        lab.set_sites({"mig": ["mig.test", "www.mig.test"], "other.test": ["other.test"]})
        le = tmp_path / "letsencrypt" / "config"
        started = time.monotonic()
        for domains in (["mig.test", "www.mig.test"], ["other.test"]):
            made = run_certbot(lab, pebble, le, *domains)
            assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-3000:]
        timings["certbot, 2 certificates"] = time.monotonic() - started
        assert (le / "live" / "mig.test" / "fullchain.pem").is_symlink()  # certbot's own tree
        certbot_serial = format(x509.load_pem_x509_certificate(
            (le / "live" / "mig.test" / "cert.pem").read_bytes()).serial_number, "x")
        orders = pebble.count_new_orders()
        assert orders == 2

        root = tmp_path / "pebble-root.pem"
        root.write_text(pebble.root_pem())
        data = lab_config_data(lab, tmp_path / "state", [MIG], pebble)
        data["monitor"] = {"ca_bundle": str(root)}
        config = write_config(tmp_path / "certd.yaml", data)

        started = time.monotonic()
        dry = certd(config, "import", "--certbot", str(le), "--dry-run")
        assert dry.returncode == 0, dry.stderr[-2000:]
        assert f"-> mig: would import: serial {certbot_serial}" in dry.stdout
        assert "- name: other.test" in dry.stdout  # matches nothing configured: the entry
        assert not (tmp_path / "state" / "certd.db").exists()

        imported = certd(config, "import", "--certbot", str(le))
        assert imported.returncode == 0, imported.stderr[-2000:]
        timings["certd import --certbot"] = time.monotonic() - started
        assert "imported 1 certificate(s): mig" in imported.stdout
        assert "ACME account: imported" in imported.stdout
        account_uri = json.loads(next((le / "accounts").rglob("regr.json")).read_text())["uri"]
        assert snapshot(tmp_path, pebble.directory_url).account.uri == account_uri

        # the entry it printed, added to the config; that certificate imported from its
        # files (the pair form) and deployed at once
        data["certificates"].append({"name": "other.test", "domains": ["other.test"],
                                     "frontends": ["web"]})
        write_config(config, data)
        live = le / "live" / "other.test"
        other = certd(config, "import", "other.test", "--cert", str(live / "fullchain.pem"),
                      "--key", str(live / "privkey.pem"), "--deploy")
        assert other.returncode == 0, other.stdout[-2000:] + other.stderr[-2000:]
        other_serial = snapshot(tmp_path, pebble.directory_url).current["other.test"].serial
        assert serials_served(lab, "other.test") == {other_serial}
        assert other.stdout.count(": ok:") == 2

        # the daemon deploys the imported certificate; nobody ordered anything
        started = time.monotonic()
        daemon = Daemon(config, tmp_path / "certd.log")
        poll(lambda: all(serials_served(lab, d) == {certbot_serial}
                         for d in ("mig.test", "www.mig.test")), timeout=60)
        timings["daemon start to served on both nodes"] = time.monotonic() - started
        status = {r["name"]: r for r in json.loads(certd(config, "status", "--json").stdout)}
        assert status["mig"]["serial"] == certbot_serial
        assert status["mig"]["deployed_nodes"] == ["web/fe1", "web/fe2"]
        assert pebble.count_new_orders() == orders  # imported, not ordered

        # monitored: every node x name probed, nothing wrong with what they serve
        checked = certd(config, "check", "--json", "mig")
        report = json.loads(checked.stdout)
        assert checked.returncode == 0, report
        assert report["probes"] >= 4 and report["pending"] == 0
        assert not [f for f in report["findings"] if f["severity"] != "info"], report
        daemon.stop()
        daemon = None
        snap = snapshot(tmp_path, pebble.directory_url)
        assert [e.kind for e in snap.events if e.kind.startswith("issue.")] == []
        assert snap.imported["mig"][0].data["same_account"] is True

        # renewed through the account certbot registered: forced, as no config makes a fresh
        # 90-day certificate due (a `before_expiry` past half the lifetime is not applied:
        # certd.renewal.plan), then deployed
        started = time.monotonic()
        renewed = certd(config, "renew", "--force", "--all")
        assert renewed.returncode == 0, renewed.stdout[-2000:] + renewed.stderr[-2000:]
        poll(lambda: len(serials_served(lab, "mig.test")) == 1
             and serials_served(lab, "mig.test") != {certbot_serial}, timeout=60)
        timings["certd renew --force to renewed and served"] = time.monotonic() - started
        assert pebble.count_new_orders() == orders + 2  # mig and other.test, once each
        snap = snapshot(tmp_path, pebble.directory_url)
        renewed = snap.current["mig"]
        assert renewed.serial != certbot_serial and renewed.order_url
        assert renewed.not_after > utcnow()
        assert snap.account.uri == account_uri  # no new registration
    finally:
        if daemon is not None:
            daemon.stop()
        pebble.stop()
        print("timings:", {k: round(v, 2) for k, v in timings.items()})
