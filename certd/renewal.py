"""When a certificate is due, and how long to wait after a failure. Pure functions of time.

Renewal time, in this order: the CA's ARI window (a random moment inside it, picked when the
window was fetched); else the configured `before_expiry`; else a third of the lifetime before
expiry (half for lifetimes under 10 days): 30 days for 90-day certificates, 15 for 45-day ones.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from certd.issuance.ari import check_due as ari_check_due
from certd.issuance.ari import renew_at as ari_renew_at
from certd.model import AriState, IssuedCertificate

SHORT_LIFETIME = timedelta(days=10)
BACKOFF = (timedelta(minutes=1), timedelta(minutes=10), timedelta(minutes=100), timedelta(days=1))
# Retry-After is honoured up to the longest rate-limit window (7 days); beyond that a CA's
# value is an error, and a huge one would overflow the date arithmetic after it.
MAX_RETRY_AFTER = timedelta(days=7)


@dataclass(frozen=True)
class Plan:
    at: datetime
    reason: str  # ari | before_expiry | lifetime


def lifetime_time(cert: IssuedCertificate) -> datetime:
    """One third of the lifetime before expiry (30 days of 90), half for lifetimes under 10 days."""
    lifetime = cert.not_after - cert.not_before
    share = lifetime / 2 if lifetime < SHORT_LIFETIME else lifetime / 3
    return cert.not_after - share


def plan(cert: IssuedCertificate, *, before_expiry: timedelta | None = None,
         ari: AriState | None = None) -> Plan:
    """When to renew `cert`, and why."""
    at = ari_renew_at(cert, ari)
    if at is not None:
        return Plan(at, "ari")
    if before_expiry is not None:
        # a fixed lead time is for one lifetime (30 days of 90): on a certificate so short
        # that it would renew before half its life, the lifetime rule decides instead (else
        # a 6-day certificate with `before_expiry: 30d` is due at issuance, forever)
        lifetime = cert.not_after - cert.not_before
        if before_expiry <= lifetime / 2:
            return Plan(cert.not_after - before_expiry, "before_expiry")
    return Plan(lifetime_time(cert), "lifetime")


def renewal_time(cert: IssuedCertificate) -> datetime:
    return plan(cert).at


def needs_certificate(cert: IssuedCertificate | None, domains: tuple[str, ...],
                      now: datetime, when: Plan | None = None) -> str | None:
    """Why a new certificate is needed now ('missing', 'domains changed', 'expired',
    'due (ari)', ...), or None if the stored one is good."""
    if cert is None:
        return "missing"
    if set(cert.domains) != set(domains):
        return "domains changed"
    if now >= cert.not_after:
        return "expired"
    when = when or plan(cert)
    if now >= when.at:
        return f"due ({when.reason})"
    return None


def backoff(attempts: int, retry_after: float | None = None,
            rng: random.Random | None = None,
            steps: tuple[timedelta, ...] | list[timedelta] = BACKOFF) -> timedelta:
    """Delay before attempt number `attempts + 1` after `attempts` consecutive failures:
    by default about 1 min, 10 min, 100 min, then daily (±10 % jitter), never less than
    Retry-After."""
    base = steps[min(max(attempts, 1), len(steps)) - 1]
    delay = base * (rng or random).uniform(0.9, 1.1)
    if retry_after is not None and not math.isnan(retry_after):  # clamped before timedelta()
        seconds = min(max(retry_after, 0.0), MAX_RETRY_AFTER.total_seconds())
        delay = max(delay, timedelta(seconds=seconds))
    return delay


@dataclass(frozen=True)
class Due:
    name: str
    reason: str
    at: datetime  # when it became due (the most overdue go first)


@dataclass(frozen=True)
class Decision:
    """What one sweep should do, decided from stored facts and the clock alone."""

    due: list[Due]  # ordered most urgent first
    ari_checks: list[str]  # names whose ARI window should be fetched now
    deploy: list[str]  # names issued but not yet on every node
    wake_at: datetime | None  # the earliest moment something becomes due


def decide(specs, overview: dict, now: datetime, *, before_expiry: timedelta | None,
           ari: bool, unfinished: set[str] = frozenset()) -> Decision:
    """`specs`: CertificateSpec-like (name, domains); `overview`: Store.overview();
    `unfinished`: names with an interrupted order to resume."""
    due: list[Due] = []
    ari_checks: list[str] = []
    deploy: list[str] = []
    wake: list[datetime] = []
    for spec in specs:
        cert, state, window = overview.get(spec.name, (None, None, None))
        if state is not None and state.status.value == "issued":
            deploy.append(spec.name)
        if ari and cert is not None and now < cert.not_after:
            if ari_check_due(cert, window, now):
                ari_checks.append(spec.name)
            else:
                wake.append(window.next_check_at)
        if state is not None and state.next_attempt_at and state.next_attempt_at > now:
            wake.append(state.next_attempt_at)  # backing off
            continue
        when = plan(cert, before_expiry=before_expiry, ari=window) if cert else None
        reason = needs_certificate(cert, tuple(spec.domains), now, when)
        if reason is None and spec.name in unfinished:
            reason = "resume"
        if reason is None:
            wake.append(when.at)
            continue
        if cert is None or reason in ("domains changed", "resume"):
            since = state.next_attempt_at if state and state.next_attempt_at else now
        else:
            since = min(when.at, cert.not_after)
        due.append(Due(spec.name, reason, since))
    due.sort(key=lambda d: d.at)
    return Decision(due, ari_checks, deploy, min(wake) if wake else None)
