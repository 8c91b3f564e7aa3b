"""Certificate posture checks after the ANSSI TLS guide (R21-R29), RFC 6125 name matching,
and the HSTS header. Pure functions over `cryptography` certificates; used by
`certd.monitor.checks`, which catches anything odd a certificate makes them raise."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from certd.model import Finding, Severity

MAX_LIFETIME = timedelta(days=398)  # CA/Browser Forum limit (ANSSI R22 says 3 years)
MIN_RSA, MIN_EC = 2048, 256
WEAK_HASHES = (hashes.SHA1, hashes.MD5)

C, E, W, I = Severity.CRITICAL, Severity.ERROR, Severity.WARNING, Severity.INFO


class Context(Protocol):
    @property
    def leaf(self) -> x509.Certificate: ...
    @property
    def certs(self) -> list[x509.Certificate]: ...
    def finding(self, check: str, severity: Severity, message: str) -> Finding: ...


def _ext(cert: x509.Certificate, kind: type) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def signature(ctx: Context) -> list[Finding]:
    """R21: SHA-2 signatures (the leaf and the intermediates served; roots do not matter)."""
    weak = [f"#{i + 1} {c.signature_hash_algorithm.name}"  # type: ignore[union-attr]
            for i, c in enumerate(ctx.certs)
            if isinstance(c.signature_hash_algorithm, WEAK_HASHES)
            and not (i and _self_issued(c))]
    if not weak:
        return []
    return [ctx.finding("posture.signature", E, "weak signature hash: " + ", ".join(weak))]


def validity(ctx: Context) -> list[Finding]:
    """R22: lifetime within today's CA/B limit."""
    lifetime = ctx.leaf.not_valid_after_utc - ctx.leaf.not_valid_before_utc
    if lifetime <= MAX_LIFETIME:
        return []
    return [ctx.finding("posture.validity", W,
                        f"valid for {lifetime.days} days (over {MAX_LIFETIME.days})")]


def key(ctx: Context) -> list[Finding]:
    """R23: RSA >= 2048 bits, EC >= 256 bits, no DSA."""
    public = ctx.leaf.public_key()
    problem = None
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA:
        problem = f"RSA key of {public.key_size} bits (under {MIN_RSA})"
    elif isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size < MIN_EC:
        problem = f"EC key on {public.curve.name} (under {MIN_EC} bits)"
    elif isinstance(public, dsa.DSAPublicKey):
        problem = f"DSA key of {public.key_size} bits"
    return [ctx.finding("posture.key", E, problem)] if problem else []


def key_usage(ctx: Context) -> list[Finding]:
    """R24: KeyUsage present with digitalSignature (or keyEncipherment for RSA key exchange),
    and no CA usages on a server certificate."""
    usage = _ext(ctx.leaf, x509.KeyUsage)
    if usage is None:
        return [ctx.finding("posture.key_usage", W, "no KeyUsage extension")]
    assert isinstance(usage, x509.KeyUsage)
    rsa_key = isinstance(ctx.leaf.public_key(), rsa.RSAPublicKey)
    if not (usage.digital_signature or (rsa_key and usage.key_encipherment)):
        return [ctx.finding("posture.key_usage", W, "KeyUsage lacks digitalSignature"
                            + (" and keyEncipherment" if rsa_key else ""))]
    if (usage.key_cert_sign or usage.crl_sign) and not _self_issued(ctx.leaf):
        return [ctx.finding("posture.key_usage", W, "KeyUsage of a server certificate "
                                                    "allows keyCertSign/cRLSign")]
    return []


def eku(ctx: Context) -> list[Finding]:
    """R25: ExtendedKeyUsage with serverAuth."""
    usages = _ext(ctx.leaf, x509.ExtendedKeyUsage)
    if usages is None:
        return [ctx.finding("posture.eku", W, "no ExtendedKeyUsage extension (serverAuth)")]
    if ExtendedKeyUsageOID.SERVER_AUTH not in usages:  # type: ignore[operator]
        return [ctx.finding("posture.eku", W, "ExtendedKeyUsage lacks serverAuth")]
    return []


