"""dns-01 (RFC 8555 §8.4) through RFC 2136 dynamic updates signed with TSIG (RFC 8945): the
solver of the `challenges:` rules of type dns-01 (certd/config.py, Dns01ChallengeRule).

present: the TXT record `_acme-challenge.<identifier>` = base64url(SHA-256(key
authorization)) is added by an update to the rule's `server`; it returns only once EVERY
authoritative server of the zone (the rule's `nameservers`, else the zone's NS set) answers
it, within `propagation_timeout`. cleanup: that one TXT value is deleted (nothing else at the
name: the wildcard's and the apex's values live side by side). preflight: a probe TXT value
added and deleted at the same name, which proves the server takes updates for it with this
key (a wrong key is reported before any order).

A CNAME at `_acme-challenge.<identifier>` is followed (acme-dns style delegation: the record
goes where the CNAME points), at most MAX_CHAIN links, and the target must lie in a zone
some dns-01 rule configures (the rule's server and key then do the update). Each link is
asked of that zone's own server when it is in a configured zone (no cache in between), else
of the resolver (domains.resolver, or the system's).

Everything DNS answers is hostile: a loop, an over-long chain, a malformed answer, a target
outside the configured zones each get a fixed-words error; nothing a server sent (names,
texts) is quoted, and the TSIG secret is never logged or shown. All I/O is dnspython's
asyncio API; the secret file is read once, in a thread, when the solver is built.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update

from certd import preflight  # the resolver and its fixed-words errors, shared
from certd.errors import AcmeError, ConfigError
from certd.issuance.solvers import ChallengeType, Proof, dns01_txt_value

__all__ = [
    "ERROR_TYPE",
    "LABEL",
    "MAX_CHAIN",
    "Dns01Error",
    "Dns01Solver",
    "Dns01Zone",
    "build",
    "read_tsig_secret",
    "zone_from_rule",
]

log = logging.getLogger(__name__)

LABEL = "_acme-challenge"
ERROR_TYPE = "certd:dns-01"
MAX_CHAIN = 8  # CNAME links followed from _acme-challenge.<identifier> (acme-dns needs one)
MAX_NAMESERVERS = 16  # NS records of a zone looked at
TTL = 60  # of the TXT records certd adds
QUERY_TIMEOUT = 3.0  # one DNS query or update
FIRST_POLL = 0.1  # seconds between checks of a server that does not serve the record yet,
MAX_POLL = 2.0  # doubling up to this
_SECRET = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_BIND_SECRET = re.compile(r'\bsecret\s+"([^"]*)"\s*;')


class Dns01Error(AcmeError):
    """A dns-01 step failed (the update, the propagation check, a CNAME). The message names the
    certificate, the identifier, the zone and configured servers; never DNS data."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message, type=ERROR_TYPE, transient=transient)


@dataclass(frozen=True)
class Dns01Zone:
    """One dns-01 rule, ready to use: where updates for `zone` go, signed with `key`."""

    label: str  # how messages name the rule: its name, or its zone
    zone: dns.name.Name
    server: tuple[str, int]
    key: dns.tsig.Key = field(repr=False, compare=False)
    nameservers: tuple[tuple[str, int], ...] | None = None
    propagation_timeout: float = 120.0

    def contains(self, name: dns.name.Name) -> bool:
        return name.is_subdomain(self.zone)

    @property
    def zone_text(self) -> str:
        return self.zone.to_text(omit_final_dot=True)


