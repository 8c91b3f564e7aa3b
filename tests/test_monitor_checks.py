"""evaluate(): every check id, short-lifetime scaling, stale grace, hostile input — over
certificates built here with `cryptography` (a throwaway root and intermediate)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Store

from certd.config import MonitorConfig
from certd.errors import ConfigError
from certd.keys import serial_hex
from certd.model import ProbeTarget, Severity
from certd.monitor.checks import Expected, Thresholds, evaluate, load_trust_store
from certd.monitor.posture import hsts_problem, matches
from certd.monitor.probe import ProbeResult
from tests.lab.weak_tls import write_weak_certificate

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)
DOMAIN = "www.example.org"
TARGET = ProbeTarget(DOMAIN, "127.0.0.2", 443, "web/fe1", certificate="site")
THRESHOLDS = Thresholds.from_config(MonitorConfig())
EC_KEY = ec.generate_private_key(ec.SECP256R1())  # one leaf key: generating is slow


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _ca(cn: str, parent: Issuer | None = None) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (x509.CertificateBuilder().subject_name(_name(cn))
               .issuer_name(parent.name if parent else _name(cn)).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - 3650 * DAY).not_valid_after(NOW + 3650 * DAY)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                            False, False), critical=True)
               .add_extension(ski, critical=False))
    if parent:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
            critical=False)
    cert = builder.sign(parent.key if parent else key, hashes.SHA256())
    return Issuer(_name(cn), key, cert)


ROOT = _ca("Test Root")
INTER = _ca("Test Intermediate", ROOT)
TRUST = Store([ROOT.cert])


@dataclass
class Leaf:
    names: list[str] | None = field(default_factory=lambda: [DOMAIN])
    age: dt.timedelta = 10 * DAY  # since not_before
    lifetime: dt.timedelta = 90 * DAY
    key: object = None  # default EC_KEY
    hash: hashes.HashAlgorithm = field(default_factory=hashes.SHA256)
    key_usage: str | None = "digitalSignature"  # None: no extension
    eku: bool | None = True  # None: no extension, False: clientAuth only
    aki: bool = True
    crl: bool = True
    issuer: Issuer | None = INTER  # None: self-signed

    def cert(self) -> x509.Certificate:
        key = self.key or EC_KEY
        not_before = NOW - self.age
        signer_key = self.issuer.key if self.issuer else key
        subject = _name(self.names[0] if self.names else "x")
        b = (x509.CertificateBuilder().subject_name(subject)
             .issuer_name(self.issuer.name if self.issuer else subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(not_before).not_valid_after(not_before + self.lifetime)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if self.names is not None:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in self.names]),
                                critical=False)
        if self.key_usage is not None:
            ds, ke = self.key_usage == "digitalSignature", self.key_usage == "keyEncipherment"
            ka = self.key_usage == "keyAgreement"
            b = b.add_extension(x509.KeyUsage(ds, False, ke, False, ka, False, False, False, False),
                                critical=True)
        if self.eku is not None:
            eku = ExtendedKeyUsageOID.SERVER_AUTH if self.eku else ExtendedKeyUsageOID.CLIENT_AUTH
            b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        if self.aki and self.issuer:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.issuer.key.public_key()), critical=False)
        if self.crl:
            point = x509.DistributionPoint([x509.UniformResourceIdentifier("http://crl.test/1")],
                                           None, None, None)
            b = b.add_extension(x509.CRLDistributionPoints([point]), critical=False)
        return b.sign(signer_key, self.hash)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def result(chain: tuple[bytes, ...], **kw: object) -> ProbeResult:
    kw.setdefault("tls_version", "TLSv1.3")
    kw.setdefault("modern_protocols", True)
    return ProbeResult(TARGET, None, chain=chain, **kw)  # type: ignore[arg-type]


def run(leaf: Leaf | x509.Certificate | None = None, *, chain: tuple[bytes, ...] | None = None,
        expected: Expected | None = None, now: dt.datetime = NOW, **kw: object) -> dict:
    if chain is None:
        cert = leaf if isinstance(leaf, x509.Certificate) else (leaf or Leaf()).cert()
        chain = (der(cert), der(INTER.cert))
    found = evaluate(result(chain, **kw), expected=expected, thresholds=THRESHOLDS,
                     trust=TRUST, now=now)
    keys = [f.key for f in found]
    assert len(keys) == len(set(keys)), keys
    return {f.check: f for f in found}


def test_a_clean_chain_has_no_findings():
    assert run() == {}


def test_findings_carry_the_served_leaf():
    cert = Leaf(age=80 * DAY).cert()
    f = run(cert)["expiry"]
    assert (f.domain, f.node, f.certificate) == (DOMAIN, "web/fe1", "site")
    assert f.serial == serial_hex(cert) == format(cert.serial_number, "x")
    assert f.not_after == cert.not_valid_after_utc
    assert f.days_remaining == 10.0


def test_unreachable():
    found = evaluate(ProbeResult(TARGET, "connect: refused"), expected=Expected("ab", None),
                     thresholds=THRESHOLDS, trust=TRUST, now=NOW)
    assert [(f.check, f.severity) for f in found] == [("unreachable", Severity.ERROR)]
    # the message says what, the finding's domain and node say where: each named once
    assert (found[0].node, found[0].domain, found[0].message) == (
        "web/fe1", TARGET.domain, "connect: refused")


@pytest.mark.parametrize("lifetime, age, severity", [
    (90, 10, None), (90, 62, None), (90, 63.5, Severity.WARNING), (90, 82, Severity.WARNING),
    (90, 83.5, Severity.CRITICAL), (90, 91, Severity.CRITICAL),
    (45, 30, None), (45, 31.5, Severity.WARNING), (45, 41, Severity.WARNING),
    (45, 41.6, Severity.CRITICAL),
    (6, 4, None), (6, 4.2, Severity.WARNING), (6, 5.6, Severity.CRITICAL),
    (397, 370, Severity.WARNING), (397, 330, None),
])
def test_expiry_thresholds_scale_for_short_lifetimes(lifetime, age, severity):
    found = run(Leaf(lifetime=lifetime * DAY, age=age * DAY)).get("expiry")
    assert (found.severity if found else None) == severity


def test_six_day_certificate_warns_under_two_days_past_the_renewal_point():
    warn, critical = THRESHOLDS.for_lifetime(6 * DAY)
    assert dt.timedelta(days=1.8) < warn < 6 * DAY / 3  # renewal: a third left
    assert THRESHOLDS.for_lifetime(45 * DAY)[0] == 14 * DAY


def test_expired_and_not_yet_valid():
    expired = run(Leaf(age=100 * DAY))["expiry"]
    assert expired.severity == Severity.CRITICAL and "expired" in expired.message
    assert expired.days_remaining == -10.0
    early = run(Leaf(age=-2 * DAY))
    assert early["not_yet_valid"].severity == Severity.CRITICAL
    assert "expiry" not in early and "chain" not in early  # trust checked inside validity


def test_stale_after_grace_only():
    cert = Leaf().cert()
    deployed = NOW - 5 * dt.timedelta(minutes=1)
    assert "stale" not in run(cert, expected=Expected(serial_hex(cert), None))
    assert "stale" not in run(cert, expected=Expected("abc", deployed))  # within 15 min
    later = run(cert, expected=Expected("abc", deployed), now=NOW + 11 * dt.timedelta(minutes=1))
    assert later["stale"].severity == Severity.WARNING and "abc" in later["stale"].message
    assert run(cert, expected=Expected("abc", None))["stale"].severity == Severity.WARNING
    assert "stale" not in run(cert, expected=None)
    assert "stale" not in run(cert, expected=Expected(None, None))
    old = run(Leaf(age=95 * DAY), expected=Expected("abc", NOW - DAY))["stale"]
    assert old.severity == Severity.CRITICAL


def test_chain_untrusted_self_signed_and_incomplete():
    other_root = _ca("Other Root")
    other = _ca("Other Intermediate", other_root)
    untrusted = run(chain=(der(Leaf(issuer=other).cert()), der(other.cert)))
    assert untrusted["chain"].severity == Severity.CRITICAL
    self_signed = run(chain=(der(Leaf(issuer=None).cert()),))
    assert "self-signed" in self_signed["chain"].message
    assert "posture.aki" not in self_signed and "posture.revocation" not in self_signed
    incomplete = run(chain=(der(Leaf().cert()),))
    assert "chain_incomplete" in incomplete and "chain" not in incomplete


def test_chain_order():
    leaf = der(Leaf().cert())
    assert "chain_order" in run(chain=(der(INTER.cert), leaf))
    assert "chain_order" in run(chain=(leaf, der(ROOT.cert), der(INTER.cert)))
    assert "chain_order" not in run(chain=(leaf, der(INTER.cert), der(ROOT.cert)))


def test_hostname():
    assert run(Leaf(names=["other.example.org"]))["hostname"].severity == Severity.CRITICAL
    assert "hostname" not in run(Leaf(names=["*.example.org"]))


@pytest.mark.parametrize("pattern, host, ok", [
    ("www.example.org", "WWW.Example.org.", True), ("*.example.org", "www.example.org", True),
    ("*.example.org", "example.org", False), ("*.example.org", "a.b.example.org", False),
    ("w*.example.org", "www.example.org", False), ("*.org", "example.org", False),
    ("*.*.example.org", "a.b.example.org", False),
    ("xn--bcher-kva.example", "bücher.example", True),
])
def test_rfc6125_matching(pattern, host, ok):
    assert matches(pattern, host) is ok


def test_posture_checks():
    rsa1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert "posture.signature" not in run(Leaf(hash=hashes.SHA384()))
    assert "posture.validity" in run(Leaf(lifetime=400 * DAY))
    assert "1024" in run(Leaf(key=rsa1024, key_usage="keyEncipherment"))["posture.key"].message
    assert "posture.key" in run(Leaf(key=ec.generate_private_key(ec.SECP224R1())))
    assert "posture.key_usage" in run(Leaf(key_usage="keyAgreement"))
    assert "posture.key_usage" in run(Leaf(key_usage="keyEncipherment"))  # EC: no key transport
    assert "posture.key_usage" in run(Leaf(key_usage=None))
    assert "posture.eku" in run(Leaf(eku=False)) and "posture.eku" in run(Leaf(eku=None))
    no_san = run(Leaf(names=None))
    assert "posture.san" in no_san and "hostname" in no_san
    assert "posture.aki" in run(Leaf(aki=False))
    revocation = run(Leaf(crl=False))["posture.revocation"]
    assert revocation.severity == Severity.INFO


def test_sha1_rsa1024_self_signed(tmp_path):
    """`cryptography` will not sign with SHA-1: the openssl CLI makes this one."""
    cert_path, _ = write_weak_certificate(tmp_path, DOMAIN)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    found = run(chain=(der(cert),), now=cert.not_valid_before_utc + DAY)
    assert found["posture.signature"].severity == Severity.ERROR
    assert "sha1" in found["posture.signature"].message
    assert "1024" in found["posture.key"].message
    assert "self-signed" in found["chain"].message
    assert "hostname" not in found and "posture.aki" not in found


def test_protocol_and_hsts():
    found = run(legacy_protocols=("SSLv3", "TLSv1", "TLSv1.1"), modern_protocols=False,
                tls_version="TLSv1.1", hsts=None, hsts_checked=True)
    for check in ("protocol.ssl3", "protocol.tls1.0", "protocol.tls1.1"):
        assert found[check].severity == Severity.ERROR
    assert found["protocol.modern"].severity == Severity.CRITICAL
    assert found["hsts"].severity == Severity.WARNING
    assert "hsts" not in run(hsts=None, hsts_checked=False)
    assert "hsts" in run(hsts="max-age=300; includeSubDomains", hsts_checked=True)
    assert "hsts" not in run(hsts='max-age="31536000"; preload', hsts_checked=True)
    assert hsts_problem("includeSubDomains", 180 * DAY) is not None


def test_hostile_input_never_raises():
    garbage = run(chain=(b"\x30\x82garbage",))
    assert list(garbage) == ["certificate"]
    assert list(run(chain=())) == ["certificate"]
    bad_intermediate = run(chain=(der(Leaf().cert()), b"junk"))
    assert "certificate" in bad_intermediate and bad_intermediate["certificate"].serial
    huge = run(chain=(der(Leaf().cert()),) + (der(INTER.cert),) * 500)
    assert "too" in huge["chain"].message or "over" in huge["chain"].message
    # protocol findings survive an unreadable certificate
    assert "protocol.tls1.0" in run(chain=(b"",), legacy_protocols=("TLSv1",))


def test_thresholds_from_config():
    t = Thresholds.from_config(MonitorConfig(warn_before="10d", critical_before="2d"))
    assert (t.warn_before, t.critical_before) == (10 * DAY, 2 * DAY)
    assert t.stale_grace == dt.timedelta(minutes=15) and t.hsts_min_age == 180 * DAY


def test_load_trust_store(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ROOT.cert.public_bytes(serialization.Encoding.PEM))
    store = load_trust_store(bundle)
    found = evaluate(result((der(Leaf().cert()), der(INTER.cert))), expected=None,
                     thresholds=THRESHOLDS, trust=store, now=NOW)
    assert found == []
    assert load_trust_store(None) is not None  # the system bundle
    with pytest.raises(ConfigError):
        load_trust_store(tmp_path / "missing.pem")
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(ConfigError):
        load_trust_store(tmp_path / "empty.pem")