def san(ctx: Context) -> list[Finding]:
    """R26: a SubjectAlternativeName with DNS names (browsers ignore the CN)."""
    names = _ext(ctx.leaf, x509.SubjectAlternativeName)
    if names is None:
        return [ctx.finding("posture.san", E, "no SubjectAlternativeName extension")]
    return []


def aki(ctx: Context) -> list[Finding]:
    """R28: AuthorityKeyIdentifier on anything not self-signed."""
    if _self_issued(ctx.leaf) or _ext(ctx.leaf, x509.AuthorityKeyIdentifier) is not None:
        return []
    return [ctx.finding("posture.aki", W, "no AuthorityKeyIdentifier extension")]


def revocation(ctx: Context) -> list[Finding]:
    """R29: a CRL distribution point or an OCSP responder (info only: test CAs have none)."""
    if _self_issued(ctx.leaf) or _ext(ctx.leaf, x509.CRLDistributionPoints) is not None:
        return []
    aia = _ext(ctx.leaf, x509.AuthorityInformationAccess)
    if aia is not None and any(d.access_method == AuthorityInformationAccessOID.OCSP
                               for d in aia):  # type: ignore[attr-defined]
        return []
    return [ctx.finding("posture.revocation", I, "no CRL distribution point nor OCSP responder")]


CHECKS: Sequence[Callable[[Context], list[Finding]]] = (
    signature, validity, key, key_usage, eku, san, aki, revocation)


# ----------------------------------------------------------------- names (RFC 6125)

def dns_names(cert: x509.Certificate) -> list[str]:
    names = _ext(cert, x509.SubjectAlternativeName)
    if names is None:
        return []
    values = names.get_values_for_type(x509.DNSName)  # type: ignore[attr-defined]
    return [n.lower().rstrip(".") for n in values]


def _ascii(name: str) -> str:
    name = name.lower().rstrip(".")
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def matches(pattern: str, host: str) -> bool:
    """RFC 6125 6.4: exact, or '*' as the whole left-most label standing for exactly one
    label; no partial wildcards, none over a public suffix-looking single label."""
    pattern, host = _ascii(pattern), _ascii(host)
    if pattern == host:
        return True
    if not pattern.startswith("*.") or "*" in pattern[2:]:
        return False
    rest = pattern[2:]
    label, _, host_rest = host.partition(".")
    return bool(label) and "." in rest and host_rest == rest


def covers(cert: x509.Certificate, domain: str) -> bool:
    try:
        address = ipaddress.ip_address(domain)
    except ValueError:
        return any(matches(p, domain) for p in dns_names(cert))
    names = _ext(cert, x509.SubjectAlternativeName)
    if names is None:
        return False
    return address in names.get_values_for_type(x509.IPAddress)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------- HSTS

_MAX_AGE = re.compile(r'^\s*max-age\s*=\s*"?(\d+)"?\s*$', re.IGNORECASE)


def hsts_problem(header: str | None, min_age: timedelta) -> str | None:
    """Why a Strict-Transport-Security value (RFC 6797) is missing or too short; None if fine."""
    if header is None:
        return "no Strict-Transport-Security header"
    for directive in header.split(";"):
        m = _MAX_AGE.match(directive)
        if m:
            digits = m.group(1)  # past 12 digits it is longer than any minimum anyway (and
            age = int(digits) if len(digits) <= 12 else 10**12  # int() refuses 4,300+ digits)
            if age < min_age.total_seconds():
                minimum = int(min_age.total_seconds())
                return f"Strict-Transport-Security max-age={age} (under {minimum})"
            return None
    return f"Strict-Transport-Security without max-age: {header[:100]!r}"
