"""The challenge solver seam (issue 14, item 0): how the order flow proves control of one
identifier, whatever the challenge type. The issuer picks a Solver for each name by the
config's rules, asks it to `present` the proof before answering the challenge, and to
`cleanup` once the CA is done with it (valid or invalid, never before). `preflight` checks,
before any order, that the solver can work for that name (no CA budget spent on a name that
cannot validate). The shape of lego's `challenge.Provider`, typed.

One implementation per challenge type: http-01 (the store answers through every frontend),
dns-01 (RFC 2136 updates with TSIG), dns-persist-01 (a record the customer published once).

Which solver proves a name: `Solvers`, built once in `certd.app.open_certd` and given to the
Issuer (which asks it per authorization) and through it to the service's preflight. Its
extension point is the constructor: an ordered list of `Rule`s (matcher, solver), the first
whose matcher accepts (certificate, name) wins, else the default (http-01). A matcher is any
`(CertificateSpec, str) -> bool`; `suffix(...)` and `certificates(...)` build the common
ones. The name a matcher sees is the spec's own ("*.example.org" for a wildcard); the Proof
carries it without the "*." (RFC 8555 §7.1.3). So a config's rules become, in order::

    Solvers([Rule(certificates("wild"), dns01),            # certificates[].challenge
             Rule(suffix("corp.example"), dns01_corp)],    # challenges: suffix -> dns-01
            default=http01)

The wiring may also add rules after construction (`Solvers.add`), e.g. from a reload.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from certd.model import CertificateSpec


class ChallengeType(StrEnum):
    HTTP01 = "http-01"
    DNS01 = "dns-01"
    DNS_PERSIST01 = "dns-persist-01"


@dataclass(frozen=True)
class Proof:
    """What one authorization asks for: the identifier (without a wildcard's "*."), the CA's
    token and the key authorization the account computes from it."""

    certificate: str  # the certificate spec's name (for logs, events, the store's rows)
    identifier: str
    token: str
    key_authorization: str
    authorization_url: str
    wildcard: bool = False


def dns01_txt_value(key_authorization: str) -> str:
    """RFC 8555 §8.4: base64url(SHA-256(key authorization)), no padding."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class Solver(Protocol):
    type: ChallengeType

    async def preflight(self, identifier: str) -> None:
        """Raise a CertdError subclass (a clear reason, never the hostile input quoted)
        if this solver cannot prove `identifier` now."""

    async def present(self, proof: Proof) -> None:
        """Make the proof visible to the CA; return only once every place the CA may look
        serves it (every frontend; every authoritative server of the zone)."""

    async def cleanup(self, proof: Proof) -> None:
        """Withdraw the proof. Never raises for a proof already gone."""


Matcher = Callable[["CertificateSpec", str], bool]


@dataclass(frozen=True)
class Rule:
    """Names `matches` accepts are proved by `solver`."""

    matches: Matcher
    solver: Solver


def suffix(*suffixes: str) -> Matcher:
    """A name equal to one of `suffixes` or under it (label boundary: "example.org" matches
    "a.example.org" and "*.example.org", not "badexample.org")."""
    wanted = tuple(s.strip().rstrip(".").lower().removeprefix("*.") for s in suffixes)

    def matches(_certificate: "CertificateSpec", name: str) -> bool:
        bare = name.rstrip(".").lower().removeprefix("*.")
        return any(bare == s or bare.endswith("." + s) for s in wanted)

    return matches


def certificates(*names: str) -> Matcher:
    """Every name of the certificates (or aliases) called one of `names`."""
    wanted = frozenset(names)
    return lambda certificate, _name: certificate.name in wanted


class Solvers:
    """Chooses the Solver for each name of a certificate: the first matching rule, else the
    default (see the module docstring)."""

    def __init__(self, rules: Iterable[Rule] = (), *, default: Solver):
        self.rules: list[Rule] = list(rules)
        self.default = default

    def add(self, matches: Matcher, solver: Solver) -> None:
        """One more rule, after those already there."""
        self.rules.append(Rule(matches, solver))

    def for_identifier(self, certificate: "CertificateSpec", identifier: str) -> Solver:
        for rule in self.rules:
            if rule.matches(certificate, identifier):
                return rule.solver
        return self.default

    def all(self) -> list[Solver]:
        """Every solver, the default first, each once."""
        out: list[Solver] = [self.default]
        for rule in self.rules:
            if all(rule.solver is not s for s in out):
                out.append(rule.solver)
        return out

    def types(self) -> set[ChallengeType]:
        """Every challenge type some rule (or the default) may use."""
        return {self.default.type, *(r.solver.type for r in self.rules)}
