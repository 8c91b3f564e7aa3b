"""certd/keys.py (PEM bundles, keys, CSRs) and certd/renewal.py (when to renew, how long to
back off), over real certificates made with `cryptography`."""

from __future__ import annotations

import base64
import random
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certd.keys import (
    b64url,
    cert_info,
    cert_to_pem,
    dns_names,
    generate_key,
    key_from_pem,
    key_to_pem,
    make_csr,
    same_public_key,
    self_signed,
    split_pem_certificates,
)
from certd.model import IssuedCertificate
from certd.renewal import BACKOFF, backoff, needs_certificate, renewal_time

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def key():
    return generate_key("ec-p256")


@pytest.fixture(scope="module")
def two_certs(key):
    return [self_signed(key, "a.example"), self_signed(generate_key("ec-p256"), "b.example")]


# --- keys --------------------------------------------------------------------------------

def test_split_accepts_two_certificates(two_certs):
    bundle = "".join(cert_to_pem(c) for c in two_certs)
    parsed = split_pem_certificates(bundle)
    assert [dns_names(c) for c in parsed] == [["a.example"], ["b.example"]]


def test_split_accepts_surrounding_whitespace_and_crlf(two_certs):
    bundle = "\n\n" + cert_to_pem(two_certs[0]).replace("\n", "\r\n") + "\n  \n" + \
        cert_to_pem(two_certs[1]) + "\n"
    assert len(split_pem_certificates(bundle)) == 2


def test_split_rejects_a_private_key_block(key, two_certs):
    bundle = cert_to_pem(two_certs[0]) + key_to_pem(key)
    with pytest.raises(ValueError, match="PRIVATE KEY"):
        split_pem_certificates(bundle)
    with pytest.raises(ValueError, match="PRIVATE KEY"):
        split_pem_certificates(key_to_pem(key) + cert_to_pem(two_certs[0]))


@pytest.mark.parametrize("where", ["before", "between", "after"])
def test_split_rejects_stray_text(two_certs, where):
    a, b = (cert_to_pem(c) for c in two_certs)
    bundle = {"before": "subject=CN = a\n" + a + b,
              "between": a + "issuer=CN = x\n" + b,
              "after": a + b + "trailing junk"}[where]
    with pytest.raises(ValueError, match="outside PEM"):
        split_pem_certificates(bundle)


def test_split_rejects_garbage_base64():
    garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match="does not parse"):
        split_pem_certificates(garbage)
    not_base64 = "-----BEGIN CERTIFICATE-----\n!!!!****\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError):
        split_pem_certificates(not_base64)


