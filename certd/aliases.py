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
from certd.errors import AliasError, CertdError, StoreError
from certd.model import Alias, Event, utcnow
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


def _refuse_removing(alias: Alias) -> None:
    if alias.removing:
        raise AliasError(f"{alias.domain} is being removed from the nodes; add it again "
                           "once it is gone", kind="domain-removing",
                           retry_after=REMOVING_RETRY)


async def add(certd: Certd, domain: object, frontends: object = DEFAULT, *, who: str,
              now: datetime | None = None) -> Added:
    """Add the alias `domain` for the token (or person) `who`: checked, counted against
    `who`'s hourly quota, stored, audited. An alias that exists already is returned as it is
    (created=False). Raises AliasError; StoreError if the store is unavailable."""
    name = check_domain(domain, certd)
    groups = check_frontends(frontends, certd)
    existing = await certd.store.get_alias(name)
    if existing is not None:
        _refuse_removing(existing)
        return Added(existing, False)
    now = now or utcnow()
    limit = certd.config.domains.per_token_per_hour
    used = await certd.store.ledger_times(QUOTA, who, now - QUOTA_WINDOW)
    if len(used) >= limit:
        retry = int((used[len(used) - limit] + QUOTA_WINDOW - now).total_seconds()) + 1
        raise AliasError(f"{limit} new domains per hour for this token", kind="quota",
                           retry_after=max(1, retry))
    try:
        alias, created = await certd.add_alias(Alias(name, groups, who, now))
    except StoreError:
        raise
    except CertdError as exc:
        raise AliasError(str(exc), kind="conflict") from None
    if not created:  # a concurrent request won the race
        _refuse_removing(alias)
        return Added(alias, False)
    await certd.store.ledger_add(QUOTA, [who], now)
    await certd.store.add_event(Event("api.domain.add", f"api[{who}]: add {name}",
                                      certificate=name,
                                      data={"token": who, "frontends": list(groups)}))
    return Added(alias, True)


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
