"""160-hour (`shortlived`) certificates end to end (issue 14, item 5): real 6-day certificates
from pebble (`certificateValidityPeriod`), deployed through the lab's frontends, watched by
the monitor with thresholds scaled to the lifetime, and renewed at half-lifetime by the
daemon alone.

Nobody waits 80 hours: certd's own clock is moved with libfaketime (Debian's `faketime`,
LD_PRELOAD, CLOCK_REALTIME only; the monotonic clock that asyncio sleeps on is left alone).
pebble is a Go program (no libc clock calls): it keeps real time, so the certificates it
issues are real 160-hour ones, dated now.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from certd import renewal
from certd.config import MonitorConfig
from certd.monitor.checks import Thresholds
from tests.certd_lab import Daemon, lab_config_data, write_config
from tests.certd_lab import run_certd as certd
from tests.test_renewal_lab import stored, wait_new_serial

pytestmark = pytest.mark.lab

HOURS = 3600
LIFETIME = 160 * HOURS  # Let's Encrypt's shortlived profile
DOMAIN = "six.test"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def faked(offset_file: Path | None = None, offset: str | None = None) -> dict[str, str]:
    """The environment that moves a process's wall clock: by `offset` ("+81h"), or by what
    `offset_file` says, read again on every clock call (so a test can move it while the
    daemon runs)."""
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} missing: apt-get install faketime (scripts/test does)")
    env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    if offset_file is not None:
        env |= {"FAKETIME_TIMESTAMP_FILE": str(offset_file), "FAKETIME_NO_CACHE": "1"}
    else:
        env["FAKETIME"] = offset
    return env


def _lifetime(cert) -> int:
    """Seconds, rounded: pebble's notAfter is the last second included (validity - 1 s)."""
    return round((cert.not_after - cert.not_before).total_seconds() / 60) * 60


def _check(cfg: Path, offset: str) -> list[dict]:
    """`certd check --json` as if `offset` had passed: the expiry findings."""
    out = certd(cfg, "check", "--json", env=faked(offset=offset))
    assert out.returncode in (0, 1, 2) and "Traceback" not in out.stderr, out.stderr[-2000:]
    return [f for f in json.loads(out.stdout)["findings"] if f["check"] == "expiry"]


def test_six_day_certificates_renewed_at_half_lifetime_by_the_daemon(lab, tmp_path):
    pebble = lab.start_pebble(validity_seconds=LIFETIME)
    try:
        root = tmp_path / "pebble-root.pem"
        root.write_text(pebble.root_pem())
        lab.set_sites({"six": [DOMAIN]})
        data = lab_config_data(lab, tmp_path / "state",
                               [{"name": "six", "domains": [DOMAIN], "frontends": ["web"]}],
                               pebble)
        data["renewal"] = {"jitter": "0s", "sweep_interval": "2s"}
        data["monitor"] = {"enabled": False, "ca_bundle": str(root), "timeout": "5s"}
        cfg = write_config(tmp_path / "c.yaml", data)
        clock = tmp_path / "faketime"
        clock.write_text("+0\n")
        daemon = Daemon(cfg, tmp_path / "certd.log", env=faked(offset_file=clock))
        try:
            first = wait_new_serial(lab, DOMAIN, 0, timeout=60)
            cert, _ = stored(tmp_path / "state", "six")
            assert _lifetime(cert) == LIFETIME
            # half the lifetime (under 10 days), not a third, nor a fixed 30 days
            plan = renewal.plan(cert)
            assert plan.reason == "lifetime"
            assert plan.at == cert.not_before + (cert.not_after - cert.not_before) / 2
            row = {r["name"]: r for r in json.loads(certd(cfg, "status", "--json").stdout)}
            assert row["six"]["renewal_reason"] == "lifetime"
            assert row["six"]["renewal_at"] == plan.at.isoformat()

            # the monitor through both frontends, as the hours pass: quiet until well past the
            # renewal point (80 h), then warning (under ~2.1 days left), then critical
            assert _check(cfg, "+79h") == []
            warn, _ = Thresholds.from_config(MonitorConfig()).for_lifetime(
                cert.not_after - cert.not_before)
            assert cert.not_after - plan.at > warn  # the warning never precedes renewal
            late = _check(cfg, "+115h")  # 45 h left: under the scaled 50 h warning
            assert {(f["node"], f["severity"]) for f in late} == {
                ("web/fe1", "warning"), ("web/fe2", "warning")}, late
            assert all(1.7 < f["days_remaining"] < 2.0 for f in late)
            dire = _check(cfg, "+150h")  # 10 h left: under the scaled 12.4 h
            assert {f["severity"] for f in dire} == {"critical"}, dire

            # nothing due yet: sweeps go by (every ~10 s at most) and pebble issues nothing
            time.sleep(12)
            assert pebble.count_issued() == 1 and daemon.alive()

            # 81 hours later, for certd: the daemon renews on its own and deploys
            clock.write_text("+81h\n")
            second = wait_new_serial(lab, DOMAIN, first, timeout=60)
            clock.write_text("+0\n")  # pebble's new certificate is dated now: real time again
            renewed, events = stored(tmp_path / "state", "six")
            oks = sorted((e for e in events if e.kind == "issue.ok"), key=lambda e: e.id)
            # the first issuance, the renewal; one more at most, if a sweep started in the
            # instant before the clock went back (the new one is due at once in certd's +81 h)
            assert len(oks) in (2, 3) and pebble.count_issued() == len(oks), oks
            assert oks[0].data["reason"] == "missing"
            assert oks[1].data["reason"] == "due (lifetime)"
            assert oks[1].data["serial"] == format(second, "x") or len(oks) == 3
            assert _lifetime(renewed) == LIFETIME
            for node in lab.nodes:
                lab.wait_served_serial(node.name, DOMAIN, int(renewed.serial, 16), timeout=30)
            assert daemon.alive()
        finally:
            assert daemon.stop() == 0, daemon.log()[-3000:]
    finally:
        pebble.stop()