def test_split_rejects_a_truncated_certificate(two_certs):
    pem = cert_to_pem(two_certs[0])
    with pytest.raises(ValueError):
        split_pem_certificates(pem[: len(pem) // 2])


@pytest.mark.parametrize("text", ["", "   \n", "\r\n"])
def test_split_rejects_empty_input(text):
    with pytest.raises(ValueError, match="no certificate"):
        split_pem_certificates(text)


def test_split_rejects_mismatched_markers(two_certs):
    pem = cert_to_pem(two_certs[0]).replace("END CERTIFICATE", "END X509 CRL")
    with pytest.raises(ValueError):
        split_pem_certificates(pem)


@pytest.mark.parametrize("key_type, cls, size", [
    ("ec-p256", ec.EllipticCurvePrivateKey, 256),
    ("ec-p384", ec.EllipticCurvePrivateKey, 384),
    ("rsa-2048", rsa.RSAPrivateKey, 2048),
])
def test_generate_key_and_pem_round_trip(key_type, cls, size):
    k = generate_key(key_type)
    assert isinstance(k, cls) and k.key_size == size
    pem = key_to_pem(k)
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    again = key_from_pem(pem)
    assert key_to_pem(again) == pem


@pytest.mark.parametrize("key_type", ["rsa-1024", "dsa", "ec-p521", ""])
def test_generate_key_refuses_unknown_types(key_type):
    with pytest.raises(ValueError, match="unknown key type"):
        generate_key(key_type)


def test_csr_carries_every_name_as_san(key):
    der = make_csr(key, ["a.example", "xn--bcher-kva.example"])
    csr = x509.load_der_x509_csr(der)
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example", "xn--bcher-kva.example"]
    assert list(csr.subject) == []


def test_cert_info_and_same_public_key(key, two_certs):
    info = cert_info(two_certs[0])
    assert info.domains == ("a.example",)
    assert info.serial == format(two_certs[0].serial_number, "x")
    assert info.not_before.tzinfo is not None
    assert len(info.fingerprint_sha256) == 64
    assert same_public_key(two_certs[0], key)
    assert not same_public_key(two_certs[1], key)


def test_b64url_has_no_padding():
    assert b64url(b"\xff\xfe") == "__4"
    assert base64.urlsafe_b64decode(b64url(b"abcd") + "==") == b"abcd"


# --- renewal time --------------------------------------------------------------------------

def issued(days: float, *, start: datetime = T0, domains=("a.example",)) -> IssuedCertificate:
    return IssuedCertificate(name="portal", serial="01", domains=tuple(domains),
                             not_before=start, not_after=start + timedelta(days=days),
                             cert_pem="", chain_pem="", key_pem="")


@pytest.mark.parametrize("days, before", [
    (90, timedelta(days=30)),
    (45, timedelta(days=15)),
    (6, timedelta(days=3)),  # under 10 days: half the lifetime
    (160 / 24, timedelta(hours=80)),  # Let's Encrypt's short-lived profile
    (10, timedelta(days=10) / 3),  # exactly 10 days is not "under 10 days"
    (365, timedelta(days=365) / 3),
])
def test_renewal_time(days, before):
    c = issued(days)
    assert c.not_after - renewal_time(c) == before


def test_renewal_time_from_a_real_certificate(key):
    real = self_signed(key, "a.example", days=90)
    info = cert_info(real)
    c = IssuedCertificate("portal", info.serial, info.domains, info.not_before, info.not_after,
                          cert_to_pem(real), "", key_to_pem(key))
    # self_signed backdates notBefore by a minute: a third of 90 days and a minute
    assert c.not_after - renewal_time(c) == (timedelta(days=90) + timedelta(minutes=1)) / 3


def test_needs_certificate_reasons():
    c = issued(90)
    domains = ("a.example",)
    assert needs_certificate(None, domains, T0) == "missing"
    assert needs_certificate(c, ("a.example", "b.example"), T0) == "domains changed"
    assert needs_certificate(c, ("b.example",), T0) == "domains changed"
    # the same names in another order are the same certificate
    two = issued(90, domains=("a.example", "b.example"))
    assert needs_certificate(two, ("b.example", "a.example"), T0) is None
    assert needs_certificate(c, domains, T0) is None
    assert needs_certificate(c, domains, renewal_time(c) - timedelta(seconds=1)) is None
    assert needs_certificate(c, domains, renewal_time(c)).startswith("due")
    assert needs_certificate(c, domains, T0 + 89 * DAY).startswith("due")
    assert needs_certificate(c, domains, c.not_after) == "expired"
    assert needs_certificate(c, domains, T0 + 400 * DAY) == "expired"


# --- backoff ---------------------------------------------------------------------------------

def test_backoff_steps():
    assert BACKOFF == (timedelta(minutes=1), timedelta(minutes=10), timedelta(minutes=100),
                       timedelta(days=1))


@pytest.mark.parametrize("attempts, base", [
    (0, timedelta(minutes=1)),  # nothing failed yet: treated as the first failure
    (1, timedelta(minutes=1)),
    (2, timedelta(minutes=10)),
    (3, timedelta(minutes=100)),
    (4, timedelta(days=1)),
    (5, timedelta(days=1)),
    (1000, timedelta(days=1)),  # daily from then on
])
def test_backoff_sequence_with_jitter(attempts, base):
    rng = random.Random(attempts)
    delays = [backoff(attempts, rng=rng) for _ in range(500)]
    assert all(base * 0.9 <= d <= base * 1.1 for d in delays)
    # the jitter is really there (and spread on both sides)
    assert min(delays) < base * 0.97 and max(delays) > base * 1.03


def test_backoff_is_reproducible_with_a_seeded_rng():
    assert backoff(3, rng=random.Random(42)) == backoff(3, rng=random.Random(42))


def test_retry_after_is_a_floor():
    rng = random.Random(1)
    assert backoff(1, retry_after=3600, rng=rng) == timedelta(hours=1)
    # a Retry-After shorter than the step does not shorten it
    assert backoff(4, retry_after=30, rng=rng) >= timedelta(days=1) * 0.9
    assert backoff(1, retry_after=0, rng=rng) >= timedelta(minutes=1) * 0.9


@pytest.mark.parametrize("retry_after", [1e12, 1e20, 10.0 ** 300])
def test_absurd_retry_after_is_capped(retry_after):
    # a CA's Retry-After of a million years must not overflow the date arithmetic after it
    delay = backoff(1, retry_after=retry_after, rng=random.Random(1))
    assert timedelta(days=1) <= delay <= timedelta(days=7)
    assert T0 + delay > T0