def read_tsig_secret(path: Path, where: str = "challenges[].tsig_key_file") -> str:
    """The base64 TSIG secret in `path`: the secret alone, or a BIND `key { ... secret "...";
    };` block (tsig-keygen's output). Blocking (a file read): call it in a thread. The
    secret is never part of an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"{where}: cannot read it: {exc.strerror or exc}"]) \
            from None
    except UnicodeDecodeError:
        text = ""
    m = _BIND_SECRET.search(text)
    secret = (m.group(1) if m else text).strip()
    try:
        ok = bool(_SECRET.fullmatch(secret)) and len(base64.b64decode(secret,
                                                                      validate=True)) >= 16
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise ConfigError(str(path), [(f"{where}: must hold a base64 TSIG secret of at least "
                                       "16 bytes, alone or in a BIND key block (not quoted: it "
                                       "is a secret)")])
    return secret


def zone_from_rule(rule, label: str) -> Dns01Zone:
    """A Dns01Zone from a config.Dns01ChallengeRule (reads the secret: blocking)."""
    secret = read_tsig_secret(rule.tsig_key_file, f"{label}.tsig_key_file")
    host, _, port = rule.server.rpartition(":")
    return Dns01Zone(
        label=rule.name or rule.zone,
        zone=dns.name.from_text(rule.zone),
        server=(host.strip("[]"), int(port)),
        key=dns.tsig.Key(rule.tsig_key_name, secret, rule.tsig_algorithm),
        nameservers=(tuple((h.strip("[]"), int(p)) for h, _, p in
                           (n.rpartition(":") for n in rule.nameservers))
                     if rule.nameservers else None),
        propagation_timeout=rule.propagation_timeout.total_seconds(),
    )


@dataclass(frozen=True)
class _Target:
    name: dns.name.Name  # where the TXT goes
    zone: Dns01Zone
    delegated: bool  # reached through a CNAME

    def shown(self, identifier: str) -> str:
        """The record as messages name it (a CNAME's target is never quoted)."""
        where = f"{LABEL}.{identifier}"
        return (f"{where} (delegated by CNAME into zone {self.zone.zone_text})"
                if self.delegated else where)


class _Unusable(Exception):
    """A server's answer could not be used; the message is fixed words."""


class Dns01Solver:
    """dns-01 for the names of one rule (`zone`); `zones` are every dns-01 rule's, where a
    CNAME may lead. `resolver`: (ip, port) for names outside them (None: the system's).
    `caa`: the CAA check preflight runs for the name (set by the wiring, as the http-01
    solver's probe is), None for none."""

    type = ChallengeType.DNS01

    def __init__(self, zone: Dns01Zone, zones: Sequence[Dns01Zone] = (), *,
                 resolver: tuple[str, int] | None = None,
                 caa: Callable[[str], Awaitable[None]] | None = None,
                 query_timeout: float = QUERY_TIMEOUT):
        self.zone = zone
        self.zones = [zone, *(z for z in zones if z is not zone)]
        self.resolver = resolver
        self.caa = caa
        self.query_timeout = query_timeout
        self._targets: dict[tuple[str, str], _Target] = {}  # where present() put a proof

    # ------------------------------------------------------------------ the Protocol

    async def preflight(self, identifier: str) -> None:
        """The update path for `identifier` works: CNAMEs followed, a probe TXT value added
        and deleted with the key (no propagation wait), then CAA (if set) for dns-01.
        `identifier` may be a wildcard (`*.name`: the record is the name's)."""
        bare = identifier.removeprefix("*.")
        where = f"preflight[{identifier}]: dns-01"
        target = await self._target(bare, where)
        probe = "certd-preflight-" + secrets.token_urlsafe(16)
        await self._update(target, probe, add=True, where=where, identifier=bare)
        await self._update(target, probe, add=False, where=where, identifier=bare)
        log.info("dns-01: preflight for %s: zone %s takes updates at %s", identifier,
                 target.zone.zone_text, _hostport(target.zone.server))
        if self.caa is not None:
            await self.caa(identifier)

    async def present(self, proof: Proof) -> None:
        value = dns01_txt_value(proof.key_authorization)
        where = f"dns-01[{proof.certificate}]"
        target = await self._target(proof.identifier, where)
        self._targets[(proof.identifier, proof.token)] = target
        await self._update(target, value, add=True, where=where, identifier=proof.identifier)
        servers = await self._authoritative(target.zone, where)
        await self._wait_served(target, value, servers, where, proof.identifier)
        log.info("%s: %s served by %d authoritative server(s)", where,
                 target.shown(proof.identifier), len(servers),
                 extra={"certificate": proof.certificate})

    async def cleanup(self, proof: Proof) -> None:
        value = dns01_txt_value(proof.key_authorization)
        where = f"dns-01[{proof.certificate}]"
        target = self._targets.pop((proof.identifier, proof.token), None) or await self._target(
            proof.identifier, where)
        await self._update(target, value, add=False, where=where, identifier=proof.identifier)
        log.info("%s: removed the TXT value at %s", where, target.shown(proof.identifier),
                 extra={"certificate": proof.certificate})

    # --------------------------------------------------------------------- CNAMEs

    def _zone_of(self, name: dns.name.Name) -> Dns01Zone | None:
        """The configured zone holding `name`: this rule's if it does, else the deepest."""
        if self.zone.contains(name):
            return self.zone
        found = [z for z in self.zones if z.contains(name)]
        return max(found, key=lambda z: len(z.zone), default=None)

    async def _target(self, identifier: str, where: str | None = None) -> _Target:
        """Where the TXT of `identifier` goes: `_acme-challenge.<identifier>`, or the end of
        its CNAME chain, in a configured zone."""
        where = where or f"preflight[{identifier}]: dns-01"
        start = dns.name.from_text(f"{LABEL}.{identifier}")
        name = start
        seen = {name}
        for _ in range(MAX_CHAIN + 1):
            cname = await self._cname(name, identifier, where)
            if cname is None:
                zone = self._zone_of(name)
                if zone is None:
                    raise Dns01Error(
                        f"{where}: {LABEL}.{identifier} "
                        + ("has a CNAME to a name outside" if name != start else "is in none of")
                        + " the zones the dns-01 rules configure")
                return _Target(name, zone, name != start)
            if cname in seen:
                raise Dns01Error(f"{where}: the CNAME chain of {LABEL}.{identifier} loops")
            seen.add(cname)
            name = cname
        raise Dns01Error(f"{where}: the CNAME chain of {LABEL}.{identifier} is longer than "
                         f"{MAX_CHAIN} links")

    async def _cname(self, name: dns.name.Name, identifier: str,
                     where: str) -> dns.name.Name | None:
        """The CNAME target of `name`, or None."""
        zone = self._zone_of(name)
        try:
            if zone is not None:  # straight from the zone's server: no cache in between
                response = await self._ask(zone.server, name, dns.rdatatype.CNAME)
                if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                    raise _Unusable(f"answered {dns.rcode.to_text(response.rcode())}")
                rrsets = [r for r in response.answer if r.name == name
                          and r.rdtype == dns.rdatatype.CNAME]
            else:
                rrsets = await self._resolve_cname(name)
        except _Unusable as exc:
            server = _hostport(zone.server) if zone else "the resolver"
            raise Dns01Error(f"{where}: looking up the CNAME chain of {LABEL}.{identifier} at "
                             f"{server}: {exc}", transient=True) from None
        if not rrsets:
            return None
        if len(rrsets) > 1 or len(rrsets[0]) != 1:
            raise Dns01Error(f"{where}: {LABEL}.{identifier}: a malformed CNAME answer (more "
                             "than one target)")
        return rrsets[0][0].target

    def _resolver(self):
        """The resolver for names outside the configured zones, as certd/preflight.py builds
        it (with its fixed-words errors)."""
        return preflight.make_resolver(self.resolver, self.query_timeout)

    async def _resolve_cname(self, name: dns.name.Name) -> list:
        try:
            rrset = await preflight.dns_query(self._resolver(), name.to_text(), "CNAME",
                                           shown="a name of the chain")
        except preflight.CheckFailed as exc:
            raise _Unusable(str(exc)) from None
        return [rrset] if rrset is not None and rrset.rdtype == dns.rdatatype.CNAME else []

    # --------------------------------------------------------------------- updates

    async def _update(self, target: _Target, value: str, *, add: bool, where: str,
                      identifier: str) -> None:
        """One RFC 2136 update adding (or deleting) exactly the TXT `value` at the target."""
        zone = target.zone
        message = dns.update.UpdateMessage(zone.zone, keyring=zone.key)
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, f'"{value}"')
        if add:
            message.add(target.name, TTL, rdata)
        else:
            message.delete(target.name, rdata)
        what = (f"{where}: {'adding' if add else 'removing'} the TXT at "
                f"{target.shown(identifier)} through {_hostport(zone.server)} (zone "
                f"{zone.zone_text}, key {zone.key.name.to_text(omit_final_dot=True)})")
        host, port = zone.server
        try:
            response = await dns.asyncquery.tcp(message, host, timeout=self.query_timeout,
                                                port=port)
        except dns.tsig.PeerBadKey:
            raise Dns01Error(f"{what}: the server does not know this TSIG key (BADKEY): check "
                             "tsig_key_name and tsig_algorithm") from None
        except dns.tsig.PeerBadSignature:
            raise Dns01Error(f"{what}: the server refused the TSIG signature (BADSIG): the "
                             "secret in tsig_key_file is not the server's") from None
        except dns.tsig.PeerBadTime:
            raise Dns01Error(f"{what}: the server refused the TSIG time (BADTIME): are both "
                             "clocks right?") from None
        except (dns.tsig.PeerError, dns.tsig.BadSignature, dns.message.UnknownTSIGKey):
            raise Dns01Error(f"{what}: TSIG failed (the answer is not signed with this key)") \
                from None
        except dns.exception.Timeout:
            raise Dns01Error(f"{what}: no answer within {self.query_timeout:g}s",
                             transient=True) from None
        except (OSError, EOFError) as exc:
            reason = getattr(exc, "strerror", None) or "the connection closed"
            raise Dns01Error(f"{what}: {reason}", transient=True) from None
        except (dns.exception.DNSException, ValueError) as exc:
            raise Dns01Error(f"{what}: an unusable answer ({type(exc).__name__})",
                             transient=True) from None
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        reasons = {
            dns.rcode.REFUSED: "the server refused the update (does its allow-update or "
                               "update-policy grant this key this name?)",
            dns.rcode.NOTAUTH: "the server is not authoritative for the zone, or refused the "
                               "TSIG key",
            dns.rcode.NOTZONE: "the name is outside the zone",
            dns.rcode.SERVFAIL: "the server failed (SERVFAIL)",
        }
        reason = reasons.get(rcode, f"the server answered {dns.rcode.to_text(rcode)}")
        raise Dns01Error(f"{what}: {reason}", transient=rcode == dns.rcode.SERVFAIL)

    # ------------------------------------------------------------------ propagation

    async def _authoritative(self, zone: Dns01Zone, where: str) -> list[tuple[str, int]]:
        """The servers that must serve the record: the rule's `nameservers`, else the
        addresses of the zone's NS set (asked of `server`), on `server`'s port."""
        if zone.nameservers:
            return list(zone.nameservers)
        failure = (f"{where}: finding the authoritative servers of zone {zone.zone_text} at "
                   f"{_hostport(zone.server)}")
        try:
            response = await self._ask(zone.server, zone.zone, dns.rdatatype.NS)
        except _Unusable as exc:
            raise Dns01Error(f"{failure}: {exc}", transient=True) from None
        hosts = [r.target for rrset in response.answer
                 if rrset.name == zone.zone and rrset.rdtype == dns.rdatatype.NS
                 for r in rrset][:MAX_NAMESERVERS]
        if not hosts:
            raise Dns01Error(f"{failure}: no NS records (set the rule's nameservers)")
        addresses: list[str] = []
        for host in hosts:
            addresses.extend(await self._addresses(host))
        if not addresses:
            raise Dns01Error(f"{failure}: no address for any of its NS names (set the rule's "
                             "nameservers)")
        return list(dict.fromkeys((a, zone.server[1]) for a in addresses))

    async def _addresses(self, host: dns.name.Name) -> list[str]:
        """The addresses of an NS name: from its configured zone's server, else the
        resolver; [] when it has none usable (the other NS names may)."""
        zone = self._zone_of(host)
        if zone is None:
            try:
                return await preflight.dns_addresses(self._resolver(), host.to_text(),
                                                  shown="an NS name")
            except preflight.CheckFailed:
                return []
        out: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                response = await self._ask(zone.server, host, rdtype)
            except _Unusable:
                continue
            out.extend(r.address for rrset in response.answer
                       if rrset.name == host and rrset.rdtype == rdtype for r in rrset)
        return out

    async def _wait_served(self, target: _Target, value: str,
                           servers: list[tuple[str, int]], where: str, identifier: str) -> None:
        """Poll every server (concurrently) until each answers the value, authoritatively;
        Dns01Error naming those that do not after the zone's propagation_timeout."""
        timeout = target.zone.propagation_timeout
        done: set[tuple[str, int]] = set()

        async def one(server: tuple[str, int]) -> None:
            delay = FIRST_POLL
            while True:
                if await self._serves(server, target.name, value):
                    done.add(server)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_POLL)

        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(one(s) for s in servers))
        except TimeoutError:
            missing = [_hostport(s) for s in servers if s not in done]
            raise Dns01Error(
                f"{where}: {target.shown(identifier)} not served by "
                f"{', '.join(missing)} after {timeout:g}s (the zone's authoritative servers "
                "must all answer it before the CA is asked to look)", transient=True) from None

    async def _serves(self, server: tuple[str, int], name: dns.name.Name, value: str) -> bool:
        try:
            response = await self._ask(server, name, dns.rdatatype.TXT)
        except _Unusable:
            return False  # not yet: asked again until the deadline
        if response.rcode() != dns.rcode.NOERROR or not response.flags & dns.flags.AA:
            return False
        wanted = value.encode("ascii")
        return any(b"".join(r.strings) == wanted for rrset in response.answer
                   if rrset.name == name and rrset.rdtype == dns.rdatatype.TXT for r in rrset)

    async def _ask(self, server: tuple[str, int], name: dns.name.Name,
                   rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        """One non-recursive query straight to `server` (UDP, TCP if truncated)."""
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        try:
            response, _ = await dns.asyncquery.udp_with_fallback(
                query, server[0], timeout=self.query_timeout, port=server[1])
        except dns.exception.Timeout:
            raise _Unusable(f"no answer within {self.query_timeout:g}s") from None
        except OSError as exc:
            raise _Unusable(exc.strerror or "network error") from None
        except (dns.exception.DNSException, ValueError, EOFError) as exc:
            raise _Unusable(f"an unusable answer ({type(exc).__name__})") from None
        return response


def _hostport(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def build(config) -> list[tuple[object, Dns01Solver]]:
    """(rule, solver) for every dns-01 rule of `config.challenges`, in order. Blocking (reads
    the TSIG secrets): call it in a thread."""
    from certd.config import Dns01ChallengeRule, split_listen

    rules = [(i, r) for i, r in enumerate(config.challenges)
             if isinstance(r, Dns01ChallengeRule)]
    zones = {i: zone_from_rule(r, f"challenges[{i}]") for i, r in rules}
    resolver = split_listen(config.domains.resolver) if config.domains.resolver else None
    return [(r, Dns01Solver(zones[i], list(zones.values()), resolver=resolver))
            for i, r in rules]
