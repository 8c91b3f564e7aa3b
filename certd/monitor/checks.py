"""Judge one probe: pure functions from a `ProbeResult` (plus what certd expects and the trust
store) to `Finding`s. No I/O except `load_trust_store`. Check ids are a contract — alert
dedupe keys on (check, domain, node):

unreachable, certificate (served DER unparseable), expiry, not_yet_valid, stale, chain,
chain_incomplete, chain_order, hostname, posture.signature (R21), posture.validity (R22),
posture.key (R23), posture.key_usage (R24), posture.eku (R25), posture.san (R26),
posture.aki (R28), posture.revocation (R29), protocol.ssl3, protocol.tls1.0,
protocol.tls1.1, protocol.modern, hsts. (R-numbers: the ANSSI TLS guide.)

Odd certificates never raise out of `evaluate`: what cannot be read becomes a `certificate`
finding. A message says what is wrong, not where: the finding's `domain` and `node` say that,
and every view (notices, `certd check`, the API) shows them next to it, once.
"""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.verification import (ExtensionPolicy, PolicyBuilder, Store,
                                            VerificationError)

from certd.config import MonitorConfig
from certd.errors import ConfigError
from certd.keys import serial_hex
from certd.model import Finding, Severity
from certd.monitor import posture
from certd.monitor.probe import ProbeResult

TrustStore = Store
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MAX_CHAIN = 10  # served certificates examined; a longer chain is reported, not walked
REFERENCE_LIFETIME = timedelta(days=90)  # the defaults (28 d / 7 d) are for this lifetime
# under this, expiry thresholds scale by lifetime / 90 days: the warning then always comes
# after certd's own renewal point (a third of the lifetime left, half under 10 days), for
# 64-day classic (2027) and 45-day tlsserver as for 160-hour shortlived certificates
SHORT_LIFETIME = REFERENCE_LIFETIME
PROTOCOL_CHECKS = {"SSLv3": "protocol.ssl3", "TLSv1": "protocol.tls1.0",
                   "TLSv1.1": "protocol.tls1.1"}

C, E, W, I = Severity.CRITICAL, Severity.ERROR, Severity.WARNING, Severity.INFO


@dataclass(frozen=True)
class Thresholds:
    warn_before: timedelta
    critical_before: timedelta
    stale_grace: timedelta
    hsts_min_age: timedelta

    @classmethod
    def from_config(cls, monitor: MonitorConfig) -> Thresholds:
        return cls(monitor.warn_before, monitor.critical_before, monitor.stale_grace,
                   monitor.hsts_min_age)

    def for_lifetime(self, lifetime: timedelta) -> tuple[timedelta, timedelta]:
        """(warn, critical) for a certificate of this lifetime: shorter than 90 days, they
        scale by lifetime/90d (64 days: ~19.9d/~5d; 45 days: 14d/3.5d; 160 hours:
        ~2.1d/~0.5d), past certd's renewal point."""
        if timedelta(0) < lifetime < SHORT_LIFETIME:
            scale = lifetime / REFERENCE_LIFETIME
            return self.warn_before * scale, self.critical_before * scale
        return self.warn_before, self.critical_before


@dataclass(frozen=True)
class Expected:
    """What certd believes the node should serve; None for extra endpoints."""

    serial: str | None  # certd's current serial (lower-case hex, as certd.keys.serial_hex)
    deployed_at: datetime | None  # when deployed to this node: the stale grace starts here


