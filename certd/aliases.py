"""Custom-domain aliases: the rules for adding and removing one (the name policy, the frontend
groups, the per-token quota, the audit trail), in one place for every entry point. The REST
handlers (certd/api/domains.py) only turn requests into calls and AliasError into problem
documents; the work that follows (issue then deploy, or removal from the nodes) is a
coroutine the caller runs in the background."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from certd import names
from certd.errors import AcmeError, AliasError, CertdError, StoreError
from certd.issuance import dns_persist, profiles
from certd.model import Alias, CertificateState, CertStatus, Event, utcnow
from certd.service import Certd

log = logging.getLogger(__name__)

QUOTA = "api_alias"  # ledger kind: aliases created per token
QUOTA_WINDOW = timedelta(hours=1)
REMOVING_RETRY = 10  # seconds a client is told to wait before adding a removing name again
DEFAULT = object()  # no frontends asked for: domains.default_frontends


@dataclass(frozen=True)
class Added:
    alias: Alias
    created: bool  # False: it existed already (an idempotent repeat), nothing was queued


def check_domain(raw: object, certd: Certd) -> str:
    """The alias policy (certd/names.py: check_alias) for `raw`, normalised."""
    if not isinstance(raw, str):
        raise AliasError("domain must be a string", kind="invalid-domain")
    try:
        return names.check_alias(raw, certd.config.domains)
    except names.NameRejected as exc:
        raise AliasError(str(exc), kind=getattr(exc, "slug", "invalid-domain")) from None


def check_frontends(raw: object, certd: Certd) -> tuple[str, ...]:
    """The frontend groups asked for (default: domains.default_frontends), each configured."""
    frontends = certd.config.domains.default_frontends if raw is DEFAULT else raw
    if (not isinstance(frontends, list) or not frontends
            or not all(isinstance(f, str) and f in certd.config.frontends for f in frontends)):
        raise AliasError("frontends must list configured frontend groups "
                           "(or set domains.default_frontends)", kind="invalid-frontends")
    return tuple(dict.fromkeys(frontends))


def check_validation(raw: object) -> str:
    """How the CA validates the alias: "http-01" (the default: through the frontends) or
    "dns-persist" (the customer's persistent TXT record, certd/issuance/dns_persist.py)."""
    if not isinstance(raw, str) or raw not in dns_persist.VALIDATIONS:
        raise AliasError("validation must be one of " + ", ".join(dns_persist.VALIDATIONS),
                         kind="invalid-validation")
    return raw


async def check_profile(raw: object, certd: Certd) -> str | None:
    """The ACME profile asked for (None: acme.profile applies), a usable name a configured CA
    offers (certd/issuance/profiles.py; with acme.issuers, an order goes on to the next CA
    when one lacks it). While a CA's directory cannot be read, a well-formed name is
    accepted: it is checked again before any order."""
    if raw is None:
        return None
    try:
        profile = profiles.check_name(raw)
    except ValueError as exc:
        raise AliasError(f"profile {exc}", kind="invalid-profile") from None
    offers = []
    for member in certd.issuers:
        try:
            available = await member.issuer.client.profiles()
        except AcmeError as exc:
            log.info("aliases: profile %s not checked now (directory unavailable: %s)",
                     profile, exc)
            return profile
        if not available or profile in available:
            return profile
        offers.append(", ".join(sorted(available)))
    if len(offers) == 1:
        raise AliasError(f"profile {profile} is not offered by the CA (it offers: "
                         f"{offers[0]})", kind="invalid-profile")
    raise AliasError(f"profile {profile} is not offered by any configured CA (they offer: "
                     + "; ".join(f"{m.name}: {o}" for m, o in zip(certd.issuers, offers))
                     + ")", kind="invalid-profile")


def _refuse_other_profile(alias: Alias, profile: str | None) -> None:
    if profile is not None and alias.profile != profile:
        raise AliasError(f"{alias.domain} exists with profile {alias.profile or '(default)'}",
                         kind="conflict")


async def dns_records(certd: Certd, items: list[Alias]) -> dict[str, dict]:
    """domain -> the TXT record (name, type, value) the customer of each dns-persist alias
    of `items` must publish. Registers certd's ACME account if there is none yet (the record
    names it); while the CA cannot be reached for that, or if the configured CA identity
    cannot be written in a record, those aliases have none (logged)."""
    wanted = [a for a in items if a.validation == dns_persist.DNS_PERSIST]
    if not wanted:
        return {}
    try:
        await certd.issuer.ensure_account()
    except AcmeError as exc:
        log.warning("aliases: no ACME account yet for dns-persist records: %s", exc)
        return {}
    out = {}
    for alias in wanted:
        try:
            out[alias.domain] = dns_persist.published_record(
                certd.config, certd.issuer.client.account_uri, alias.domain)
        except ValueError as exc:
            log.warning("aliases: %s: no dns-persist record: %s", alias.domain, exc)
    return out


def _refuse_other_validation(alias: Alias, validation: str) -> None:
    if alias.validation != validation:
        raise AliasError(f"{alias.domain} exists with validation {alias.validation}",
                         kind="conflict")


def _refuse_removing(alias: Alias) -> None:
    if alias.removing:
        raise AliasError(f"{alias.domain} is being removed from the nodes; add it again "
                           "once it is gone", kind="domain-removing",
                           retry_after=REMOVING_RETRY)


async def add(certd: Certd, domain: object, frontends: object = DEFAULT, *, who: str,
              now: datetime | None = None, validation: object = "http-01",
              profile: object = None) -> Added:
    """Add the alias `domain` for the token (or person) `who`: checked, counted against
    `who`'s hourly quota, stored, audited. An alias that exists already is returned as it is
    (created=False). With validation "dns-persist", certd's ACME account is registered first
    if need be (the record to publish names it; if the CA cannot be reached, the alias is
    added anyway and the record shows once the account exists) and the new alias starts
    awaiting_dns. Raises AliasError; StoreError if the store is unavailable."""
    name = check_domain(domain, certd)
    groups = check_frontends(frontends, certd)
    validation = check_validation(validation)
    profile = await check_profile(profile, certd)
    if validation == dns_persist.DNS_PERSIST:
        issuer = dns_persist.issuer_domain_name(certd.config)
        if not issuer:
            raise AliasError("dns-persist: no CA identity configured (acme.caa_identities)",
                             kind="dns-persist-unavailable")
        try:  # the record names certd's account: register it now if need be
            await certd.issuer.ensure_account()
        except AcmeError as exc:  # the CA unreachable: the record shows on a later read
            log.warning("aliases: %s: no ACME account yet: %s", name, exc)
    existing = await certd.store.get_alias(name)
    if existing is not None:
        _refuse_removing(existing)
        _refuse_other_validation(existing, validation)
        _refuse_other_profile(existing, profile)
        return Added(existing, False)
    now = now or utcnow()
    limit = certd.config.domains.per_token_per_hour
    # One unit of work: the quota slot, the alias, its state and the audit event commit
    # together. The slot is taken by the store in one step with its count (Store.ledger_take:
    # concurrent requests of any worker or instance never pass the limit together), and an
    # alias that a concurrent request created first rolls the unit back, slot included: an
    # idempotent repeat never consumes quota.
    try:
        async with certd.store.transaction():
            oldest = await certd.store.ledger_take(QUOTA, who, now, since=now - QUOTA_WINDOW,
                                                   limit=limit)
            if oldest is not None:
                retry = int((oldest + QUOTA_WINDOW - now).total_seconds()) + 1
                raise AliasError(f"{limit} new domains per hour for this token", kind="quota",
                                 retry_after=max(1, retry))
            try:
                alias, created = await certd.add_alias(Alias(name, groups, who, now,
                                                             validation=validation,
                                                             profile=profile))
            except StoreError:
                raise
            except CertdError as exc:
                raise AliasError(str(exc), kind="conflict") from None
            if not created:  # a concurrent request won the race
                raise _Existing(alias)
            if validation == dns_persist.DNS_PERSIST:  # the customer's turn first: no order
                await certd.store.put_state(CertificateState(name, CertStatus.AWAITING_DNS,
                                                             updated_at=now))
            await certd.store.add_event(Event("api.domain.add", f"api[{who}]: add {name}",
                                              certificate=name,
                                              data={"token": who, "frontends": list(groups),
                                                    "validation": validation,
                                                    "profile": profile}))
    except _Existing as lost:
        _refuse_removing(lost.alias)
        _refuse_other_validation(lost.alias, validation)
        _refuse_other_profile(lost.alias, profile)
        return Added(lost.alias, False)
    return Added(alias, True)


class _Existing(Exception):
    """Raised inside `add`'s unit of work when the alias exists already: the rollback gives
    back the quota slot taken for it."""

    def __init__(self, alias: Alias):
        super().__init__(alias.domain)
        self.alias = alias


async def issue_and_deploy(certd: Certd, domain: str) -> None:
    """What follows a new alias: its first certificate, then its deployment. Failures are
    recorded (state, events) by the service; here they are only logged."""
    try:
        if await certd.renew(domain, wait=True) is not None:
            await certd.deploy(domain, only_stale=True)
    except CertdError as exc:
        log.warning("aliases: %s: %s", domain, exc)


async def request_removal(certd: Certd, alias: Alias, who: str, *, revoke: bool) -> None:
    """Audit and mark `alias` removing (it stops being renewed at once); the caller then runs
    `finish_removal` in the background."""
    await certd.store.add_event(Event(
        "api.domain.remove", f"api[{who}]: remove {alias.domain}"
        + (" and revoke its certificate" if revoke else ""),
        certificate=alias.domain, data={"token": who, "revoke": revoke}))
    await certd.store.mark_alias_removing(alias.domain)


async def finish_removal(certd: Certd, domain: str, *, revoke: bool) -> None:
    try:
        await certd.remove_alias(domain, revoke=revoke)
    except CertdError as exc:
        log.warning("aliases: remove %s: %s", domain, exc)
