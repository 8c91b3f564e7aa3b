"""The challenge solver seam (issue 14, item 0): which solver proves which name, the order
flow's present -> answer -> poll -> cleanup against real pebble (cleanup also when validation
fails, and for the sibling authorization an order abandons), typed ACME statuses, and
preflight's CAA check following the solver's challenge type."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from acme import messages

from certd.app import challenge_listener, open_certd
from certd.errors import AcmeError
from certd.issuance.http01 import Http01Solver
from certd.issuance.solvers import (
    ChallengeType,
    Proof,
    Rule,
    Solvers,
    certificates,
    dns01_txt_value,
    suffix,
)
from certd.issuance.status import AcmeStatus
from certd.model import CertificateSpec, utcnow
from certd.preflight import CheckFailed, _evaluate_caa
from tests.certd_lab import lab_config


class Recording:
    """A solver around another one that records what the order flow asked of it."""

    def __init__(self, inner, type_=None):
        self.inner = inner
        self.type = type_ or inner.type
        self.calls: list[tuple[str, Proof]] = []

    async def preflight(self, identifier: str) -> None:
        self.calls.append(("preflight", identifier))

    async def present(self, proof: Proof) -> None:
        self.calls.append(("present", proof))
        if self.inner is not None:
            await self.inner.present(proof)

    async def cleanup(self, proof: Proof) -> None:
        self.calls.append(("cleanup", proof))
        if self.inner is not None:
            await self.inner.cleanup(proof)

    def tokens(self, what: str) -> list[str]:
        return [p.token for kind, p in self.calls if kind == what]


SPEC = CertificateSpec("site", ("a.example.org", "*.example.org", "b.other.net"), ("web",))


def test_first_matching_rule_wins_else_the_default():
    http, dns, corp = (Recording(None, ChallengeType.HTTP01), Recording(None, ChallengeType.DNS01),
                       Recording(None, ChallengeType.DNS01))
    solvers = Solvers([Rule(certificates("wild"), corp), Rule(suffix("example.org."), dns)],
                      default=http)
    assert solvers.for_identifier(SPEC, "a.example.org") is dns
    assert solvers.for_identifier(SPEC, "*.example.org") is dns
    assert solvers.for_identifier(SPEC, "EXAMPLE.ORG") is dns
    assert solvers.for_identifier(SPEC, "badexample.org") is http  # a label boundary
    assert solvers.for_identifier(SPEC, "b.other.net") is http
    wild = CertificateSpec("wild", ("a.example.org",), ())
    assert solvers.for_identifier(wild, "a.example.org") is corp  # earlier rule first
    solvers.add(suffix("other.net"), corp)
    assert solvers.for_identifier(SPEC, "b.other.net") is corp
    assert solvers.all() == [http, corp, dns]  # the default first, each once
    assert solvers.types() == {ChallengeType.HTTP01, ChallengeType.DNS01}


def test_dns01_txt_value_is_rfc8555():
    # RFC 8555 §8.4 / RFC 7636-style: base64url(SHA-256), no padding, 43 characters
    value = dns01_txt_value("token.thumbprint")
    assert len(value) == 43 and "=" not in value and "+" not in value and "/" not in value


def test_statuses_are_typed_and_equal_to_the_wire_strings():
    order = messages.Order.from_json({"status": "processing", "identifiers": []})
    assert AcmeStatus.of(order) is AcmeStatus.PROCESSING and AcmeStatus.of(order) == "processing"
    assert AcmeStatus.of(SimpleNamespace()) is AcmeStatus.UNKNOWN
    assert AcmeStatus.of(SimpleNamespace(status=SimpleNamespace(name="weird"))) \
        is AcmeStatus.UNKNOWN


class _Caa:
    def __init__(self, tag, value, flags=0):
        self.tag, self.value, self.flags = tag.encode(), value.encode(), flags


def test_caa_validationmethods_follow_the_challenge_type():
    only_dns = [_Caa("issue", "ca.example; validationmethods=dns-01")]
    with pytest.raises(CheckFailed, match="exclude http-01"):
        _evaluate_caa("example.org", only_dns, {"ca.example"}, None)
    assert "allows" in _evaluate_caa("example.org", only_dns, {"ca.example"}, None, "dns-01")
    with pytest.raises(CheckFailed, match="exclude dns-01"):
        _evaluate_caa("example.org", [_Caa("issue", "ca.example; validationmethods=http-01")],
                      {"ca.example"}, None, "dns-01")
    # a wildcard: issuewild, where present, replaces issue (RFC 8659 §4.3)
    records = [_Caa("issue", "ca.example"), _Caa("issuewild", ";")]
    assert "allows" in _evaluate_caa("example.org", records, {"ca.example"}, None, "dns-01")
    with pytest.raises(CheckFailed, match="forbids"):
        _evaluate_caa("example.org", records, {"ca.example"}, None, "dns-01", wildcard=True)


@pytest.mark.lab
async def test_present_answer_cleanup_against_pebble(lab, tmp_path):
    lab.set_sites({"seam": ["seam.test", "www.seam.test"]})
    cfg = lab_config(lab, tmp_path / "state", [
        {"name": "seam", "domains": ["seam.test", "www.seam.test"], "frontends": ["web"]}])
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        solvers = certd.issuer.solvers
        assert isinstance(solvers.default, Http01Solver)
        assert solvers.default.probe == certd.http01_preflight  # wired by Certd
        recording = solvers.default = Recording(solvers.default)
        cert = await certd.renew("seam")
        assert cert is not None
        presented = [p for kind, p in recording.calls if kind == "present"]
        assert sorted(p.identifier for p in presented) == ["seam.test", "www.seam.test"]
        for proof in presented:
            assert proof.certificate == "seam" and not proof.wildcard
            assert proof.key_authorization.startswith(proof.token + ".")
            assert proof.authorization_url.startswith("https://127.0.0.1:")
        # each proof withdrawn, after it was presented
        assert sorted(recording.tokens("cleanup")) == sorted(recording.tokens("present"))
        kinds = [kind for kind, _ in recording.calls]
        assert kinds.index("cleanup") > kinds.index("present")
        for token in recording.tokens("present"):
            assert await certd.store.get_key_authorization(token, utcnow()) is None


@pytest.mark.lab
async def test_cleanup_when_validation_fails(lab, tmp_path):
    lab.set_sites({"half": ["half.test"]})
    lab.add_a("gone.half.test", "127.0.0.9")  # nothing listens there: validation fails
    cfg = lab_config(lab, tmp_path / "state", [
        {"name": "half", "domains": ["half.test", "gone.half.test"], "frontends": ["web"]}])
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        recording = certd.issuer.solvers.default = Recording(certd.issuer.solvers.default)
        with pytest.raises(AcmeError) as caught:
            await certd.renew("half")
        assert "gone.half.test" in str(caught.value)
        # the failed one and its sibling (done, or abandoned mid-poll): all cleaned up
        assert recording.tokens("present")
        assert sorted(recording.tokens("cleanup")) == sorted(recording.tokens("present"))
        for token in recording.tokens("present"):
            assert await certd.store.get_key_authorization(token, utcnow()) is None
