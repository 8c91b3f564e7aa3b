"""Certificates the lab makes for itself (never the ones under test).

* a throwaway CA (trustme) and, signed by it, pebble's HTTPS listener certificate
  with SANs ``IP:127.0.0.1`` and ``DNS:localhost`` (Go refuses certificates without SANs);
* a self-signed fallback certificate each nginx serves for names it has no
  certificate for, so it can start before certd has deployed anything.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["ListenerCA", "write_self_signed", "FALLBACK_CN"]

FALLBACK_CN = "certd-lab-fallback.invalid"


class ListenerCA:
    """A CA for the lab's own HTTPS listeners (pebble's directory and management API).

    Attributes:
        bundle: PEM file with the CA certificate, to pass as ``verify=``/``cafile=``.
        cert_path, key_path: the listener certificate (for 127.0.0.1 and localhost) and key.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="certd test lab")
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        self.bundle = directory / "listener-ca.pem"
        self.cert_path = directory / "listener-cert.pem"
        self.key_path = directory / "listener-key.pem"
        ca.cert_pem.write_to_path(str(self.bundle))
        # Leaf first, then the chain, as Go's tls.LoadX509KeyPair expects.
        self.cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(self.key_path))
        os.chmod(self.key_path, 0o600)


def write_self_signed(directory: Path, common_name: str = FALLBACK_CN) -> x509.Certificate:
    """Write ``fullchain.pem`` and ``privkey.pem`` for a self-signed P-256 certificate.

    Returns the certificate, so callers can recognise it when it is served.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(common_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "privkey.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_file, 0o600)
    return cert
