"""When a certificate is due, and how long to wait after a failure. Pure functions of time.

The renewal issue adds the CA's ARI window and `renewal.before_expiry` in front of the
lifetime rule below; callers already pass through `renewal_time()` only.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from certd.model import IssuedCertificate

SHORT_LIFETIME = timedelta(days=10)
BACKOFF = (timedelta(minutes=1), timedelta(minutes=10), timedelta(minutes=100), timedelta(days=1))


def renewal_time(cert: IssuedCertificate) -> datetime:
    """One third of the lifetime before expiry (30 days of 90), half for lifetimes under 10 days."""
    lifetime = cert.not_after - cert.not_before
    share = lifetime / 2 if lifetime < SHORT_LIFETIME else lifetime / 3
    return cert.not_after - share


def needs_certificate(cert: IssuedCertificate | None, domains: tuple[str, ...],
                      now: datetime) -> str | None:
    """Why a new certificate is needed now ('missing', 'domains changed', 'expired', 'due'),
    or None if the stored one is good."""
    if cert is None:
        return "missing"
    if set(cert.domains) != set(domains):
        return "domains changed"
    if now >= cert.not_after:
        return "expired"
    if now >= renewal_time(cert):
        return "due"
    return None


def backoff(attempts: int, retry_after: float | None = None,
            rng: random.Random | None = None) -> timedelta:
    """Delay before attempt number `attempts + 1` after `attempts` consecutive failures:
    about 1 min, 10 min, 100 min, then daily (±10 % jitter), never less than Retry-After."""
    base = BACKOFF[min(max(attempts, 1), len(BACKOFF)) - 1]
    delay = base * (rng or random).uniform(0.9, 1.1)
    if retry_after is not None:
        delay = max(delay, timedelta(seconds=retry_after))
    return delay
