"""dns-persist-01 (draft-ietf-acme-dns-persist-01, 24 March 2026, as acme2certifier 0.46
validates it): the customer publishes ONE persistent TXT record

    _validation-persist.<domain>.  TXT  "<issuer-domain-name>; accounturi=<account URI>"

(RFC 8659 issue-value syntax: the CA's issuer domain name, then `tag=value` parameters;
optional `policy=wildcard` lets it cover `*.<domain>`, optional `persistUntil=<unix seconds>`
ends it), and every later order of certd's account for that name validates against it:
nothing to publish per order, no HTTP path.

certd checks the record itself, through the configured resolver, before any order
(`DnsPersist01Solver.preflight`): a missing or wrong record costs nothing at the CA.

Everything read from DNS is hostile: the values are parsed strictly (printable ASCII, a
length cap, RFC 8659 tag and value syntax, no duplicate tags) and never quoted back. A reason
names the record's owner name (the domain passed the alias policy), the configured CA
identity and certd's account URI, in fixed words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from certd import preflight
from certd.config import split_listen
from certd.errors import AcmeError
from certd.issuance.solvers import ChallengeType, Proof
from certd.issuance.untrusted import clean_text

__all__ = [
    "LABEL",
    "DnsPersist01Solver",
    "PersistRecord",
    "RecordMalformed",
    "Verdict",
    "build",
    "challenge_refusal",
    "evaluate",
    "parse_record",
    "published_record",
    "recheck_delay",
    "record_name",
    "record_value",
]

LABEL = "_validation-persist"
# an alias's `validation` (the REST API's word) -> the challenge type its names are proved with
VALIDATIONS = {"http-01": None, "dns-persist": ChallengeType.DNS_PERSIST01.value}
DNS_PERSIST = "dns-persist"
RECHECK_FIRST = timedelta(minutes=1)  # a missing record is looked for again after this,
RECHECK_MAX = timedelta(hours=1)  # doubling up to this (±10 % jitter)
ERROR_TYPE = "certd:awaiting-dns"  # AcmeError.type of "the record is not (yet) visible"
MAX_VALUE = 1024  # bytes of one TXT value (the strings of one RR joined): more is malformed
MAX_RECORDS = 32  # TXT RRs at the name looked at; more: the RRset is refused as malformed
MAX_PERSIST_UNTIL_DIGITS = 12  # a unix time beyond the year 33000 is not a date

# RFC 8659 §4.2: issuer-domain-name = label *("." label); label = (ALPHA / DIGIT)
# *( *("-") (ALPHA / DIGIT) ); tag likewise; value = *(%x21-3A / %x3C-7E)
_LABEL = r"[A-Za-z0-9](?:-*[A-Za-z0-9])*"
_ISSUER = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_TAG = re.compile(_LABEL)
_VALUE = re.compile(r"[\x21-\x3a\x3c-\x7e]*")
_DIGITS = re.compile(r"[0-9]+")


class RecordMalformed(ValueError):
    """A TXT value that is not an issue-value; the message is fixed words only."""


@dataclass(frozen=True)
class PersistRecord:
    issuer: str  # lower case, no trailing dot
    params: Mapping[str, str] = field(default_factory=dict)  # tags lower-cased

    @property
    def account_uri(self) -> str | None:
        return self.params.get("accounturi")

    @property
    def wildcard(self) -> bool:
        return self.params.get("policy", "").lower() == "wildcard"

    @property
    def persist_until(self) -> int | None:
        value = self.params.get("persistuntil")
        return int(value) if value is not None else None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # one line in fixed words: what was found, or what is missing


def challenge_of(validation: str) -> str | None:
    """The challenge type an alias with `validation` must use (None: the rules decide)."""
    return VALIDATIONS.get(validation)


def recheck_delay(checks: int, rng: random.Random | None = None) -> timedelta:
    """How long after the `checks`-th look that found no usable record certd looks again:
    1 min, 2, 4, 8, 16, 32, then hourly (±10 %): a record published now is seen within a
    minute or two at first, and a forgotten alias costs one DNS query an hour."""
    base = min(RECHECK_FIRST * 2 ** min(max(checks, 1) - 1, 16), RECHECK_MAX)
    return base * (rng or random).uniform(0.9, 1.1)


def record_name(domain: str) -> str:
    """The owner name of the record for `domain` (a wildcard's "*." dropped)."""
    return f"{LABEL}.{domain.removeprefix('*.').rstrip('.').lower()}"


def record_value(issuer: str, account_uri: str, *, wildcard: bool = False,
                 persist_until: int | None = None) -> str:
    """The TXT value to publish. Raises ValueError if `issuer` or `account_uri` cannot be
    written as an issue-value (which would be a configuration or CA bug)."""
    issuer = issuer.strip().rstrip(".").lower()
    if not _ISSUER.fullmatch(issuer):
        raise ValueError("the CA identity is not an issuer domain name (RFC 8659)")
    if not account_uri or not _VALUE.fullmatch(account_uri):
        raise ValueError("the account URI cannot be written in a TXT issue-value")
    value = f"{issuer}; accounturi={account_uri}"
    if wildcard:
        value += "; policy=wildcard"
    if persist_until is not None:
        if not 0 <= int(persist_until) < 10 ** MAX_PERSIST_UNTIL_DIGITS:
            raise ValueError("persistUntil must be a unix time")
        value += f"; persistUntil={int(persist_until)}"
    if len(value.encode("ascii")) > 255:
        # one TXT string; acme2certifier reads only the first string of a record
        raise ValueError("the record would not fit one TXT string (255 bytes)")
    return value


def parse_record(raw: bytes | str) -> PersistRecord:
    """One TXT value (its strings joined) as an issue-value; RecordMalformed otherwise."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_VALUE:
        raise RecordMalformed(f"longer than {MAX_VALUE} bytes")
    if any(b < 0x20 or b > 0x7E for b in raw):
        raise RecordMalformed("not printable ASCII")
    text = raw.decode("ascii").strip(" \t")
    parts = text.split(";")
    issuer = parts[0].strip(" \t").rstrip(".").lower()
    if not issuer or not _ISSUER.fullmatch(issuer) or len(issuer) > 253:
        raise RecordMalformed("no issuer domain name first")
    params: dict[str, str] = {}
    for part in parts[1:]:
        part = part.strip(" \t")
        if not part:
            continue  # "ca.example;" (acme2certifier skips empty parts too)
        tag, eq, value = part.partition("=")
        tag, value = tag.strip(" \t").lower(), value.strip(" \t")
        if not eq or not _TAG.fullmatch(tag) or not _VALUE.fullmatch(value):
            raise RecordMalformed("a parameter is not tag=value")
        if tag in params:
            raise RecordMalformed("a parameter appears twice")
        params[tag] = value
    until = params.get("persistuntil")
    if until is not None and not (_DIGITS.fullmatch(until)
                                  and len(until) <= MAX_PERSIST_UNTIL_DIGITS):
        raise RecordMalformed("persistUntil is not a unix time")
    return PersistRecord(issuer, params)


def _clean_issuers(issuers: Iterable[str]) -> list[str]:
    return [i.strip().rstrip(".").lower() for i in issuers if i and i.strip()]


def evaluate(values: Iterable[bytes | str], domain: str, issuers: Iterable[str],
             account_uri: str | None, *, wildcard: bool = False,
             now: datetime | None = None) -> Verdict:
    """Does one of `values` (the TXT RRset at record_name(domain)) authorise certd's account
    at one of `issuers` for `domain`? The reason names what is wrong, never what was read."""
    name = record_name(domain)
    ours = _clean_issuers(issuers)
    values = list(values)
    if not values:
        return Verdict(False, f"no TXT record at {name}")
    if len(values) > MAX_RECORDS:
        return Verdict(False, f"more than {MAX_RECORDS} TXT records at {name}")
    if not ours:
        return Verdict(False, "no CA identity configured (acme.caa_identities)")
    if not account_uri:
        return Verdict(False, "certd has no ACME account yet")
    stamp = int((now or datetime.now(timezone.utc)).timestamp())
    malformed = other_ca = other_account = expired = no_wildcard = 0
    for raw in values:
        try:
            record = parse_record(raw)
        except RecordMalformed:
            malformed += 1
            continue
        if record.issuer not in ours:
            other_ca += 1
            continue
        if record.account_uri is None:
            malformed += 1  # the draft requires accounturi
            continue
        if record.account_uri != account_uri:
            other_account += 1
            continue
        if record.persist_until is not None and record.persist_until < stamp:
            expired += 1
            continue
        if wildcard and not record.wildcard:
            no_wildcard += 1
            continue
        return Verdict(True, f"{name} authorises {account_uri} at {record.issuer}")
    where = f"the TXT record at {name}"
    if other_account:
        return Verdict(False, f"{where} names another ACME account, not certd's "
                              f"({account_uri})")
    if expired:
        return Verdict(False, f"{where} has expired (persistUntil is in the past)")
    if no_wildcard:
        return Verdict(False, f"{where} lacks policy=wildcard, needed for *.{domain}")
    if malformed:
        return Verdict(False, f"{where} is malformed (expected '{ours[0]}; "
                              f"accounturi={account_uri}')")
    return Verdict(False, f"{where} names another CA, not {', '.join(ours)}")


def challenge_refusal(challenge: Mapping, issuer: str, account_uri: str | None) -> str | None:
    """Why the CA's dns-persist-01 challenge object (its JSON, hostile) does not match the
    record certd asked the customer to publish, or None. The CA lists the issuer domain
    names it accepts (`issuer-domain-names`) and, optionally, the account URI it expects."""
    names = challenge.get("issuer-domain-names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return "the CA's dns-persist-01 challenge has malformed issuer-domain-names"
        if issuer not in _clean_issuers(names[:MAX_RECORDS]):
            shown = ", ".join(clean_text(n, 64) for n in names[:5]) or "none"
            return (f"the CA accepts the issuer domain names {shown}, not {issuer} "
                    "(acme.caa_identities): the published record names the wrong CA")
    uri = challenge.get("accounturi")
    if uri is not None and uri != account_uri:
        return "the CA's dns-persist-01 challenge names another account URI than certd's"
    return None




class DnsPersist01Solver:
    """The Solver for dns-persist-01: nothing to publish or withdraw; `preflight` and
    `present` both check that the customer's record is visible through certd's resolver and
    names the configured CA and certd's account. Safe for concurrent use.

    `issuer()` and `account_uri()` are read at each check (the account may be registered
    after this solver is built); `lookup(name)` returns the TXT values at `name` (strings of
    each RR joined), [] for NXDOMAIN / no data, and raises AcmeError on SERVFAIL or timeout."""

    type = ChallengeType.DNS_PERSIST01

    def __init__(self, lookup, issuer: Callable[[], str | None],
                 account_uri: Callable[[], str | None],
                 clock: Callable[[], datetime] | None = None, caa=None):
        self.lookup = lookup
        self.issuer = issuer
        self.account_uri = account_uri
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        # async (domain) -> None, raising AcmeError(certd:preflight) if CAA forbids the CA,
        # the account or dns-persist-01 (RFC 8657 validationmethods); None: not checked
        self.caa = caa

    async def check(self, identifier: str, *, wildcard: bool = False) -> Verdict:
        domain = identifier.removeprefix("*.")
        values = await self.lookup(record_name(domain))
        issuer = self.issuer()
        return evaluate(values, domain, [issuer] if issuer else [], self.account_uri(),
                        wildcard=wildcard or identifier.startswith("*."), now=self.clock())

    async def preflight(self, identifier: str) -> None:
        """The record first (missing or wrong: AcmeError of ERROR_TYPE, the alias waits for
        its customer), then CAA if configured (a refusal is a preflight failure)."""
        verdict = await self.check(identifier)
        if not verdict.ok:
            raise AcmeError(f"dns-persist[{identifier}]: {verdict.reason}; nothing sent to "
                            "the CA", type=ERROR_TYPE, identifier=None)
        if self.caa is not None:
            await self.caa(identifier)

    async def present(self, proof: Proof) -> None:
        verdict = await self.check(proof.identifier, wildcard=proof.wildcard)
        if not verdict.ok:
            raise AcmeError(f"dns-persist[{proof.identifier}]: {verdict.reason}",
                            type=ERROR_TYPE)

    async def cleanup(self, proof: Proof) -> None:
        return None  # the record is the customer's, and it stays


def resolver_lookup(resolver: tuple[str, int] | None, timeout: float = 5.0):
    """A `lookup` for DnsPersist01Solver through `resolver` ((ip, port); None: the system's),
    with dnspython's async resolver as certd/preflight.py builds it."""
    res = preflight.make_resolver(resolver, timeout)  # its resolver and fixed-words errors

    async def lookup(name: str) -> list[bytes]:
        try:
            rrset = await preflight.dns_query(res, name, "TXT")
        except preflight.CheckFailed as exc:
            raise AcmeError(f"dns-persist: {exc}", type=ERROR_TYPE, transient=True) from None
        if rrset is None:
            return []
        return [b"".join(r.strings) for r in list(rrset)[:MAX_RECORDS + 1]]

    return lookup


def for_spec(spec, _name: str) -> bool:
    """The Solvers rule: every name of a certificate that must use dns-persist-01 (an alias
    added with validation dns-persist)."""
    return getattr(spec, "challenge", None) == ChallengeType.DNS_PERSIST01.value


def issuer_domain_name(config) -> str | None:
    """The CA's issuer domain name the record names: the first CAA identity of the first CA
    (`acme.issuers[0]`, or the single `acme.caa_identities`): dns-persist aliases are
    ordered from that CA only, with its account (a record names one CA and one account)."""
    issuers = config.acme.issuer_list()
    identities = issuers[0].caa_identities if issuers else config.acme.caa_identities
    return identities[0].strip().rstrip(".").lower() if identities else None


def build(config, issuer) -> DnsPersist01Solver:
    """The solver for `config` (resolver: domains.resolver) and `issuer`'s account."""
    resolver = split_listen(config.domains.resolver) if config.domains.resolver else None

    async def caa(domain: str) -> None:
        result = await preflight.check_caa(
            domain, resolver=resolver, ca_identities=[issuer_domain_name(config) or ""],
            account_uri=issuer.client.account_uri, method=ChallengeType.DNS_PERSIST01.value)
        if not result.ok:
            raise AcmeError(f"preflight[{domain}]: {result.reason}; nothing sent to the CA",
                            type="certd:preflight")

    return DnsPersist01Solver(resolver_lookup(resolver),
                              issuer=lambda: issuer_domain_name(config),
                              account_uri=lambda: issuer.client.account_uri,
                              caa=caa if config.domains.preflight else None)


def published_record(config, account_uri: str, domain: str) -> dict[str, str]:
    """What the customer must publish for `domain`: {"name", "type", "value"}. ValueError if
    the configured CA identity or the account URI cannot be written in a record."""
    issuer = issuer_domain_name(config)
    if not issuer:
        raise ValueError("no CA identity configured (acme.caa_identities)")
    return {"name": record_name(domain), "type": "TXT",
            "value": record_value(issuer, account_uri, wildcard=domain.startswith("*."))}


def issuer_domain_name_of(solver) -> str | None:
    """The issuer domain name a DnsPersist01Solver's record names (None for another)."""
    issuer = getattr(solver, "issuer", None)
    return issuer() if callable(issuer) else None
