"""Expiry thresholds against renewal timing, for every lifetime the CA world has in 2026-2029
(issue 14, item 5): 160-hour shortlived, 45-day tlsserver, classic at 90, 64 and 45 days,
200-day and 397-day certificates."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from certd import renewal
from certd.config import MonitorConfig
from certd.model import IssuedCertificate
from certd.monitor.checks import REFERENCE_LIFETIME, Thresholds


@pytest.mark.parametrize("days", [1, 160 / 24, 9.9, 10, 30, 45, 59, 60, 64, 84, 89, 90, 200,
                                  397])
def test_monitor_warns_only_after_certd_would_have_renewed(days):
    """For every lifetime, the scaled expiry warning comes after the renewal point (a third
    of the lifetime left, half under 10 days): a healthy certd never raises one. 60-89 days
    (classic at 64 days from 2027) used to warn at 28 days, before a renewal at a third."""
    start = datetime(2027, 3, 1, tzinfo=timezone.utc)
    lifetime = timedelta(days=days)
    cert = IssuedCertificate("x", "01", ("x.test",), start, start + lifetime, "", "", "")
    warn, critical = Thresholds.from_config(MonitorConfig()).for_lifetime(lifetime)
    left_at_renewal = cert.not_after - renewal.plan(cert).at
    assert warn < left_at_renewal and critical <= warn
    if lifetime < REFERENCE_LIFETIME:
        assert warn == timedelta(days=28) * (lifetime / REFERENCE_LIFETIME)
