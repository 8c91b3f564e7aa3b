"""Keys, CSRs and certificate parsing. Pure functions over `cryptography`; CPU-bound ones
(RSA generation) are called through `asyncio.to_thread` by their callers."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)\r?\n-----END \1-----", re.DOTALL
)


def generate_key(key_type: str) -> PrivateKey:
    """A fresh private key: 'ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072' or 'rsa-4096'."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa-") and key_type[4:] in ("2048", "3072", "4096"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise ValueError(f"unknown key type {key_type!r}")


def key_to_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def key_from_pem(pem: str) -> PrivateKey:
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError("unsupported private key type")
    return key


def make_csr(key: PrivateKey, domains: tuple[str, ...] | list[str]) -> bytes:
    """DER CSR with every name as a SAN (the CN is left out, as CAs ignore or drop it)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def split_pem_certificates(text: str) -> list[x509.Certificate]:
    """Parse a PEM bundle that must hold only CERTIFICATE blocks (and whitespace).

    Raises ValueError naming what else was found: a private key, stray text, a bad block.
    """
    certs: list[x509.Certificate] = []
    pos = 0
    for match in _PEM_BLOCK.finditer(text):
        if text[pos:match.start()].strip():
            raise ValueError("text outside PEM blocks")
        if match.group(1) != "CERTIFICATE":
            raise ValueError(f"unexpected PEM block {match.group(1)!r}")
        try:
            certs.append(x509.load_pem_x509_certificate(match.group(0).encode("ascii")))
        except ValueError as exc:
            raise ValueError(f"certificate {len(certs) + 1} does not parse: {exc}") from None
        pos = match.end()
    if text[pos:].strip():
        raise ValueError("text outside PEM blocks")
    if not certs:
        raise ValueError("no certificate")
    return certs


def cert_to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return san.value.get_values_for_type(x509.DNSName)


def same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


@dataclass(frozen=True)
class CertInfo:
    serial: str
    not_before: datetime
    not_after: datetime
    domains: tuple[str, ...]
    fingerprint_sha256: str


def cert_info(cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        serial=serial_hex(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        domains=tuple(dns_names(cert)),
        fingerprint_sha256=fingerprint_sha256(cert),
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def self_signed(key: PrivateKey, name: str, days: int = 1) -> x509.Certificate:
    """A throwaway self-signed certificate (tests, placeholders)."""
    import datetime as _dt

    now = _dt.datetime.now(_dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=1))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
