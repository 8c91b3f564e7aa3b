"""An asynchronous RFC 8555 client: aiohttp for transport, `acme.messages` and `acme.jws`
(josepy) for the wire format and signatures.

Why not `acme.client.ClientV2`: it is synchronous (requests) and sleeps a fixed second between
polls. This client polls promptly, honours Retry-After, retries badNonce with the nonce the
error carried, and never blocks the event loop. It knows nothing of stores or deployers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
import josepy as jose
from acme import jws, messages

from certd import __version__
from certd.errors import AcmeError
from certd.httputil import BodyTooLarge, read_limited
from certd.issuance import profiles
from certd.issuance.untrusted import (
    MALFORMED,
    ca_url,
    clean_text,
    parse_json,
    parse_retry_after,
    problem_type,
)

__all__ = ["AcmeClient", "Response", "parse_retry_after"]

log = logging.getLogger(__name__)

ACME_ERROR = "urn:ietf:params:acme:error:"
BAD_NONCE = ACME_ERROR + "badNonce"
MAX_NONCE_RETRIES = 20  # at 50 % rejection, all 20 fail once in a million
MAX_BODY = 1 << 20  # no ACME resource is anywhere near 1 MiB
MAX_LINKS = 32  # Link header values kept per response (RFC 8555 uses a handful)
MAX_NONCE = 512  # characters of a Replay-Nonce (Boulder's are 30-odd)
MAX_AUTHORIZATIONS = 1000  # an order holds one per identifier; CAs cap them at 100


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    links: dict[str, list[str]]  # rel -> absolute http(s) URLs (unusable ones are dropped)
    body: bytes
    url: str = ""  # where it came from (relative Location headers resolve against it)

    def json(self, what: str = "response") -> Any:
        """The body as JSON, or AcmeError (certd:malformed): not UTF-8, too deep, not JSON."""
        return parse_json(self.body, what, status=self.status)

    @property
    def location(self) -> str | None:
        return self.headers.get("location")

    def location_url(self, what: str) -> str:
        """The Location header as an absolute http(s) URL, or AcmeError if missing or bad."""
        if not self.location:
            raise AcmeError(f"acme: {what}: no Location header", type=MALFORMED)
        return ca_url(self.location, f"{what}: Location", self.url or None)

    @property
    def retry_after(self) -> float | None:
        """Seconds, clamped to [0, 1 year] (untrusted.parse_retry_after); None if absent/bad."""
        return parse_retry_after(self.headers.get("retry-after"))


def alg_for(key: jose.JWK) -> jose.JWASignature:
    if isinstance(key, jose.JWKEC):
        size = key.key.curve.key_size
        return {256: jose.ES256, 384: jose.ES384, 521: jose.ES512}[size]
    return jose.RS256


class AcmeClient:
    """One account at one ACME directory. Safe for concurrent use from one event loop."""

    def __init__(
        self,
        directory_url: str,
        session: aiohttp.ClientSession,
        *,
        ca_bundle: str | None = None,
        timeout: float = 30.0,
    ):
        self.directory_url = directory_url
        self._session = session
        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._directory: messages.Directory | None = None
        self._nonces: list[bytes] = []
        self.key: jose.JWK | None = None
        self.account_uri: str | None = None

    # transport -------------------------------------------------------------------------
    async def _request(
        self, method: str, url: str, *, data: bytes | None = None, accept: str | None = None
    ) -> Response:
        url = ca_url(url, f"{method} target")  # every URL the CA gave us passes here
        headers = {"User-Agent": f"certd/{__version__}"}
        if data is not None:
            headers["Content-Type"] = "application/jose+json"
        if accept:
            headers["Accept"] = accept
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, ssl=self._ssl, timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                try:
                    body = await read_limited(resp, MAX_BODY)
                except BodyTooLarge:
                    raise AcmeError(f"acme: {url}: response larger than {MAX_BODY} bytes",
                                    type="certd:malformed") from None
                links: dict[str, list[str]] = {}
                for rel, target in _links(resp):
                    links.setdefault(rel, []).append(target)
                response = Response(
                    resp.status, {k.lower(): v for k, v in resp.headers.items()}, links, body,
                    str(resp.url),
                )
        except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
            raise AcmeError(
                f"acme: {method} {url}: {type(exc).__name__}: "
                f"{clean_text(str(exc), 200)}".rstrip(": "),
                type="certd:unreachable",
                transient=True,
            ) from None
        except (ValueError, UnicodeError) as exc:  # a header aiohttp could not make sense of
            raise AcmeError(f"acme: {method} {url}: unreadable response: "
                            f"{clean_text(str(exc), 200)}", type=MALFORMED) from None
        nonce = response.headers.get("replay-nonce")
        if nonce:
            try:
                if len(nonce) > MAX_NONCE:
                    raise ValueError("too long")
                self._nonces.append(jws.Header._fields["nonce"].decode(nonce))
            except (jose.DeserializationError, ValueError, TypeError):
                log.warning("acme: ignoring malformed Replay-Nonce from %s", url)
        return response

    async def directory(self) -> messages.Directory:
        if self._directory is None:
            resp = await self._request("GET", self.directory_url)
            if resp.status != 200:
                raise _problem(resp, f"acme: directory {self.directory_url}")
            directory = _decode(messages.Directory, resp, "directory")
            for name in ("newNonce", "newAccount", "newOrder"):
                _endpoint(directory, name, resp.url)  # required (RFC 8555 §7.1.1)
            self._directory = directory
        return self._directory

    async def _url(self, name: str) -> str:
        """The directory's URL for `name`, checked; AcmeError if missing or not a URL."""
        directory = await self.directory()
        return _endpoint(directory, name, self.directory_url)

    async def _nonce(self) -> bytes:
        if self._nonces:
            return self._nonces.pop()
        url = await self._url("newNonce")
        resp = await self._request("HEAD", url)
        if resp.status not in (200, 204) or not self._nonces:
            raise AcmeError(f"acme: newNonce: HTTP {resp.status}, no nonce", status=resp.status,
                            type="certd:malformed", transient=True)
        return self._nonces.pop()

    async def post(
        self, url: str, payload: Any = None, *, accept: str | None = None, use_kid: bool = True
    ) -> Response:
        """Signed POST; `payload=None` is POST-as-GET. Raises AcmeError on a problem document."""
        if self.key is None:
            raise AcmeError("acme: no account key loaded")
        if payload is None:
            body = b""
        elif isinstance(payload, jose.JSONDeSerializable):
            body = payload.json_dumps().encode()
        else:
            body = json.dumps(payload).encode()
        kid = self.account_uri if use_kid else None
        for attempt in range(MAX_NONCE_RETRIES):
            nonce = await self._nonce()
            signed = jws.JWS.sign(body, key=self.key, alg=alg_for(self.key), nonce=nonce,
                                  url=url, kid=kid)
            resp = await self._request("POST", url, data=signed.json_dumps().encode(),
                                       accept=accept)
            if resp.status < 400:
                return resp
            error = _problem(resp, f"acme: POST {url}")
            if error.type != BAD_NONCE:
                raise error
            log.debug("acme: badNonce on %s (attempt %d), retrying", url, attempt + 1)
        raise AcmeError(f"acme: POST {url}: badNonce {MAX_NONCE_RETRIES} times in a row",
                        type=BAD_NONCE, transient=True)

    # account ---------------------------------------------------------------------------
    async def register(
        self, key: jose.JWK, *, email: str | None = None, eab: tuple[str, str] | None = None
    ) -> str:
        """newAccount (RFC 8555 §7.3): creates the account or finds the existing one for `key`."""
        self.key = key
        self.account_uri = None
        directory = await self.directory()
        new_account = await self._url("newAccount")
        binding = None
        if eab:
            binding = messages.ExternalAccountBinding.from_data(
                key.public_key(), eab[0], eab[1], directory
            )
        reg = messages.NewRegistration.from_data(
            email=email, terms_of_service_agreed=True, external_account_binding=binding
        )
        resp = await self.post(new_account, reg, use_kid=False)
        self.account_uri = resp.location_url("newAccount")
        return self.account_uri

    def use_account(self, key: jose.JWK, uri: str) -> None:
        self.key = key
        self.account_uri = uri

    def key_authorization(self, challenge: messages.ChallengeBody) -> str:
        return challenge.chall.key_authorization(self.key)

    # orders (RFC 8555 §7.4) ------------------------------------------------------------
    async def profiles(self) -> list[str]:
        """The profile names the directory's meta lists (empty: the CA has none)."""
        directory = await self.directory()
        return profiles.offered(getattr(directory, "meta", None))

    async def new_order(self, domains: tuple[str, ...], *, replaces: str | None = None,
                        profile: str | None = None) -> tuple[str, messages.Order]:
        """newOrder; `profile` (draft-aaron-acme-profiles) is sent as given: the caller
        checked it against `profiles()`."""
        new_order = await self._url("newOrder")
        payload: dict[str, Any] = {
            "identifiers": [{"type": "dns", "value": d} for d in domains]
        }
        if replaces:
            payload["replaces"] = replaces
        if profile:
            payload["profile"] = profile
        resp = await self.post(new_order, payload)
        location = resp.location_url("newOrder")
        return location, _order(resp)

    async def get_order(self, url: str) -> tuple[messages.Order, float | None]:
        resp = await self.post(url)
        return _order(resp), resp.retry_after

    async def get_authorization(self, url: str) -> tuple[messages.Authorization, float | None]:
        resp = await self.post(url)
        return _decode(messages.Authorization, resp, "authorization"), resp.retry_after

    async def answer_challenge(self, url: str) -> None:
        """Tell the CA the challenge is ready to be validated (RFC 8555 §7.5.1)."""
        await self.post(url, {})

    async def finalize(self, url: str, csr_der: bytes) -> messages.Order:
        resp = await self.post(url, {"csr": jose.encode_b64jose(csr_der)})
        return _order(resp)

    async def revoke(self, cert_der: bytes, reason: int) -> None:
        """revokeCert (RFC 8555 §7.6), signed with the account key; `reason` is an RFC 5280
        CRLReason code."""
        await self.post(await self._url("revokeCert"),
                        {"certificate": jose.encode_b64jose(cert_der), "reason": reason})

    async def offers_ari(self) -> bool:
        try:
            (await self.directory())["renewalInfo"]
        except KeyError:
            return False
        return True

    async def renewal_info(self, cert_id: str) -> tuple[dict, float | None] | None:
        """GET <renewalInfo>/<certID> (RFC 9773 §4.1): the JSON and Retry-After, or None when
        the directory offers no renewalInfo."""
        if not await self.offers_ari():
            return None
        base = await self._url("renewalInfo")
        url = base.rstrip("/") + "/" + cert_id
        resp = await self._request("GET", url)
        if resp.status != 200:
            raise _problem(resp, f"acme: renewalInfo {cert_id}")
        doc = resp.json("renewalInfo")
        if not isinstance(doc, dict):
            raise AcmeError("acme: renewalInfo: not a JSON object", type=MALFORMED)
        return doc, resp.retry_after

    async def download(self, url: str) -> Response:
        return await self.post(url, accept="application/pem-certificate-chain")

    async def fetch_up(self, url: str) -> Response:
        """Follow a Link rel="up" (an issuer certificate): POST-as-GET, as RFC 8555 §6.3."""
        return await self.post(url, accept="application/pem-certificate-chain")