def load_trust_store(ca_bundle: Path | None) -> TrustStore:
    """The trust anchors from a PEM bundle; None: the system bundle. Blocking file I/O:
    call it at startup or through asyncio.to_thread. Raises ConfigError."""
    path = ca_bundle or Path(ssl.get_default_verify_paths().cafile or SYSTEM_BUNDLE)
    try:
        with warnings.catch_warnings():  # system bundles hold a few RFC-5280-odd roots
            warnings.simplefilter("ignore")
            return Store(x509.load_pem_x509_certificates(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise ConfigError("monitor.ca_bundle", [f"{path}: {exc}"]) from None


def evaluate(result: ProbeResult, *, expected: Expected | None, thresholds: Thresholds,
             trust: TrustStore, now: datetime) -> list[Finding]:
    """Every finding for what one node served for one name (empty: all good). `now` is
    timezone-aware UTC. Never raises on what the endpoint served."""
    t = result.target
    base = Finding("", I, t.domain, t.node, "", certificate=t.certificate)
    if result.error is not None:
        return [replace(base, check="unreachable", severity=E,
                        message=result.error)]
    found = _protocol_findings(result, base, thresholds)
    if not result.chain:
        return [replace(base, check="certificate", severity=E,
                        message="no certificate served"), *found]
    certs: list[x509.Certificate] = []
    problems: list[str] = []
    for i, der in enumerate(result.chain[:MAX_CHAIN]):
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            problems.append(f"served certificate #{i + 1} cannot be parsed: {exc}")
            break
    if not certs:
        return [*found, replace(base, check="certificate", severity=E,
                                message="; ".join(problems))]
    not_after = certs[0].not_valid_after_utc
    base = replace(base, serial=serial_hex(certs[0]), not_after=not_after,
                   days_remaining=round((not_after - now).total_seconds() / 86400, 1))
    ctx = _Context(result, certs, expected, thresholds, trust, now, base)
    # an unreadable intermediate: the leaf can still be judged, the chain cannot
    chain_checks: tuple[Check, ...] = () if problems else (_chain, _chain_order)
    for check in (_expiry, _stale, *chain_checks, _hostname, *posture.CHECKS):
        try:
            found.extend(check(ctx))
        except Exception as exc:  # noqa: BLE001 - odd certificates must not crash a sweep
            problems.append(f"cannot check {check.__name__.strip('_')}: "
                            f"{type(exc).__name__}: {exc}")
    if problems:
        found.append(replace(base, check="certificate", severity=E,
                             message="; ".join(problems)))
    return _dedupe(found)


@dataclass(frozen=True)
class _Context:
    result: ProbeResult
    certs: list[x509.Certificate]  # parsed served chain (at most MAX_CHAIN), leaf first
    expected: Expected | None
    thresholds: Thresholds
    trust: TrustStore
    now: datetime
    base: Finding

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[0]

    def finding(self, check: str, severity: Severity, message: str) -> Finding:
        return replace(self.base, check=check, severity=severity, message=message)


Check = Callable[[_Context], list[Finding]]


def _dedupe(found: list[Finding]) -> list[Finding]:
    """One finding per check id (the first), so alert keys stay unique."""
    seen: dict[str, Finding] = {}
    for f in found:
        seen.setdefault(f.check, f)
    return list(seen.values())


def _protocol_findings(result: ProbeResult, base: Finding,
                       thresholds: Thresholds) -> list[Finding]:
    found = [replace(base, check=PROTOCOL_CHECKS[p], severity=E,
                     message=f"accepts {p} (legacy protocol)")
             for p in result.legacy_protocols if p in PROTOCOL_CHECKS]
    if result.modern_protocols is False:
        found.append(replace(base, check="protocol.modern", severity=C,
                             message=f"negotiated {result.tls_version}: "
                                     "no TLS 1.2 or 1.3"))
    if result.hsts_checked:
        problem = posture.hsts_problem(result.hsts, thresholds.hsts_min_age)
        if problem:
            found.append(replace(base, check="hsts", severity=W, message=problem))
    return found


def _expiry(ctx: _Context) -> list[Finding]:
    leaf, now = ctx.leaf, ctx.now
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    found = []
    if now < not_before:
        found.append(ctx.finding("not_yet_valid", C,
                                 f"not valid before {not_before:%Y-%m-%d %H:%M}Z"))
    left = not_after - now
    warn, critical = ctx.thresholds.for_lifetime(not_after - not_before)
    days = left.total_seconds() / 86400
    if left <= timedelta(0):
        found.append(ctx.finding("expiry", C, f"expired {-days:.1f} days ago "
                                              f"({not_after:%Y-%m-%d %H:%M}Z)"))
    elif left < warn:
        severity = C if left < critical else W
        found.append(ctx.finding("expiry", severity, f"expires in {days:.1f} days "
                                                     f"({not_after:%Y-%m-%d %H:%M}Z)"))
    return found


def _stale(ctx: _Context) -> list[Finding]:
    exp = ctx.expected
    if exp is None or exp.serial is None or ctx.base.serial == exp.serial.lower():
        return []
    if exp.deployed_at is not None and ctx.now <= exp.deployed_at + ctx.thresholds.stale_grace:
        return []
    expired = ctx.now >= ctx.leaf.not_valid_after_utc
    return [ctx.finding("stale", C if expired else W,
                        f"serves serial {ctx.base.serial}{' (expired)' if expired else ''}, "
                        f"certd's current certificate is {exp.serial}")]


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):  # e.g. SHA-1: trust the names
        pass
    return True


def _chain(ctx: _Context) -> list[Finding]:
    served = len(ctx.result.chain)
    if served > MAX_CHAIN:
        return [ctx.finding("chain", C, f"serves {served} certificates (over {MAX_CHAIN}): "
                                        "not examined further")]
    leaf = ctx.leaf
    # Trust only: expiry, names and extensions are separate findings, so verify at a time
    # inside the leaf's validity, without a name, with no end-entity extension policy.
    when = min(max(ctx.now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
    verifier = (PolicyBuilder().store(ctx.trust).time(when).max_chain_depth(MAX_CHAIN)
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                    ee_policy=ExtensionPolicy.permit_all())
                .build_client_verifier())
    try:
        verifier.verify(leaf, ctx.certs[1:])
        return []
    except VerificationError as exc:
        reason = str(exc).removeprefix("validation failed: ").split(" (encountered", 1)[0]
    if _self_signed(leaf):
        return [ctx.finding("chain", C, "self-signed certificate, not in the trust store")]
    if len(ctx.certs) == 1:
        issuer = leaf.issuer.rfc4514_string()
        return [ctx.finding("chain_incomplete", E, f"only the leaf is served and its issuer "
                                                   f"({issuer}) is not a trust anchor: "
                                                   "intermediate missing?")]
    if "candidates exhausted" in reason:  # cryptography's words for "no path to a root"
        issuer = ctx.certs[-1].issuer.rfc4514_string()
        reason = f"no path to a trusted root (the last served certificate's issuer: {issuer})"
    return [ctx.finding("chain", C, f"does not verify against the trust store: {reason}")]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _chain_order(ctx: _Context) -> list[Finding]:
    certs = ctx.certs
    if len(certs) > 1 and _is_ca(certs[0]) and not all(_is_ca(c) for c in certs[1:]):
        return [ctx.finding("chain_order", W, "the leaf is not the first certificate served")]
    for i in range(len(certs) - 1):
        try:
            certs[i].verify_directly_issued_by(certs[i + 1])
        except Exception:  # noqa: BLE001 - wrong issuer name, bad signature, odd key type
            return [ctx.finding("chain_order", W,
                                f"served certificate #{i + 1} ({certs[i].subject.rfc4514_string()})"
                                f" is not issued by #{i + 2} "
                                f"({certs[i + 1].subject.rfc4514_string()})")]
    return []


def _hostname(ctx: _Context) -> list[Finding]:
    domain = ctx.result.target.domain
    if posture.covers(ctx.leaf, domain):
        return []
    names = posture.dns_names(ctx.leaf)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "none"
    return [ctx.finding("hostname", C,
                        f"certificate does not cover {domain} (SAN DNS: {shown})")]
