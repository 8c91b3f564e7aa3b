"""Several CAs in order (`acme.issuers`): which one a new order goes to, and which one a
certificate belongs to.

A new order goes to the first issuer that is not cooling down and has budget. A CA that is
down (connection refused, timeouts), answers 5xx or `rateLimited`, or refuses a name
(`rejectedIdentifier`, `caa`) or does not offer the certificate's ACME profile (`profile`)
moves the order to the next one; the first three also start a cooldown for that CA (its
Retry-After when it sends one, else `acme.issuer_cooldown`), during which new orders skip
it; after it, the CA is tried again, and once it answers it takes the new orders again. A single issuer is never skipped: with one CA, certd behaves as it always
did (the certificate's own backoff spaces the attempts).

What a certificate's issuer does after issuance stays with that CA: ARI (renewalInfo), the
`replaces` of its renewal, its revocation (`for_certificate`). The cooldowns live in the
store (`Store.set_issuer_cooldown`, one row per CA): every process sharing it reads them
before it chooses a CA (`IssuerPool.refresh`), so an outage one instance saw costs the others
no failed order, and status and metrics show it from any process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from yarl import URL

from certd.budget import Budget
from certd.config import Config, IssuerConfig
from certd.errors import AcmeError
from certd.issuance import profiles
from certd.issuance.client import AcmeClient
from certd.issuance.issuer import Issuer
from certd.issuance.untrusted import clean_text
from certd.model import IssuedCertificate, Order

log = logging.getLogger(__name__)

MAX_COOLDOWN = timedelta(days=1)  # a CA's "come back next week" is re-checked daily
DOWN = "down"  # connection refused or reset, TLS failure, timeout
SERVER_ERROR = "5xx"
RATE_LIMITED = "rateLimited"
COOLING = (DOWN, SERVER_ERROR, RATE_LIMITED)  # the CA as a whole: skip it for a while
REFUSED = ("rejectedIdentifier", "caa")  # this name at this CA: the next one may take it
PROFILE = "profile"  # this CA does not offer the profile asked for: the next one may


def fallback_reason(exc: AcmeError) -> str | None:
    """Why an order that failed with `exc` should go to the next issuer (one of COOLING,
    REFUSED or PROFILE), or None if the next CA would fail it too (validation, our own
    config...)."""
    if exc.type in ("certd:unreachable", "certd:timeout"):
        return DOWN
    if exc.code == RATE_LIMITED:
        return RATE_LIMITED
    if (exc.status is not None and exc.status >= 500) or exc.code == "serverInternal":
        return SERVER_ERROR
    if exc.code in REFUSED:
        return exc.code
    if exc.type == profiles.ERROR_TYPE:
        return PROFILE
    return None


@dataclass(eq=False)  # one per configured CA: compared by identity
class Member:
    """One configured CA: its Issuer (ACME client and account), budget and CAA names."""

    index: int
    name: str
    directory: str
    issuer: Issuer
    budget: Budget
    caa_identities: tuple[str, ...]
    # as the store said at the last IssuerPool.refresh (or as this process just wrote it)
    cooling_until: datetime | None = None
    cooling_reason: str = ""  # why, cleaned CA text included (it is shown and logged)

    def cooling(self, now: datetime) -> bool:
        return self.cooling_until is not None and now < self.cooling_until

    def view(self, now: datetime) -> dict:
        """For status and metrics: name, directory, whether new orders skip it and why."""
        cooling = self.cooling(now)
        return {"name": self.name, "directory": self.directory, "healthy": not cooling,
                "cooling_until": self.cooling_until.isoformat() if cooling else None,
                "reason": self.cooling_reason if cooling else None}


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        u = URL(url)
        return (u.scheme, (u.host or "").lower(), u.port) if u.host else None
    except (ValueError, TypeError):
        return None


class IssuerPool:
    """The configured CAs, in order. Their cooldowns are kept in `store` (Certd gives the
    pool its store when the caller did not)."""

    def __init__(self, members: list[Member], *, cooldown: timedelta = timedelta(minutes=5),
                 store=None):
        if not members:
            raise ValueError("an issuer pool needs at least one issuer")
        self.members = members
        self.cooldown = cooldown
        self.store = store

    async def refresh(self, now: datetime) -> None:
        """Read the cooldowns from the store (whichever process started them): before an
        order chooses a CA, and before status and metrics show them. A single issuer is
        never skipped, so it has nothing to read."""
        if self.store is None or len(self.members) == 1:
            return
        held = await self.store.issuer_cooldowns(now)
        for member in self.members:
            member.cooling_until, member.cooling_reason = held.get(member.directory,
                                                                   (None, ""))

    @property
    def primary(self) -> Member:
        return self.members[0]

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    def caa_identities(self) -> list[str]:
        """Every configured CA's CAA names (preflight accepts any of them)."""
        return list(dict.fromkeys(i for m in self.members for i in m.caa_identities))

    def by_directory(self, directory: str | None) -> Member | None:
        if directory is None:
            return None
        key = directory.rstrip("/")
        return next((m for m in self.members if m.directory.rstrip("/") == key), None)

    def _by_origin(self, url: str | None) -> Member | None:
        origin = _origin(url) if url else None
        if origin is None:
            return None
        return next((m for m in self.members if _origin(m.directory) == origin), None)

    def for_certificate(self, cert: IssuedCertificate) -> Member | None:
        """The CA that issued `cert` (ARI, `replaces` and revocation go there only), or None
        when it is no longer configured. A certificate stored before issuers were recorded
        (or imported) is taken as the CA its order URL points at, else the first issuer (the
        only one there was)."""
        if cert.issuer is not None:
            return self.by_directory(cert.issuer)
        return self._by_origin(cert.order_url) or self.primary

    def for_order(self, order: Order) -> Member | None:
        """The CA an unfinished order was placed with (by its URL's origin; the first issuer
        when there is only one)."""
        if len(self.members) == 1:
            return self.primary
        return self._by_origin(order.url)

    def candidates(self, now: datetime) -> tuple[list[Member], list[Member]]:
        """(the issuers new orders may go to, in order; those cooling down). A single issuer
        is always a candidate."""
        if len(self.members) == 1:
            return list(self.members), []
        ready = [m for m in self.members if not m.cooling(now)]
        return ready, [m for m in self.members if m.cooling(now)]

    async def failed(self, member: Member, exc: AcmeError, reason: str, now: datetime) -> None:
        """`member` failed an order for `reason` (fallback_reason): a cooldown if the CA as a
        whole is unwell (never for a single issuer), in the store for every process."""
        if reason not in COOLING or len(self.members) == 1:
            return
        wait = self.cooldown
        if exc.retry_after is not None:
            wait = timedelta(seconds=max(1.0, min(exc.retry_after,
                                                  MAX_COOLDOWN.total_seconds())))
        member.cooling_until = now + wait
        member.cooling_reason = f"{reason}: {clean_text(str(exc), 200)}"
        if self.store is not None:
            await self.store.set_issuer_cooldown(member.directory, member.cooling_until,
                                                 member.cooling_reason)
        log.warning("issuer[%s]: %s; new orders skip it until %s", member.name,
                    member.cooling_reason, member.cooling_until.isoformat(timespec="seconds"),
                    extra={"event": "issuer.cooling", "issuer": member.directory})

    async def succeeded(self, member: Member) -> None:
        """`member` issued: a cooldown it had (read at the last refresh) ends for all."""
        if member.cooling_until is not None:
            log.info("issuer[%s]: answering again; new orders go to it", member.name,
                     extra={"event": "issuer.healthy", "issuer": member.directory})
            if self.store is not None:
                await self.store.set_issuer_cooldown(member.directory, None)
        member.cooling_until = None
        member.cooling_reason = ""

    def next_ready(self, now: datetime) -> datetime | None:
        """When the first cooling issuer may be tried again."""
        ends = [m.cooling_until for m in self.members if m.cooling(now)]
        return min(ends) if ends else None

    def views(self, now: datetime) -> list[dict]:
        return [m.view(now) for m in self.members]


