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
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import josepy as jose
from acme import jws, messages
from yarl import URL

from certd import __version__
from certd.errors import AcmeError
from certd.httputil import BodyTooLarge, read_limited

log = logging.getLogger(__name__)

ACME_ERROR = "urn:ietf:params:acme:error:"
BAD_NONCE = ACME_ERROR + "badNonce"
MAX_NONCE_RETRIES = 20  # at 50 % rejection, all 20 fail once in a million
MAX_BODY = 1 << 20  # no ACME resource is anywhere near 1 MiB


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    links: dict[str, list[str]]  # rel -> URLs
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise AcmeError(
                f"acme: response is not JSON: {exc}", type="certd:malformed", status=self.status
            ) from None

    @property
    def location(self) -> str | None:
        return self.headers.get("location")

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("retry-after"))


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (RFC 9110: delay-seconds or an HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


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
                    resp.status, {k.lower(): v for k, v in resp.headers.items()}, links, body
                )
        except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
            raise AcmeError(
                f"acme: {method} {url}: {type(exc).__name__}: {exc}".rstrip(": "),
                type="certd:unreachable",
                transient=True,
            ) from None
        nonce = response.headers.get("replay-nonce")
        if nonce:
            try:
                self._nonces.append(jws.Header._fields["nonce"].decode(nonce))
            except jose.DeserializationError:
                log.warning("acme: ignoring malformed Replay-Nonce from %s", url)
        return response

    async def directory(self) -> messages.Directory:
        if self._directory is None:
            resp = await self._request("GET", self.directory_url)
            if resp.status != 200:
                raise _problem(resp, f"acme: directory {self.directory_url}")
            try:
                self._directory = messages.Directory.from_json(resp.json())
            except (jose.DeserializationError, TypeError) as exc:
                raise AcmeError(f"acme: directory: malformed: {exc}", type="certd:malformed")
        return self._directory

    async def _nonce(self) -> bytes:
        if self._nonces:
            return self._nonces.pop()
        url = (await self.directory())["newNonce"]
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
        binding = None
        if eab:
            binding = messages.ExternalAccountBinding.from_data(
                key.public_key(), eab[0], eab[1], directory
            )
        reg = messages.NewRegistration.from_data(
            email=email, terms_of_service_agreed=True, external_account_binding=binding
        )
        resp = await self.post(directory["newAccount"], reg, use_kid=False)
        if not resp.location:
            raise AcmeError("acme: newAccount: no Location header", type="certd:malformed")
        self.account_uri = resp.location
        return resp.location

    def use_account(self, key: jose.JWK, uri: str) -> None:
        self.key = key
        self.account_uri = uri

    def key_authorization(self, challenge: messages.ChallengeBody) -> str:
        return challenge.chall.key_authorization(self.key)

    # orders (RFC 8555 §7.4) ------------------------------------------------------------
    async def new_order(self, domains: tuple[str, ...], *, replaces: str | None = None
                        ) -> tuple[str, messages.Order]:
        directory = await self.directory()
        payload: dict[str, Any] = {
            "identifiers": [{"type": "dns", "value": d} for d in domains]
        }
        if replaces:
            payload["replaces"] = replaces
        resp = await self.post(directory["newOrder"], payload)
        if not resp.location:
            raise AcmeError("acme: newOrder: no Location header", type="certd:malformed")
        return resp.location, _decode(messages.Order, resp, "order")

    async def get_order(self, url: str) -> tuple[messages.Order, float | None]:
        resp = await self.post(url)
        return _decode(messages.Order, resp, "order"), resp.retry_after

    async def get_authorization(self, url: str) -> tuple[messages.Authorization, float | None]:
        resp = await self.post(url)
        return _decode(messages.Authorization, resp, "authorization"), resp.retry_after

    async def answer_challenge(self, url: str) -> None:
        """Tell the CA the challenge is ready to be validated (RFC 8555 §7.5.1)."""
        await self.post(url, {})

    async def finalize(self, url: str, csr_der: bytes) -> messages.Order:
        resp = await self.post(url, {"csr": jose.encode_b64jose(csr_der)})
        return _decode(messages.Order, resp, "order")

    async def revoke(self, cert_der: bytes, reason: int) -> None:
        """revokeCert (RFC 8555 §7.6), signed with the account key; `reason` is an RFC 5280
        CRLReason code."""
        directory = await self.directory()
        await self.post(directory["revokeCert"],
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
        directory = await self.directory()
        try:
            base = directory["renewalInfo"]
        except KeyError:
            return None
        url = base.rstrip("/") + "/" + cert_id
        resp = await self._request("GET", url)
        if resp.status != 200:
            raise _problem(resp, f"acme: renewalInfo {cert_id}")
        doc = resp.json()
        if not isinstance(doc, dict):
            raise AcmeError("acme: renewalInfo: not a JSON object", type="certd:malformed")
        return doc, resp.retry_after

    async def download(self, url: str) -> Response:
        return await self.post(url, accept="application/pem-certificate-chain")

    async def fetch_up(self, url: str) -> Response:
        """Follow a Link rel="up" (an issuer certificate): POST-as-GET, as RFC 8555 §6.3."""
        return await self.post(url, accept="application/pem-certificate-chain")


def _links(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    out = []
    for value in resp.headers.getall("Link", []):
        for part in value.split(","):
            pieces = [p.strip() for p in part.split(";")]
            if not pieces[0].startswith("<") or not pieces[0].endswith(">"):
                continue
            target = str(resp.url.join(URL(pieces[0][1:-1])))
            for param in pieces[1:]:
                name, _, val = param.partition("=")
                if name.strip().lower() == "rel":
                    for rel in val.strip().strip('"').split():
                        out.append((rel, target))
    return out


def _decode(cls: type, resp: Response, what: str):
    try:
        return cls.from_json(resp.json())
    except (jose.DeserializationError, TypeError, ValueError, KeyError) as exc:
        raise AcmeError(f"acme: malformed {what}: {exc}", type="certd:malformed") from None


def _problem(resp: Response, context: str) -> AcmeError:
    """Turn an error response into AcmeError with the CA's problem type and detail."""
    ptype, detail = "certd:http", ""
    if resp.headers.get("content-type", "").startswith("application/problem+json"):
        try:
            doc = json.loads(resp.body)
            ptype = str(doc.get("type") or ptype)
            detail = str(doc.get("detail") or "")
        except (ValueError, AttributeError):
            pass
    transient = resp.status >= 500 or ptype in (BAD_NONCE, ACME_ERROR + "rateLimited")
    text = detail or resp.body[:200].decode("utf-8", "replace")
    return AcmeError(
        f"{context}: HTTP {resp.status} {ptype}: {text}",
        type=ptype,
        detail=detail,
        status=resp.status,
        retry_after=resp.retry_after,
        transient=transient,
    )
