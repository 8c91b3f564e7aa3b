"""Preflight: would a CA's HTTP-01 validation of DOMAIN succeed right now?

Run before ordering a certificate for a customer's alias domain, so that a wrong DNS setup
costs nothing at the CA (no failed authorization, no failure budget).

What it checks, all concurrently, with bounded timeouts; every failure becomes a one-line
``reason`` and nothing raises:

- CAA (RFC 8659 §3, RFC 8657): the closest CAA RRset up the tree must allow one of
  ``ca_identities`` to issue, for ``account_uri``, by the name's challenge type (``method``:
  http-01 here; :func:`check_caa` alone for the other solvers). SERVFAIL fails closed.
- every node: a probe token published in the store is fetched through
  ``http://<node address>:<port>/.well-known/acme-challenge/<token>`` with ``Host: DOMAIN``
  and must return the key authorization;
- the name's own DNS: A/AAAA through the configured resolver, and the same fetch through
  each resolved address on ``http_port`` (80 in production).

Redirects are followed as a CA does (RFC 8555 §8.3 and Let's Encrypt practice): at most 10
hops, to http or https on the default ports 80/443 only; another host is resolved through
the configured resolver, never the system's. Certificates on https hops are not verified
(the CA does not either). At most 1 KiB of the body is read.

Everything a tenant or the Internet controls is hostile (RFC 8555 §10.4, server-side request
forgery: HTTP-01 validation is a request to an address the applicant picks):

- certd connects only to globally routable unicast addresses (:func:`address_allowed`),
  whether they come from DNS or from a redirect, unless they fall in ``allow_networks``;
  the configured node addresses are trusted for the per-node probe, but a redirect away from
  the node is judged like any other. The address is checked right before the connection,
  and the connection goes to exactly that address (``Host:`` carries the name), so a second
  DNS answer cannot slip another address in (no rebinding window).
- nothing that came back is quoted: no body, no header, no ``Location``, no redirect host,
  no CAA value, no exception text that may carry peer bytes. A reason says what was wrong in
  fixed words; it may name the domain (it passed the name policy), the configured nodes, CA
  identities and account, and addresses that passed the filter.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import traceback
from collections.abc import Sequence
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

__all__ = ["PreflightResult", "address_allowed", "check_caa", "preflight"]

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
MAX_BODY = 1024
PROBE_LIFETIME = timedelta(minutes=5)
REDIRECTS = (301, 302, 303, 307, 308)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: IPv4 inside

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PreflightResult:
    ok: bool
    reason: str = ""  # one line a person can act on; names the node or step
    checks: tuple[str, ...] = ()  # what was checked, for the event log


class CheckFailed(Exception):
    """A check failed; the message is the reason (fixed words, nothing the peer sent)."""


WRONG_BODY = ("HTTP 200 with a different body (not the probe's key authorization: does this "
              "node proxy the challenge path to certd?)")


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
    allow_networks: Sequence[Network] = (),
    method: str = "http-01",
) -> PreflightResult:
    """Check CAA (for the challenge type ``method``), every node and the name's own DNS path
    for ``domain``.

    ``nodes`` are (name, address, http port). ``resolver`` is (ip, port) of the DNS server
    to ask, or None for the system configuration. ``allow_networks`` are the non-public
    networks certd may connect to anyway (``domains.preflight_allow_networks``). Publishes a
    probe challenge in ``store`` and always deletes it again.
    """
    domain = domain.rstrip(".").lower()
    token = secrets.token_urlsafe(32)
    key_authorization = token + "." + secrets.token_urlsafe(32)
    res = make_resolver(resolver, timeout)
    own_session = session is None
    try:
        await store.put_challenge(Challenge(
            token, key_authorization, certificate="preflight:" + domain,
            authorization_url="preflight", expires_at=utcnow() + PROBE_LIFETIME))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reason
        log.warning("preflight[%s]: cannot publish probe challenge: %s", domain, exc)
        return PreflightResult(False, f"store: cannot publish probe challenge "
                                      f"({type(exc).__name__})")
    try:
        if own_session:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                headers={"User-Agent": "certd-preflight"}, trust_env=False)
        probe = _Probe(session, res, domain, token, key_authorization, timeout, http_port,
                       tuple(allow_networks))
        # order of the list = order in which failures are reported
        jobs = [_check_caa(res, domain, ca_identities, account_uri, method),
                *(_node_path(probe, n, a, p) for n, a, p in nodes),
                _dns_path(probe)]
        results = await asyncio.gather(*(_bounded(j, timeout * (MAX_REDIRECTS + 2))
                                         for j in jobs), return_exceptions=True)
        return _fold(domain, results)
    finally:
        try:
            if own_session and session is not None:
                await session.close()
        finally:
            try:
                await asyncio.wait_for(store.delete_challenge(token), timeout)
            except Exception as exc:  # noqa: BLE001 - it expires in 5 minutes anyway
                log.warning("preflight[%s]: cannot delete probe challenge: %s", domain, exc)


async def _node_path(probe: _Probe, name: str, address: str, port: int) -> str:
    """The probe through one configured node (trusted address, hostile answers)."""
    where = f"node {name} ({_hostport(address, port)})"
    try:
        await probe.fetch(address, port, pinned=True)
    except CheckFailed as exc:
        raise CheckFailed(f"{where}: {exc}") from None
    return f"{where}: served the probe"


async def _dns_path(probe: _Probe) -> list[str]:
    """The probe through every address the name's own DNS gives, as the CA would go."""
    domain = probe.domain
    addresses = await dns_addresses(probe.res, domain)
    if not addresses:
        raise CheckFailed(f"DNS: no A/AAAA record for {domain}")
    if not all(address_allowed(a, probe.allow) for a in addresses):
        # the addresses themselves are not shown: an internal resolver may have chosen them
        raise CheckFailed(f"DNS: {domain} resolves to a non-public address (certd does not "
                    f"connect there, and a public CA would not either)")
    done = [f"DNS: {domain} -> {', '.join(addresses)}"]

    async def one(address: str) -> str:
        where = f"DNS path {domain} -> {_hostport(address, probe.http_port)}"
        try:
            await probe.fetch(address, probe.http_port)
        except CheckFailed as exc:
            raise CheckFailed(f"{where}: {exc}") from None
        return f"{where}: served the probe"

    results = await asyncio.gather(*(one(a) for a in addresses), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
        done.append(r)
    return done


def _fold(domain: str, results: list) -> PreflightResult:
    """One result from the jobs' outcomes: the first failure is the reason."""
    reason = ""
    checks: list[str] = []
    for r in results:
        if isinstance(r, asyncio.CancelledError):
            raise r
        if isinstance(r, CheckFailed):
            reason = reason or str(r)
        elif isinstance(r, BaseException):
            # a bug, not a verdict: the exception text may hold peer bytes, so only the type
            # goes into the reason, and the log gets the frames without the message
            log.warning("preflight[%s]: unexpected %s\n%s", domain, type(r).__name__,
                        "".join(traceback.format_tb(r.__traceback__)).rstrip())
            reason = reason or f"preflight: unexpected {type(r).__name__}"
        elif isinstance(r, list):
            checks.extend(r)
        else:
            checks.append(r)
    return PreflightResult(not reason, reason, tuple(checks))


async def _bounded(job, limit: float):
    try:
        return await asyncio.wait_for(job, limit)
    except TimeoutError:
        raise CheckFailed(f"preflight: gave up after {limit:g}s") from None


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# ------------------------------------------------------------------------- addresses


def address_allowed(address: str | Address, allow: Sequence[Network] = ()) -> bool:
    """May preflight connect to ``address``? Globally routable unicast, or inside ``allow``.

    An IPv4-mapped (``::ffff:a.b.c.d``) or NAT64 (``64:ff9b::/96``) address reaches the IPv4
    address inside it, so that one is judged; a 6to4 address (``2002::/16``) must be public
    and so must the IPv4 address it embeds. Anything that does not parse as an IP address is
    refused (fail closed).
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    ip = _reached(ip)
    if _inside(ip, allow):
        return True
    if not _routable(ip):
        return False
    embedded = ip.sixtofour if isinstance(ip, ipaddress.IPv6Address) else None
    return embedded is None or _routable(embedded) or _inside(embedded, allow)


def _reached(ip: Address) -> Address:
    """The address a connection to ``ip`` really reaches (the IPv4 inside a mapped/NAT64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _routable(ip: Address) -> bool:
    """Globally routable unicast (RFC 6890 registries, as ``ipaddress`` knows them)."""
    return (ip.is_global and not ip.is_multicast and not ip.is_unspecified
            and not ip.is_reserved)


def _inside(ip: Address, networks: Sequence[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


# ------------------------------------------------------------------------------ HTTP


class _Probe:
    def __init__(self, session, res, domain, token, key_authorization, timeout, http_port,
                 allow: tuple[Network, ...] = ()):
        self.session = session
        self.res = res
        self.domain = domain
        self.token = token
        self.key_authorization = key_authorization.encode("ascii")
        self.timeout = timeout
        self.http_port = http_port
        self.allow = allow

    async def fetch(self, address: str, port: int, *, pinned: bool = False) -> None:
        """Fetch the probe through ``address:port`` as the CA would; raise CheckFailed.

        ``pinned``: ``address`` is a configured node, trusted while the hops stay on it.
        Every other address (from DNS, from a redirect) must pass :func:`address_allowed`
        right before certd connects to exactly that address.
        """
        url = URL.build(scheme="http", host=self.domain, path=PATH_PREFIX + self.token)
        connect = (address, port)  # where url's host:port really goes
        for hop in range(MAX_REDIRECTS + 1):
            if not pinned and not address_allowed(connect[0], self.allow):
                raise CheckFailed("redirect to a non-public address" if hop
                            else "not a public address")
            status, location, body = await self._get(url, *connect)
            if status in REDIRECTS:
                if hop == MAX_REDIRECTS:
                    raise CheckFailed(f"more than {MAX_REDIRECTS} redirects")
                if not location:
                    raise CheckFailed(f"HTTP {status} redirect without a Location")
                url, connect, moved = await self._follow(url, location, connect, port)
                pinned = pinned and not moved
                continue
            if status != 200:
                raise CheckFailed(f"HTTP {status}" + (f" after {hop} redirect(s)" if hop else ""))
            if body.rstrip() != self.key_authorization:
                raise CheckFailed(WRONG_BODY)
            return

    async def _follow(self, url: URL, location: str, connect: tuple[str, int],
                      first_port: int) -> tuple[URL, tuple[str, int], bool]:
        """The next hop: (url, (address, port), moved), ``moved`` when the redirect chose the
        address (another host). Nothing of ``location`` goes into a reason."""
        try:
            new = url.join(URL(location))
            host = (new.host or "").rstrip(".").lower()
            explicit_port = new.explicit_port
        except (ValueError, TypeError, UnicodeError):
            raise CheckFailed("redirect with an unusable Location") from None
        if new.scheme not in ("http", "https"):
            raise CheckFailed("redirect to another scheme: CAs only follow http and https")
        default = 80 if new.scheme == "http" else 443
        if explicit_port not in (None, default):
            raise CheckFailed("redirect to another port: CAs only follow ports 80 and 443")
        if not host:
            raise CheckFailed("redirect with an unusable Location")
        moved = host != (url.host or "").rstrip(".").lower()
        address = await self._resolve_redirect(host) if moved else connect[0]
        if new.scheme == "http":
            # the first hop's port stands in for 80 on the same host (lab/test nodes)
            port = first_port if host == self.domain else self.http_port
        else:
            port = 443
        return (new.with_port(None) if explicit_port == default else new,
                (address, port), moved)

    async def _resolve_redirect(self, host: str) -> str:
        """The address a redirect's host leads to (judged by the caller before connecting)."""
        try:
            return str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            pass
        try:
            addresses = await dns_addresses(self.res, host, shown="the redirect's host")
        except CheckFailed as exc:
            raise CheckFailed(f"redirect: {exc}") from None
        if not addresses:
            raise CheckFailed("redirect to a name without an A/AAAA record")
        return addresses[0]

    async def _get(self, url: URL, address: str, port: int) -> tuple[int, str, bytes]:
        """One GET to exactly ``address:port`` with ``Host: url.host``; at most MAX_BODY."""
        extra = {}
        if url.scheme == "https":
            extra = {"ssl": False, "server_hostname": url.host}
        try:
            target = URL.build(scheme=url.scheme, host=address, port=port,
                               path=url.raw_path, query_string=url.raw_query_string,
                               encoded=True)
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
            raise CheckFailed(f"no answer within {self.timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            error = exc.os_error
            raise CheckFailed(f"cannot connect: {error.strerror or type(error).__name__}") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise CheckFailed(_http_error(exc)) from None


# what went wrong, in fixed words: the exceptions' own text may carry the peer's bytes
_HTTP_ERRORS: tuple[tuple[type[BaseException], str], ...] = (
    (aiohttp.ServerDisconnectedError, "the server closed the connection without an answer"),
    (aiohttp.ClientPayloadError, "unreadable response body"),
    (aiohttp.ClientResponseError, "unparsable HTTP response"),
    (aiohttp.ClientSSLError, "TLS handshake failed"),
    (aiohttp.InvalidURL, "redirect with an unusable Location"),
    (ValueError, "redirect with an unusable Location"),
)


def _http_error(exc: BaseException) -> str:
    for kind, text in _HTTP_ERRORS:
        if isinstance(exc, kind):
            return text
    if isinstance(exc, OSError) and exc.strerror:  # the OS's words, e.g. connection reset
        return f"connection error: {exc.strerror}"
    return f"HTTP error ({type(exc).__name__})"


# ------------------------------------------------------------------------------- DNS


def make_resolver(resolver: tuple[str, int] | None, timeout: float) -> dns.asyncresolver.Resolver:
    if resolver is None:
        res = dns.asyncresolver.Resolver()
    else:
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = [resolver[0]]
        res.port = resolver[1]
    res.lifetime = timeout
    res.timeout = min(timeout, 2.0)
    return res


async def dns_query(res, name: str, rdtype: str, shown: str | None = None):
    """The answer RRset or None (NXDOMAIN / no data); raise CheckFailed on SERVFAIL or timeout.

    ``shown`` names the query in a reason (default ``name``); the resolver's own error text
    is never quoted (it repeats what the servers answered)."""
    shown = shown or name
    try:
        answer = await res.resolve(name, rdtype, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.resolver.NoNameservers as exc:
        what = "SERVFAIL" if "SERVFAIL" in str(exc) else "no name server answered"
        raise CheckFailed(f"{rdtype} lookup for {shown} failed ({what})") from None
    except dns.exception.Timeout:
        raise CheckFailed(f"{rdtype} lookup for {shown} timed out") from None
    except (dns.exception.DNSException, ValueError) as exc:
        raise CheckFailed(f"{rdtype} lookup for {shown} failed ({type(exc).__name__})") from None
    return answer.rrset


async def dns_addresses(res, name: str, shown: str | None = None) -> list[str]:
    out: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            rrset = await dns_query(res, name, rdtype, shown)
        except CheckFailed as exc:
            raise CheckFailed(f"DNS: {exc}") from None
        if rrset is not None:
            out.extend(r.address for r in rrset)
    return out


async def check_caa(domain: str, *, resolver: tuple[str, int] | None,
                    ca_identities: list[str], account_uri: str | None, method: str,
                    timeout: float = 5.0) -> PreflightResult:
    """CAA alone (for solvers whose path check is not HTTP): may one of ``ca_identities``
    issue for ``domain`` to ``account_uri`` validating by ``method`` (a challenge type)?"""
    domain = domain.rstrip(".").lower()
    res = make_resolver(resolver, timeout)
    results = await asyncio.gather(
        _bounded(_check_caa(res, domain, ca_identities, account_uri, method), timeout * 4),
        return_exceptions=True)
    return _fold(domain, results)


async def _check_caa(res, domain: str, ca_identities: list[str],
                     account_uri: str | None, method: str = "http-01") -> str:
    """RFC 8659 §3: the first name up the tree with a CAA RRset is the relevant one (for a
    wildcard, issuewild there wins over issue: RFC 8659 §4.3)."""
    labels = domain.removeprefix("*.").split(".")
    ours = {c.strip().lower().rstrip(".") for c in ca_identities}
    for i in range(len(labels)):
        name = ".".join(labels[i:])
        rrset = await dns_query(res, name, "CAA")  # SERVFAIL raises: fail closed (§3)
        if not rrset:
            continue
        return _evaluate_caa(name, list(rrset), ours, account_uri, method,
                             wildcard=domain.startswith("*."))
    return f"CAA: no record for {domain} or its parents (any CA may issue)"


def _evaluate_caa(name: str, records, ours: set[str], account_uri: str | None,
                  method: str = "http-01", *, wildcard: bool = False) -> str:
    """The verdict on one CAA RRset. Reasons name ``name``, the configured CA identities and
    certd's account, never a value from the records (the tenant wrote those)."""
    issue: list[str] = []
    issuewild: list[str] = []
    for r in records:
        tag = r.tag.decode("ascii", "replace").lower()
        if tag == "issue":
            issue.append(r.value.decode("utf-8", "replace"))
        elif tag == "issuewild":
            issuewild.append(r.value.decode("utf-8", "replace"))
        elif r.flags & 128 and tag != "iodef":
            raise CheckFailed(f"CAA for {name} has a critical unknown property (no CA may issue)")
    if wildcard and issuewild:  # RFC 8659 §4.3: for a wildcard, issuewild replaces issue
        issue = issuewild
    if not issue:
        return f"CAA for {name}: no issue property (any CA may issue)"
    named = False  # does any issue property name an issuer at all?
    refusals: list[str] = []
    for value in issue:
        issuer, params = _caa_issue(value)
        named = named or bool(issuer)
        if not issuer or issuer not in ours:
            continue
        # several CAs (acme.issuers): each CAA identity is checked with its own CA's account
        uri = account_uri.get(issuer) if isinstance(account_uri, dict) else account_uri
        refusal = _caa_refusal(name, issuer, params, uri, method)
        if refusal is None:
            return f"CAA for {name} allows {issuer}"
        refusals.append(refusal)
    if refusals:
        raise CheckFailed(refusals[0])
    if not named:
        raise CheckFailed(f"CAA for {name} forbids all issuance (issue \";\")")
    raise CheckFailed(f"CAA for {name} allows other CAs only, not "
                f"{', '.join(sorted(ours)) or '(no CA identity configured)'}")


def _caa_issue(value: str) -> tuple[str, dict[str, str]]:
    """An issue property's value (RFC 8659 §4.2): (issuer domain, parameters)."""
    issuer, _, rest = value.partition(";")
    params = {}
    for part in rest.split(";"):
        key, eq, val = part.strip().partition("=")
        if eq:
            params[key.strip().lower()] = val.strip()
    return issuer.strip().lower().rstrip("."), params


def _caa_refusal(name: str, issuer: str, params: dict[str, str],
                 account_uri: str | None, method: str = "http-01") -> str | None:
    """Why an issue property naming our ``issuer`` still refuses us (RFC 8657), or None."""
    if "accounturi" in params and params["accounturi"] != account_uri:
        return (f"CAA for {name}: accounturi names another account than certd's "
                f"({account_uri or 'no account yet'}) for {issuer}")
    if "validationmethods" in params:
        methods = [m.strip().lower() for m in params["validationmethods"].split(",")]
        if method not in methods:
            return f"CAA for {name}: validationmethods exclude {method} for {issuer}"
    return None
