"""A hostile CA (issue 10): every answer certd reads from an ACME server is attacker-controlled.

An aiohttp app speaks enough RFC 8555 (directory, nonces, account, order, authorization,
HTTP-01, finalize with a real CSR, download, RFC 9773 renewalInfo) for the real `Issuer` and
`AcmeClient` to issue a certificate; each case of the table replaces one answer with a hostile
one (pebble cannot be made to send these). Every case ends in an AcmeError, or in a clean
handled outcome (the certificate is issued; an ARI window is ignored or clamped), never in
another exception, and no error carries control characters or unbounded CA text.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from certd import renewal
from certd.config import RenewalConfig
from certd.errors import AcmeError
from certd.issuance.client import AcmeClient
from certd.issuance.issuer import Issuer
from certd.model import CertificateSpec, Event, Severity, utcnow
from certd.sweep import Sweeper

DOMAIN = "hostile.example"
SPEC = CertificateSpec(DOMAIN, (DOMAIN,), ("web",), "ec-p256")
YEAR = 365 * 86400.0
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def _ca_cert() -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile test CA")])
    now = datetime.now(timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(_CA_KEY.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(_CA_KEY.public_key()),
                           critical=False)
            .sign(_CA_KEY, hashes.SHA256()))


CA_CERT = _ca_cert()
CA_PEM = CA_CERT.public_bytes(serialization.Encoding.PEM)


def leaf(public_key, names=(DOMAIN,), san: x509.ExtensionType | None = None) -> bytes:
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([]))
               .issuer_name(CA_CERT.subject).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=1))
               .not_valid_after(now + timedelta(days=90))
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   _CA_KEY.public_key()), critical=False)
               .add_extension(san or x509.SubjectAlternativeName(
                   [x509.DNSName(n) for n in names]), critical=False))
    return builder.sign(_CA_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


class FakeCA:
    """Just enough ACME for Issuer.issue; `overrides[route]` replaces one answer."""

    def __init__(self):
        self.overrides: dict[str, Callable[[FakeCA, web.Request], Any]] = {}
        self.nonce: str | None = None  # the Replay-Nonce every answer carries (None: random)
        self.send_nonce = True
        self.validated = False
        self.finalized = False
        self.csr: x509.CertificateSigningRequest | None = None
        self.url = ""
        app = web.Application(middlewares=[self._middleware])
        for method, path, route in [
            ("GET", "/dir", "dir"), ("HEAD", "/nonce", "nonce"), ("GET", "/nonce", "nonce"),
            ("POST", "/acct", "acct"), ("POST", "/order", "new_order"),
            ("POST", "/order/1", "order"), ("POST", "/authz/1", "authz"),
            ("POST", "/chall/1", "chall"), ("POST", "/finalize/1", "finalize"),
            ("POST", "/cert/1", "cert"), ("POST", "/junk", "junk"),
            ("GET", "/ari/{cid}", "ari"),
        ]:
            app.router.add_route(method, path, self._handler(route))
        self.server = TestServer(app, host="127.0.0.1")

    async def start(self) -> None:
        await self.server.start_server()
        self.url = str(self.server.make_url("")).rstrip("/")

    @web.middleware
    async def _middleware(self, request, handler):
        resp = await handler(request)
        if self.send_nonce and "Replay-Nonce" not in resp.headers:
            resp.headers["Replay-Nonce"] = self.nonce or b64(os.urandom(16))
        return resp

    def _handler(self, route: str):
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            if route == "finalize" and body:
                payload = json.loads(unb64(json.loads(body)["payload"]))
                self.csr = x509.load_der_x509_csr(unb64(payload["csr"]))
            override = self.overrides.get(route)
            if override is not None:
                return override(self, request)
            return getattr(self, "default_" + route)(request)
        return handle

    # the honest answers
    def directory(self) -> dict:
        u = self.url
        return {"newNonce": u + "/nonce", "newAccount": u + "/acct", "newOrder": u + "/order",
                "revokeCert": u + "/revoke", "renewalInfo": u + "/ari/"}

    def order(self) -> dict:
        status = "valid" if self.finalized else "ready" if self.validated else "pending"
        doc = {"status": status, "identifiers": [{"type": "dns", "value": DOMAIN}],
               "authorizations": [self.url + "/authz/1"], "finalize": self.url + "/finalize/1"}
        if self.finalized:
            doc["certificate"] = self.url + "/cert/1"
        return doc

    def authz(self) -> dict:
        status = "valid" if self.validated else "pending"
        return {"status": status, "identifier": {"type": "dns", "value": DOMAIN},
                "challenges": [{"type": "http-01", "url": self.url + "/chall/1",
                                "token": "tok_" + "A" * 39, "status": status}]}

    def default_dir(self, request):
        return web.json_response(self.directory())

    def default_nonce(self, request):
        return web.Response(status=200)

    def default_acct(self, request):
        return web.json_response({"status": "valid"}, status=201,
                                 headers={"Location": self.url + "/acct/1"})

    def default_new_order(self, request):
        return web.json_response(self.order(), status=201,
                                 headers={"Location": self.url + "/order/1"})

    def default_order(self, request):
        return web.json_response(self.order())

    def default_authz(self, request):
        return web.json_response(self.authz())

    def default_chall(self, request):
        self.validated = True
        return web.json_response(self.authz()["challenges"][0])

    def default_finalize(self, request):
        self.finalized = True
        return web.json_response(self.order())

    def default_cert(self, request):
        return web.Response(body=leaf(self.csr.public_key()) + CA_PEM,
                            content_type="application/pem-certificate-chain")

    def default_junk(self, request):
        return web.Response(body=b"junk", content_type="application/pem-certificate-chain")

    def default_ari(self, request):
        now = datetime.now(timezone.utc)
        return web.json_response({"suggestedWindow": {
            "start": (now + timedelta(days=60)).isoformat(),
            "end": (now + timedelta(days=62)).isoformat()}})


# --- answers -------------------------------------------------------------------------------

def raw(body: bytes, status: int = 200, ctype: str = "application/json", **headers):
    return lambda ca, req: web.Response(body=body, status=status, headers={
        "Content-Type": ctype, **headers})


def doc(obj: Any, status: int = 200, **headers):
    return raw(json.dumps(obj).encode(), status, **headers)


def problem(obj: Any, status: int = 400, **headers):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return raw(body, status, "application/problem+json", **headers)


def rate_limited(retry_after: str):
    return problem({"type": "urn:ietf:params:acme:error:rateLimited", "detail": "slow down"},
                   429, **{"Retry-After": retry_after})


def edited(base: str, **changes):
    """The honest document for `base` ('directory', 'order', 'authz'), fields changed
    (a value of DROP removes the field)."""
    def answer(ca, req):
        d = getattr(ca, base)()
        for k, v in changes.items():
            if v is DROP:
                d.pop(k, None)
            else:
                d[k] = v
        headers = {}
        if base == "order" and req.path == "/order":
            headers["Location"] = ca.url + "/order/1"
        return web.json_response(d, status=201 if headers else 200, headers=headers)
    return answer


DROP = object()


def headers_only(route_default: str, **headers):
    def answer(ca, req):
        resp = getattr(ca, "default_" + route_default)(req)
        resp.headers.update(headers)
        return resp
    return answer


def no_location(ca, req):
    resp = ca.default_acct(req) if req.path == "/acct" else ca.default_new_order(req)
    del resp.headers["Location"]
    return resp


def location(value: str):
    def answer(ca, req):
        resp = ca.default_acct(req) if req.path == "/acct" else ca.default_new_order(req)
        resp.headers["Location"] = value
        return resp
    return answer


def nonces(value: str | None):
    """From the directory on, no answer carries a usable nonce."""
    def answer(ca, req):
        ca.send_nonce, ca.nonce = value is not None, value
        return ca.default_dir(req)
    return answer


def invalid_with_error(error: Any):
    def answer(ca, req):
        d = ca.authz()
        d["status"] = "invalid"
        d["challenges"][0]["status"] = "invalid"
        d["challenges"][0]["error"] = error
        return web.json_response(d)
    return answer


def order_invalid(error: Any):
    def answer(ca, req):
        return web.json_response({**ca.order(), "status": "invalid", "error": error})
    return answer


def finalize_with(**changes):
    def answer(ca, req):
        ca.finalized = True
        return web.json_response({**ca.order(), **changes},
                                 headers=changes.pop("headers", {}) if "headers" in changes
                                 else {})
    return answer


def processing_forever(retry_after: str):
    def answer(ca, req):
        return web.json_response({**ca.order(), "status": "processing"},
                                 headers={"Retry-After": retry_after})
    return answer


def pem(builder: Callable[[FakeCA], bytes], ctype="application/pem-certificate-chain", **hdr):
    return lambda ca, req: web.Response(body=builder(ca), headers={"Content-Type": ctype, **hdr})


def _private_key_pem(ca) -> bytes:
    return _OTHER_KEY.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())


def _bad_san(ca) -> bytes:
    junk = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03junk")
    return leaf(ca.csr.public_key(), san=junk) + CA_PEM


@dataclass(frozen=True)
class Case:
    id: str
    route: str
    answer: Callable
    expect: str = "error"  # error | ok
    check: Callable[[AcmeError], bool] | None = None


def retry(low: float | None, high: float | None = None):
    def check(exc: AcmeError) -> bool:
        if low is None:
            return exc.retry_after is None
        return exc.retry_after is not None and low <= exc.retry_after <= (high or low)
    return check


HUGE = "A" * 400_000
CASES = [
    # the directory
    Case("dir-deep-arrays", "dir", raw(b"[" * 500_000)),
    Case("dir-deep-objects", "dir", raw(b'{"a":' * 100 + b"1" + b"}" * 100)),
    Case("dir-deep-inside-valid-prefix", "dir", raw(b'{"newNonce": ' + b"[" * 5000)),
    Case("dir-huge-body", "dir", raw(b" " * (2 << 20))),
    Case("dir-html", "dir", raw(b"<html>hello</html>", ctype="text/html")),
    Case("dir-json-array", "dir", doc([1, 2, 3])),
    Case("dir-json-string", "dir", doc("directory")),
    Case("dir-invalid-utf8", "dir", raw(b'{"newNonce": "\xff\xfe\xfd"}')),
    Case("dir-utf8-bom", "dir", raw(b"\xef\xbb\xbf{}")),
    Case("dir-no-newNonce", "dir", edited("directory", newNonce=DROP)),
    Case("dir-newNonce-int", "dir", edited("directory", newNonce=5)),
    Case("dir-newNonce-object", "dir", edited("directory", newNonce={"url": "x"})),
    Case("dir-newOrder-bad-ipv6", "dir", edited("directory", newOrder="http://[::1")),
    Case("dir-newAccount-file-scheme", "dir", edited("directory",
                                                     newAccount="file:///etc/passwd")),
    Case("dir-newAccount-control-chars", "dir", edited("directory",
                                                       newAccount="http://x/\x00\x1b[2J")),
    Case("dir-meta-string", "dir", edited("directory", meta="x"), "ok"),  # meta is unused
    Case("dir-meta-tos-int", "dir", edited("directory", meta={"termsOfService": 5}), "ok"),
    Case("dir-5000-digit-number", "dir", raw(b'{"newNonce": ' + b"1" * 5000 + b"}")),
    Case("dir-nan", "dir", raw(b'{"newNonce": NaN}')),
    Case("dir-500-html", "dir", raw(b"<h1>oops</h1>", 500, "text/html")),
    # nonces
    Case("nonce-missing", "dir", nonces(None)),
    Case("nonce-garbage", "dir", nonces("!!!***"), "ok"),  # josepy decodes it leniently
    Case("nonce-huge", "dir", nonces("A" * 7000)),
    # the account
    Case("acct-no-location", "acct", no_location),
    Case("acct-location-javascript", "acct", location("javascript:alert(1)")),
    Case("acct-location-spaces", "acct", location("http://x/ a b")),
    Case("acct-location-relative", "acct", location("/acct/1"), "ok"),
    Case("acct-problem-wrong-types", "acct", problem({"type": 5, "detail": {"x": 1}}),
         check=lambda e: e.type == "certd:http" and e.detail == ""),
    Case("acct-problem-huge-detail", "acct", problem({"type": "urn:x", "detail": HUGE}),
         check=lambda e: len(e.detail) <= 300 and len(str(e)) < 1000),
    Case("acct-problem-control-chars", "acct", problem({
        "type": "urn:ietf:params:acme:error:malformed",
        "detail": "bad\x1b[31mred\r\nX-Injected: yes\x00\u202eevil"}),
        check=lambda e: "\x1b" not in str(e) and "\n" not in e.detail and "red" in e.detail),
    Case("acct-problem-type-huge", "acct", problem({"type": "urn:" + "x" * 10_000}),
         check=lambda e: e.type == "certd:http"),
    Case("acct-problem-type-newline", "acct", problem({"type": "urn:a\nb", "detail": "d"}),
         check=lambda e: e.type == "certd:http"),
    Case("acct-problem-deep", "acct", problem(b"[" * 500_000)),
    Case("acct-problem-array", "acct", problem([1, 2])),
    Case("acct-problem-invalid-utf8", "acct", problem(b'{"type": "\xff", "detail": "\xfe"}')),
    Case("acct-500-html", "acct", raw(b"<h1>\x1b[2J down</h1>" * 100, 500, "text/html"),
         check=lambda e: e.transient and len(str(e)) < 400),
    # Retry-After on a rate-limit answer: clamped to [0, 1 year] or ignored, before arithmetic
    Case("ra-huge", "new_order", rate_limited("99999999999999999999"), check=retry(YEAR)),
    Case("ra-5000-digits", "new_order", rate_limited("9" * 5000), check=retry(YEAR)),
    Case("ra-negative", "new_order", rate_limited("-5"), check=retry(None)),
    Case("ra-garbage", "new_order", rate_limited("soon"), check=retry(None)),
    Case("ra-float", "new_order", rate_limited("1e10"), check=retry(None)),
    Case("ra-superscript-digit", "new_order", rate_limited("\u00b2"), check=retry(None)),
    Case("ra-date-year-9999", "new_order", rate_limited("Fri, 31 Dec 9999 23:59:59 GMT"),
         check=retry(YEAR)),
    Case("ra-date-year-1", "new_order", rate_limited("Mon, 01 Jan 0001 00:00:00 GMT"),
         check=retry(0.0)),
    Case("ra-date-no-zone", "new_order", rate_limited("Mon, 01 Jan 2035 00:00:00"),
         check=retry(None)),
    Case("ra-date-garbage-day", "new_order", rate_limited("Mon, 99 Foo 2035 99:99:99 GMT"),
         check=retry(None)),
    # the order
    Case("order-no-location", "new_order", no_location),
    Case("order-location-bad-scheme", "new_order", location("ht!tp://x")),
    Case("order-location-bad-ipv6", "new_order", location("http://[::1/order")),
    Case("order-deep", "new_order", raw(b"[" * 100_000, 201, Location="http://x/o")),
    Case("order-not-json", "new_order", raw(b"order!", 201, Location="http://x/o")),
    Case("order-status-int", "new_order", edited("order", status=5)),
    Case("order-status-unknown", "new_order", edited("order", status="bogus")),
    Case("order-status-list", "new_order", edited("order", status=["ready"])),
    Case("order-authorizations-string", "new_order", edited("order", authorizations="abc")),
    Case("order-authorizations-ints", "new_order", edited("order", authorizations=[5, None])),
    Case("order-authorizations-object", "new_order", edited("order",
                                                             authorizations={"a": 1})),
    Case("order-finalize-int", "new_order", edited("order", finalize=5)),
    Case("order-identifiers-string", "new_order", edited("order", identifiers="x")),
    Case("order-identifiers-ints", "new_order", edited("order", identifiers=[1, 2])),
    Case("order-expires-garbage", "new_order", edited("order", expires="tomorrow")),
    Case("order-expires-int", "new_order", edited("order", expires=10 ** 30)),
    Case("order-invalid-error-wrong-types", "order", order_invalid(
        {"type": {"a": 1}, "detail": ["x"]}), check=lambda e: e.type == "certd:order"),
    Case("order-invalid-error-string", "order", order_invalid("boom")),
    Case("order-invalid-deep-subproblems", "order", order_invalid(
        json.loads('{"subproblems": [' * 20 + "{}" + "]}" * 20))),
    Case("finalize-certificate-garbage", "finalize", finalize_with(certificate="::::")),
    Case("finalize-certificate-int", "finalize", finalize_with(certificate=12)),
    Case("finalize-not-json", "finalize", raw(b"\x00\x01\x02")),
    Case("order-processing-retry-after-huge", "order",
         processing_forever("99999999999999999999"),
         check=lambda e: e.type == "certd:timeout"),
    # the authorization
    Case("authz-challenges-string", "authz", edited("authz", challenges="abc")),
    Case("authz-challenges-missing", "authz", edited("authz", challenges=DROP)),
    Case("authz-challenges-null", "authz", edited("authz", challenges=None)),
    Case("authz-identifier-int", "authz", edited("authz", identifier=5)),
    Case("authz-identifier-value-object", "authz", edited(
        "authz", status="invalid", identifier={"type": "dns", "value": {"x": "\x1b"}})),
    Case("authz-status-list", "authz", edited("authz", status=["valid"])),
    Case("authz-token-int", "authz", lambda ca, req: web.json_response({
        **ca.authz(), "challenges": [{"type": "http-01", "url": ca.url + "/chall/1",
                                      "token": 5, "status": "pending"}]})),
    Case("authz-token-traversal", "authz", lambda ca, req: web.json_response({
        **ca.authz(), "challenges": [{"type": "http-01", "url": ca.url + "/chall/1",
                                      "token": "../../etc/passwd", "status": "pending"}]})),
    Case("authz-challenge-url-gopher", "authz", lambda ca, req: web.json_response({
        **ca.authz(), "challenges": [{"type": "http-01", "url": "gopher://x/1",
                                      "token": "A" * 43, "status": "pending"}]})),
    Case("authz-invalid-error-wrong-types", "authz", invalid_with_error(
        {"type": 7, "detail": "x" * 100_000 + "\x07"}),
        check=lambda e: len(e.detail) <= 300 and "\x07" not in str(e)),
    Case("authz-invalid-error-list", "authz", invalid_with_error([1, 2])),
    Case("authz-retry-after-garbage", "authz", headers_only(
        "authz", **{"Retry-After": "Mon, 32 Jan 2030 25:61:61 GMT"}), "ok"),
    # the certificate
    Case("cert-junk", "cert", pem(lambda ca: b"hello")),
    Case("cert-empty", "cert", pem(lambda ca: b"")),
    Case("cert-private-key-block", "cert", pem(
        lambda ca: leaf(ca.csr.public_key()) + _private_key_pem(ca))),
    Case("cert-other-key", "cert", pem(lambda ca: leaf(_OTHER_KEY.public_key()) + CA_PEM)),
    Case("cert-missing-name", "cert", pem(lambda ca: leaf(ca.csr.public_key(),
                                                          ("other.example",)) + CA_PEM)),
    Case("cert-broken-san", "cert", pem(_bad_san)),
    Case("cert-invalid-utf8", "cert", pem(lambda ca: b"\xff\xfe" + CA_PEM)),
    Case("cert-der-junk", "cert", pem(lambda ca: b"\x30\x82junk", "application/pkix-cert")),
    Case("cert-huge", "cert", pem(lambda ca: b"-" * (2 << 20))),
    Case("cert-garbage-base64", "cert", pem(
        lambda ca: b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")),
    Case("cert-problem-500", "cert", problem({"type": None, "detail": 3.5}, 500)),
    Case("cert-link-up-bad-ipv6", "cert", pem(
        lambda ca: leaf(ca.csr.public_key()), Link="<http://[::1>; rel=up"), "ok"),
    Case("cert-link-up-file-scheme", "cert", pem(
        lambda ca: leaf(ca.csr.public_key()), Link="<file:///etc/passwd>;rel=\"up\""), "ok"),
    Case("cert-link-no-brackets", "cert", pem(
        lambda ca: leaf(ca.csr.public_key()), Link="garbage;;;,,,<<>>;rel"), "ok"),
    Case("cert-link-up-to-junk", "cert", pem(
        lambda ca: leaf(ca.csr.public_key()), Link='</junk>; rel="up"')),
]


@pytest.fixture
async def ca():
    fake = FakeCA()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.server.close()


async def _issue(ca: FakeCA, store, order_timeout: float = 1.5):
    async with aiohttp.ClientSession() as session:
        client = AcmeClient(ca.url + "/dir", session, timeout=5)
        issuer = Issuer(client, store, order_timeout=timedelta(seconds=order_timeout))
        return await issuer.issue(SPEC)


def _clean(exc: AcmeError) -> None:
    """What every AcmeError from a hostile CA must look like."""
    text = str(exc)
    assert len(text) < 2000, text[:200]
    assert not CONTROL.search(text), repr(text[:200])
    assert isinstance(exc.detail, str) and len(exc.detail) <= 300
    assert not CONTROL.search(exc.detail)
    assert isinstance(exc.type, str) and 0 < len(exc.type) <= 200 and " " not in exc.type
    assert exc.retry_after is None or 0 <= exc.retry_after <= YEAR


def test_the_table_is_large_and_unique():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


async def test_honest_ca_issues(ca, store):
    cert = await _issue(ca, store)
    assert cert.domains == (DOMAIN,) and cert.chain_pem


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_hostile_answer(ca, store, case):
    ca.overrides[case.route] = case.answer
    if case.expect == "ok":
        cert = await _issue(ca, store)
        assert cert.domains == (DOMAIN,)
        return
    with pytest.raises(AcmeError) as info:
        await _issue(ca, store)
    exc = info.value
    _clean(exc)
    if case.check is not None:
        assert case.check(exc), (str(exc), exc.type, exc.detail, exc.retry_after)
    # and what the service does with a failure goes through without trouble: backoff from
    # Retry-After, the event (JSON) in the store
    now = utcnow()
    assert now + renewal.backoff(1, exc.retry_after) > now
    await store.add_event(Event("issue.failed", str(exc), Severity.ERROR, certificate=DOMAIN,
                                data={"type": exc.type, "detail": exc.detail}))


# --- ARI: renewalInfo from the same hostile CA, through Sweeper.check_ari --------------------

def window(start: str, end: str, **extra):
    return doc({"suggestedWindow": {"start": start, "end": end}, **extra})


ARI_CASES = [
    ("deep", raw(b"[" * 500_000)),
    ("not-object", doc([1])),
    ("window-string", doc({"suggestedWindow": "soon"})),
    ("window-missing", doc({})),
    ("start-int", doc({"suggestedWindow": {"start": 5, "end": "2030-01-01T00:00:00Z"}})),
    ("start-null", doc({"suggestedWindow": {"start": None, "end": None}})),
    ("start-huge-string", window("9" * 100_000, "2030-01-01T00:00:00Z")),
    ("no-timezone", window("2030-01-01T00:00:00", "2030-01-02T00:00:00")),
    ("year-1", window("0001-01-01T00:00:00Z", "0001-01-02T00:00:00Z")),
    ("year-1-offset-overflow", window("0001-01-01T00:00:00+01:00", "0001-01-02T00:00:00Z")),
    ("year-9999", window("9999-12-30T00:00:00Z", "9999-12-31T23:59:59.999999Z")),
    ("huge-window", window("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z")),
    ("end-before-start", window("2030-01-02T00:00:00Z", "2030-01-01T00:00:00Z")),
    ("explanation-url-object", window("2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z",
                                      explanationURL={"x": 1})),
    ("explanation-url-javascript", window("2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z",
                                          explanationURL="javascript:alert(1)")),
    ("retry-after-huge", raw(b'{"suggestedWindow": {"start": "2030-01-01T00:00:00Z", '
                             b'"end": "2030-01-02T00:00:00Z"}}',
                             **{"Retry-After": "99999999999999999999"})),
    ("retry-after-negative", raw(b"{}", **{"Retry-After": "-1"})),
    ("retry-after-date-9999", raw(b"{}", **{"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"})),
    ("problem-huge-detail", problem({"type": 1, "detail": HUGE}, 500,
                                    **{"Retry-After": "99999999999999999999"})),
    ("invalid-utf8", raw(b'{"suggestedWindow": "\xff"}')),
]


@pytest.mark.parametrize("answer", [a for _, a in ARI_CASES], ids=[i for i, _ in ARI_CASES])
async def test_hostile_renewal_info(ca, store, answer):
    cert = await store.add_certificate(await _issue(ca, store))
    ca.overrides["ari"] = answer
    now = utcnow()
    async with aiohttp.ClientSession() as session:
        client = AcmeClient(ca.url + "/dir", session, timeout=5)
        certd = SimpleNamespace(store=store, config=SimpleNamespace(renewal=RenewalConfig()),
                                clock=lambda: now, issuer=SimpleNamespace(client=client),
                                ari_client=lambda cert: client)  # the issuing CA's
        state = await Sweeper(certd).check_ari(DOMAIN)
    assert state is not None and state.serial == cert.serial
    # the next check is within RFC 9773's [1 min, 1 day] of Retry-After, or the interval
    assert now + timedelta(minutes=1) <= state.next_check_at
    assert state.next_check_at <= now + max(timedelta(days=1), RenewalConfig().ari_interval)
    if state.renew_at is not None:  # a window was used: never past expiry
        assert state.renew_at <= cert.not_after
        assert state.window_start <= state.renew_at <= state.window_end
    assert state.explanation_url is None or state.explanation_url.startswith("http")
    plan = renewal.plan(cert, ari=state)
    assert plan.at <= cert.not_after