def _links(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    """RFC 8288 Link values as (rel, absolute URL); a target that is not a usable http(s) URL
    is dropped (a CA's garbage must not fail an otherwise good response)."""
    out: list[tuple[str, str]] = []
    for value in resp.headers.getall("Link", [])[:MAX_LINKS]:
        for part in value.split(",")[:MAX_LINKS]:
            pieces = [p.strip() for p in part.split(";")]
            if not pieces[0].startswith("<") or not pieces[0].endswith(">"):
                continue
            try:
                target = ca_url(pieces[0][1:-1], "Link", resp.url)
            except AcmeError:
                continue
            for param in pieces[1:]:
                name, _, val = param.partition("=")
                if name.strip().lower() == "rel":
                    for rel in val.strip().strip('"').split()[:8]:
                        out.append((rel, target))
    return out[:MAX_LINKS]


def _decode(cls: type, resp: Response, what: str):
    """`cls.from_json` over the body. josepy raises whatever the field decoders raise on a
    value of the wrong type (DeserializationError, TypeError, KeyError, AttributeError,
    ValueError...): every one of them is the CA's malformed document, so all become
    AcmeError(certd:malformed)."""
    doc = resp.json(what)
    try:
        return cls.from_json(doc)
    except Exception as exc:  # noqa: BLE001 - see above; AcmeError cannot come from here
        raise AcmeError(f"acme: malformed {what}: {type(exc).__name__}: "
                        f"{clean_text(str(exc), 200)}", type=MALFORMED) from None


def _endpoint(directory: messages.Directory, name: str, base) -> str:
    try:
        value = directory[name]
    except (KeyError, TypeError):
        raise AcmeError(f"acme: directory: no {name}", type=MALFORMED) from None
    return ca_url(value, f"directory {name}", base)


def _order(resp: Response) -> messages.Order:
    """An order with its URLs checked (authorizations, finalize, certificate: absolute
    http(s)), so what the issuer requests next is a URL or the order is malformed."""
    order = _decode(messages.Order, resp, "order")
    try:
        authorizations = order.authorizations or ()
        if not isinstance(authorizations, (list, tuple)) \
                or len(authorizations) > MAX_AUTHORIZATIONS:
            raise AcmeError("acme: order: authorizations is not a list", type=MALFORMED)
        urls = tuple(ca_url(u, "order authorization", resp.url) for u in authorizations)
        finalize = (None if order.finalize is None
                    else ca_url(order.finalize, "order finalize", resp.url))
        certificate = (None if order.certificate is None
                       else ca_url(order.certificate, "order certificate", resp.url))
        return order.update(authorizations=urls, finalize=finalize, certificate=certificate)
    except AcmeError:
        raise
    except Exception as exc:  # noqa: BLE001 - an odd field type josepy let through
        raise AcmeError(f"acme: malformed order: {type(exc).__name__}", type=MALFORMED
                        ) from None


def _problem(resp: Response, context: str) -> AcmeError:
    """Turn an error response into AcmeError with the CA's problem type and detail. Whatever
    the body holds, this returns an AcmeError: a type that is not a short string is ignored,
    the detail is cleaned (control characters out) and capped."""
    ptype, detail = "certd:http", ""
    if resp.headers.get("content-type", "").startswith("application/problem+json"):
        try:
            doc = parse_json(resp.body, "problem", status=resp.status)
        except AcmeError:
            doc = None
        if isinstance(doc, dict):
            ptype = problem_type(doc.get("type"), ptype)
            detail = clean_text(doc.get("detail"))
    transient = resp.status >= 500 or ptype in (BAD_NONCE, ACME_ERROR + "rateLimited")
    text = detail or clean_text(resp.body[:400].decode("utf-8", "replace"), 200)
    return AcmeError(
        f"{context}: HTTP {resp.status} {ptype}: {text}",
        type=ptype,
        detail=detail,
        status=resp.status,
        retry_after=resp.retry_after,
        transient=transient,
    )