def wrap(config: Config, store, issuer: Issuer | None) -> IssuerPool:
    """A pool of the one `issuer` a caller built (as the first of `config`'s issuers)."""
    ic = config.acme.issuer_list()[0]
    return IssuerPool([Member(0, ic.label, ic.directory, issuer,
                              member_budget(config, store, ic, 0), tuple(ic.caa_identities))],
                      cooldown=config.acme.issuer_cooldown, store=store)


def build_pool(config: Config, store, session, *, secrets: dict[int, str] | None = None,
               **issuer_options) -> IssuerPool:
    """The pool of `config.acme`'s issuers, each with its own ACME client (directory,
    ca_bundle), account (email, EAB: `secrets[i]` is issuer i's HMAC key, read by the
    caller off the event loop: `read_secrets`) and budget (its own, else renewal.budget).
    `issuer_options` go to every Issuer (the challenge solvers, shared)."""
    acme = config.acme
    members = []
    for i, ic in enumerate(acme.issuer_list()):
        client = AcmeClient(ic.directory, session,
                            ca_bundle=str(ic.ca_bundle) if ic.ca_bundle else None,
                            timeout=acme.timeout.total_seconds())
        eab = (ic.eab.kid, (secrets or {})[i]) if ic.eab else None
        issuer = Issuer(client, store, email=ic.email, eab=eab,
                        challenge_ttl=config.challenge.ttl, order_timeout=acme.order_timeout,
                        **issuer_options)
        members.append(Member(i, ic.label, ic.directory, issuer,
                              member_budget(config, store, ic, i), tuple(ic.caa_identities)))
    return IssuerPool(members, cooldown=acme.issuer_cooldown, store=store)


def member_budget(config: Config, store, ic: IssuerConfig, index: int) -> Budget:
    """Issuer `index`'s budget. The first keeps the ledger keys a single CA always had; the
    others count their per-domain and per-name buckets under their directory."""
    return Budget(store, ic.budget or config.renewal.budget, account=ic.directory,
                  scope="" if index == 0 else ic.directory + " ")


def rebudget(pool: IssuerPool, config: Config, store) -> None:
    """A reload changed renewal.budget: the issuers without their own budget follow it."""
    for member, ic in zip(pool.members, config.acme.issuer_list()):
        member.budget = member_budget(config, store, ic, member.index)


async def read_secrets(config: Config) -> dict[int, str]:
    """Every issuer's EAB HMAC key (files are read in a thread)."""
    out = {}
    single = config.acme.issuers is None
    for i, ic in enumerate(config.acme.issuer_list()):
        if ic.eab:
            where = "acme.eab" if single else f"acme.issuers[{i}].eab"
            out[i] = await asyncio.to_thread(ic.eab.secret, where)
    return out


def problem_text(exc: AcmeError) -> str:
    """The CA's words, safe for a log line and an event (control characters out, capped)."""
    return clean_text(str(exc), 300)
