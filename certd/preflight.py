"""Preflight: would a CA's HTTP-01 validation of DOMAIN succeed right now?

Run before ordering a certificate for a customer's alias domain, so that a wrong DNS setup
costs nothing at the CA (no failed authorization, no failure budget).

What it checks, all concurrently, with bounded timeouts; every failure becomes a one-line
``reason`` and nothing raises:

- CAA (RFC 8659 §3, RFC 8657): the closest CAA RRset up the tree must allow one of
  ``ca_identities`` to issue, for ``account_uri``, by ``http-01``. SERVFAIL fails closed.
- every node: a probe token published in the store is fetched through
  ``http://<node address>:<port>/.well-known/acme-challenge/<token>`` with ``Host: DOMAIN``
  and must return the key authorization;
- the name's own DNS: A/AAAA through the configured resolver, and the same fetch through
  each resolved address on ``http_port`` (80 in production).

Redirects are followed as a CA does (RFC 8555 §8.3 and Let's Encrypt practice): at most 10
hops, to http or https on the default ports 80/443 only; another host is resolved through
the configured resolver, never the system's. Certificates on https hops are not verified
(the CA does not either). At most 1 KiB of the body is read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
from yarl import URL

from certd.issuance.http01 import PATH_PREFIX
from certd.model import Challenge, utcnow

__all__ = ["PreflightResult", "preflight"]

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
MAX_BODY = 1024
PROBE_LIFETIME = timedelta(minutes=5)


@dataclass(frozen=True)
class PreflightResult:
    ok: bool
    reason: str = ""  # one line a person can act on; names the node or step
    checks: tuple[str, ...] = ()  # what was checked, for the event log


class _Fail(Exception):
    """A check failed; the message is the reason."""


async def preflight(
    domain: str,
    *,
    store,
    nodes: list[tuple[str, str, int]],
    resolver: tuple[str, int] | None,
    ca_identities: list[str],
    account_uri: str | None,
    timeout: float = 5.0,
    http_port: int = 80,
    session: aiohttp.ClientSession | None = None,
) -> PreflightResult:
    """Check CAA, every node and the name's own DNS path for ``domain``.

    ``nodes`` are (name, address, http port). ``resolver`` is (ip, port) of the DNS server
    to ask, or None for the system configuration. Publishes a probe challenge in ``store``
    and always deletes it again.
    """
    domain = domain.rstrip(".").lower()
    token = secrets.token_urlsafe(32)
    key_authorization = token + "." + secrets.token_urlsafe(32)
    res = _resolver(resolver, timeout)
    own_session = session is None
    checks: list[str] = []
    try:
        await store.put_challenge(Challenge(
            token, key_authorization, certificate="preflight:" + domain,
            authorization_url="preflight", expires_at=utcnow() + PROBE_LIFETIME))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reason
        return PreflightResult(False, f"store: cannot publish probe challenge: {exc}")
    try:
        if own_session:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                headers={"User-Agent": "certd-preflight"}, trust_env=False)
        probe = _Probe(session, res, domain, token, key_authorization, timeout, http_port)

        async def caa() -> str:
            return await _check_caa(res, domain, ca_identities, account_uri)

        async def node(name: str, address: str, port: int) -> str:
            where = f"node {name} ({_hostport(address, port)})"
            try:
                await probe.fetch(address, port)
            except _Fail as exc:
                raise _Fail(f"{where}: {exc}") from None
            return f"{where}: served the probe"

        async def dns_path() -> list[str]:
            addresses = await _addresses(res, domain)
            if not addresses:
                raise _Fail(f"DNS: no A/AAAA record for {domain}")
            done = [f"DNS: {domain} -> {', '.join(addresses)}"]

            async def one(address: str) -> str:
                where = f"DNS path {domain} -> {_hostport(address, http_port)}"
                try:
                    await probe.fetch(address, http_port)
                except _Fail as exc:
                    raise _Fail(f"{where}: {exc}") from None
                return f"{where}: served the probe"

            results = await asyncio.gather(*(one(a) for a in addresses),
                                           return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
                done.append(r)
            return done

        # order of the list = order in which failures are reported
        jobs = [caa(), *(node(n, a, p) for n, a, p in nodes), dns_path()]
        results = await asyncio.gather(*(_bounded(j, timeout * (MAX_REDIRECTS + 2))
                                         for j in jobs), return_exceptions=True)
        reason = ""
        for r in results:
            if isinstance(r, _Fail):
                reason = reason or str(r)
            elif isinstance(r, BaseException):
                if isinstance(r, asyncio.CancelledError):
                    raise r
                reason = reason or f"preflight: unexpected {type(r).__name__}: {r}"
            elif isinstance(r, list):
                checks.extend(r)
            else:
                checks.append(r)
        return PreflightResult(not reason, reason, tuple(checks))
    finally:
        try:
            if own_session and session is not None:
                await session.close()
        finally:
            try:
                await asyncio.wait_for(store.delete_challenge(token), timeout)
            except Exception as exc:  # noqa: BLE001 - it expires in 5 minutes anyway
                log.warning("preflight[%s]: cannot delete probe challenge: %s", domain, exc)


async def _bounded(job, limit: float):
    try:
        return await asyncio.wait_for(job, limit)
    except TimeoutError:
        raise _Fail(f"preflight: gave up after {limit:g}s") from None


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# ------------------------------------------------------------------------------ HTTP


class _Probe:
    def __init__(self, session, res, domain, token, key_authorization, timeout, http_port):
        self.session = session
        self.res = res
        self.domain = domain
        self.token = token
        self.key_authorization = key_authorization
        self.timeout = timeout
        self.http_port = http_port

    async def fetch(self, address: str, port: int) -> None:
        """Fetch the probe through ``address:port`` as the CA would; raise _Fail."""
        url = URL.build(scheme="http", host=self.domain, path=PATH_PREFIX + self.token)
        connect = (address, port)  # where url's host:port really goes
        for hop in range(MAX_REDIRECTS + 1):
            status, location, body = await self._get(url, *connect)
            if status in (301, 302, 303, 307, 308):
                if hop == MAX_REDIRECTS:
                    raise _Fail(f"more than {MAX_REDIRECTS} redirects")
                if not location:
                    raise _Fail(f"{url}: HTTP {status} without Location")
                url, connect = await self._follow(url, location, connect, address, port)
                continue
            if status != 200:
                raise _Fail(f"HTTP {status}" + (f" for {url}" if hop else ""))
            got = body.decode("ascii", "replace").rstrip()
            if got != self.key_authorization:
                shown = got[:60].replace("\n", "\\n")
                raise _Fail(f"HTTP 200 but wrong body {shown!r} (not the probe's key "
                            f"authorization: does this node proxy the challenge path to "
                            f"certd?)")
            return

    async def _follow(self, url: URL, location: str, connect, first_address, first_port):
        try:
            new = url.join(URL(location))
        except ValueError:
            raise _Fail(f"redirect to unparsable Location {location!r}") from None
        if new.scheme not in ("http", "https"):
            raise _Fail(f"redirect to {location!r}: only http and https are followed")
        default = 80 if new.scheme == "http" else 443
        if new.explicit_port not in (None, default):
            raise _Fail(f"redirect to {location!r}: CAs only follow ports 80 and 443")
        host = (new.host or "").rstrip(".").lower()
        if not host:
            raise _Fail(f"redirect to {location!r}: no host")
        if host == url.host:
            address = connect[0]
        else:
            address = await self._resolve_redirect(host, location)
        if new.scheme == "http":
            # the first hop's port stands in for 80 on the same host (lab/test nodes)
            port = first_port if host == self.domain else self.http_port
        else:
            port = 443
        return new.with_port(None) if new.explicit_port == default else new, (address, port)

    async def _resolve_redirect(self, host: str, location: str) -> str:
        try:
            ipaddress.ip_address(host.strip("[]"))
            return host.strip("[]")
        except ValueError:
            pass
        addresses = await _addresses(self.res, host)
        if not addresses:
            raise _Fail(f"redirect to {location!r}: DNS: no A/AAAA record for {host}")
        return addresses[0]

    async def _get(self, url: URL, address: str, port: int) -> tuple[int, str, bytes]:
        target = URL.build(scheme=url.scheme, host=address, port=port,
                           path=url.raw_path, query_string=url.raw_query_string,
                           encoded=True)
        extra = {}
        if url.scheme == "https":
            extra = {"ssl": False, "server_hostname": url.host}
        try:
            async with self.session.get(
                    target, headers={"Host": url.host, "Accept": "*/*"},
                    allow_redirects=False, auto_decompress=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout), **extra) as resp:
                body = b""
                while len(body) < MAX_BODY:
                    chunk = await resp.content.read(MAX_BODY - len(body))
                    if not chunk:
                        break
                    body += chunk
                return resp.status, resp.headers.get("Location", ""), body
        except TimeoutError:
            raise _Fail(f"no answer within {self.timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise _Fail(f"cannot connect: {exc.os_error.strerror or exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise _Fail(f"HTTP error: {type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise _Fail(f"cannot connect: {exc}") from None


# ------------------------------------------------------------------------------- DNS


def _resolver(resolver: tuple[str, int] | None, timeout: float) -> dns.asyncresolver.Resolver:
    if resolver is None:
        res = dns.asyncresolver.Resolver()
    else:
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = [resolver[0]]
        res.port = resolver[1]
    res.lifetime = timeout
    res.timeout = min(timeout, 2.0)
    return res


async def _query(res, name: str, rdtype: str):
    """The answer RRset or None (NXDOMAIN / no data); raise _Fail on SERVFAIL or timeout."""
    try:
        answer = await res.resolve(name, rdtype, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.resolver.NoNameservers as exc:
        if "SERVFAIL" in str(exc):
            raise _Fail(f"{rdtype} lookup for {name} failed (SERVFAIL)") from None
        raise _Fail(f"{rdtype} lookup for {name} failed: {exc}") from None
    except dns.exception.Timeout:
        raise _Fail(f"{rdtype} lookup for {name} timed out") from None
    except dns.exception.DNSException as exc:
        raise _Fail(f"{rdtype} lookup for {name} failed: {exc}") from None
    return answer.rrset


async def _addresses(res, name: str) -> list[str]:
    out: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            rrset = await _query(res, name, rdtype)
        except _Fail as exc:
            raise _Fail(f"DNS: {exc}") from None
        if rrset is not None:
            out.extend(r.address for r in rrset)
    return out


async def _check_caa(res, domain: str, ca_identities: list[str],
                     account_uri: str | None) -> str:
    """RFC 8659 §3: the first name up the tree with a CAA RRset is the relevant one."""
    labels = domain.removeprefix("*.").split(".")
    ours = {c.strip().lower().rstrip(".") for c in ca_identities}
    for i in range(len(labels)):
        name = ".".join(labels[i:])
        rrset = await _query(res, name, "CAA")  # SERVFAIL raises: fail closed (§3)
        if not rrset:
            continue
        return _evaluate_caa(name, list(rrset), ours, account_uri)
    return f"CAA: no record for {domain} or its parents (any CA may issue)"


def _evaluate_caa(name: str, records, ours: set[str], account_uri: str | None) -> str:
    issue: list[str] = []
    for r in records:
        tag = r.tag.decode("ascii", "replace").lower()
        value = r.value.decode("utf-8", "replace")
        if tag == "issue":
            issue.append(value)
        elif r.flags & 128 and tag not in ("issuewild", "iodef"):
            raise _Fail(f"CAA for {name} has a critical unknown property {tag!r}")
    if not issue:
        return f"CAA for {name}: no issue property (any CA may issue)"
    allowed: list[str] = []
    refusals: list[str] = []
    for value in issue:
        issuer, _, rest = value.partition(";")
        issuer = issuer.strip().lower().rstrip(".")
        if issuer:
            allowed.append(issuer)
        if not issuer or issuer not in ours:
            continue
        params = {}
        for part in rest.split(";"):
            key, eq, val = part.strip().partition("=")
            if eq:
                params[key.strip().lower()] = val.strip()
        if "accounturi" in params and params["accounturi"] != account_uri:
            refusals.append(f"CAA for {name} allows {issuer} only for account "
                            f"{params['accounturi']}, not {account_uri or '(no account yet)'}")
            continue
        if "validationmethods" in params:
            methods = [m.strip().lower() for m in params["validationmethods"].split(",")]
            if "http-01" not in methods:
                refusals.append(f"CAA for {name} allows {issuer} only with validation "
                                f"methods {params['validationmethods']}, not http-01")
                continue
        return f"CAA for {name} allows {issuer}"
    if refusals:
        raise _Fail(refusals[0])
    if not allowed:
        raise _Fail(f"CAA for {name} forbids all issuance (issue \";\")")
    raise _Fail(f"CAA for {name} allows only {', '.join(sorted(set(allowed)))}, "
                f"not {', '.join(sorted(ours)) or '(no CA identity configured)'}")
