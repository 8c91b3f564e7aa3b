"""The Store Protocol: everything certd persists, behind one small interface.

Contract, for every implementation (SQLite now, PostgreSQL later):

- Every method is a coroutine and safe to call concurrently from one event loop; several
  processes may share one store (leases decide who works).
- Lookups of something absent return None (or an empty list); they never raise.
- Writes are atomic: a certificate and its private key are stored in one step, so readers
  see the old pair or the new one, never a mix.
- Times go in and come out timezone-aware UTC.
- `open()` creates or migrates the schema and fails (StoreError) if the store cannot be
  written; `close()` releases connections. Callers own both.
- Failures are StoreError, and they come fast: a write that cannot get the store's write
  lock within a few seconds (another process holds it), a full disk, a read-only file all
  raise instead of waiting. The message names the store (a file path, a DSN) for the log;
  callers that answer untrusted clients must not pass it on (the API answers 503
  `store-unavailable`).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from certd.model import (
    Account,
    Alert,
    Alias,
    AriState,
    CertDetails,
    CertificateState,
    CertSummary,
    Challenge,
    Deployment,
    Event,
    Instance,
    IssuedCertificate,
    Order,
)


@dataclass(frozen=True)
class BundleGrant:
    """What a taken Salt bundle token grants: the (certificate, serial) sets of one batch,
    for one minion (certd/deployers/salt_pull.py)."""

    batch: str
    minion: str
    items: tuple[tuple[str, str], ...]


def matching_digest(known: Iterable[str], presented: str) -> str | None:
    """The digest of `known` equal to `presented`, compared in constant time against every
    one (a bundle token's lookup must not tell by its timing how much of a guess matched)."""
    match = None
    for digest in known:
        if hmac.compare_digest(digest.encode(), presented.encode()):
            match = digest
    return match


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """A unit of work: `async with store.transaction():` — the calls this task makes
        inside commit together or not at all (an exception, a crash or kill -9 between them
        leaves none of them). Nested units are part of the outer one. Other tasks' calls are
        not part of it (they wait, or run on their own connection)."""
        ...

    # ACME account, one per directory URL
    async def get_account(self, directory: str) -> Account | None: ...

    async def save_account(self, account: Account) -> None: ...

    # HTTP-01 key authorizations published for the responder
    async def put_challenge(self, challenge: Challenge) -> None: ...

    async def get_key_authorization(self, token: str, now: datetime) -> str | None:
        """The key authorization for a pending, unexpired token, else None.

        The challenge responder's lookup, answered while orders write: it never waits for a
        write lock, neither another process's nor a write pending in this one (SQLite: its
        own read-only connection; WAL readers never wait for writers). It sees every
        committed challenge at once, including those another process (the CLI) wrote: no
        cache (PostgreSQL: a cache per instance that LISTEN/NOTIFY keeps, and a token it
        does not hold is read from the database: a new token is seen at once, another
        instance's replacement or deletion of a held one within milliseconds; it answers
        through a database outage what it holds: certd/store/pg_challenges.py). Raises
        StoreError if the store cannot be read within about a second."""
        ...

    async def delete_challenge(self, token: str) -> None: ...

    async def purge_challenges(self, now: datetime) -> int:
        """Drop expired challenges; returns how many."""
        ...

    # certificates and their history (newest last)
    async def add_certificate(self, cert: IssuedCertificate) -> IssuedCertificate:
        """Store a newly issued certificate with its key; returns it with `id` set."""
        ...

    async def current_certificate(self, name: str) -> IssuedCertificate | None: ...

    async def certificate_history(self, name: str, limit: int = 20) -> list[IssuedCertificate]: ...

    # per-certificate state (status, failures, next attempt)
    async def get_state(self, name: str) -> CertificateState | None: ...

    async def put_state(self, state: CertificateState) -> None: ...

    # ACME orders certd placed
    async def save_order(self, order: Order) -> None:
        """Insert or update by `url`."""
        ...

    async def orders(self, certificate: str | None = None, limit: int = 100) -> list[Order]:
        """Newest first."""
        ...

    async def unfinished_orders(self) -> list[Order]:
        """Per certificate, its latest order if a run left it unfinished (crash, CA outage):
        pending, ready, processing, or valid at the CA with its key not yet forgotten."""
        ...

    # custom-domain aliases
    async def add_alias(self, alias: Alias) -> tuple[Alias, bool]:
        """Insert unless present (atomic: two concurrent adds create one); returns the stored
        alias and whether this call created it."""
        ...

    async def get_alias(self, domain: str) -> Alias | None: ...

    async def list_aliases(self, *, limit: int | None = None, after: str | None = None
                           ) -> list[Alias]:
        """Ordered by domain; `after` is the cursor (the last domain of the previous page)."""
        ...

    async def alias_statuses(self) -> dict[str, str]:
        """Every alias's status in one read (the dashboard's counts and its worst aliases):
        'removing' when marked so, else its certificate state's status, 'pending' when it has
        none yet."""
        ...

    async def mark_alias_removing(self, domain: str) -> None: ...

    async def delete_alias(self, domain: str) -> None: ...

    # ARI windows, one per certificate name (for its current serial)
    async def get_ari(self, name: str) -> AriState | None: ...

    async def put_ari(self, ari: AriState) -> None: ...

    # the request ledger behind the budget: (kind, key, time) entries
    async def ledger_add(self, kind: str, keys: list[str], at: datetime) -> None: ...

    async def ledger_times(self, kind: str, key: str, since: datetime) -> list[datetime]:
        """Times of `kind` entries for `key` after `since`, oldest first."""
        ...

    async def ledger_purge(self, before: datetime) -> int: ...

    async def ledger_take(self, kind: str, key: str, at: datetime, *, since: datetime,
                          limit: int) -> datetime | None:
        """Record one `kind` entry for `key` at `at` if fewer than `limit` entries after
        `since` exist: the check and the write are one step against every other caller of
        the store, in any process (a quota that concurrent requests cannot overrun). None
        when recorded; else nothing is recorded and the answer is the time of the entry
        whose leaving the window frees a slot (the caller's Retry-After). Inside a unit of
        work, the entry is part of it (a rollback gives the slot back)."""
        ...

    # what the API's rendered reads are cached against (certd/api/cache.py)
    async def change_stamp(self) -> int:
        """A number that changes in the same transaction as every write that can change what
        an alias or certificate view shows (aliases, certificates, their state, ARI windows,
        deployments, the ACME account), whichever process or connection writes; read from committed data
        only. Equal stamps: nothing those views show changed in between. Cheap (one tiny
        row); a caller reads it before the data it renders."""
        ...

    # one bulk read for the sweep: name -> (current certificate, state, ARI), for every name
    # that has any of them
    async def overview(self) -> dict[str, tuple[CertSummary | None, CertificateState | None,
                                                AriState | None]]: ...

    # one bulk read for status views: name -> certificate summary, state, ARI, deployments,
    # for each of `names` (a name with none of them gets an empty CertDetails)
    async def details(self, names: Sequence[str]) -> dict[str, CertDetails]: ...

    # per-node deployments (one row per certificate x frontend x node, the latest)
    async def put_deployment(self, deployment: Deployment) -> None: ...

    async def deployments(self, certificate: str) -> list[Deployment]: ...

    # event log
    async def add_event(self, event: Event) -> None: ...

    async def events(
        self, *, certificate: str | None = None, kind: str | None = None, limit: int = 100,
        before: int | None = None,
    ) -> list[Event]:
        """Newest first; `before`: only ids below it (the next page's cursor)."""
        ...

    async def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        """Events with an id above `after_id`, oldest first (the alert forwarder's feed)."""
        ...

    async def event_counts(self) -> dict[str, int]:
        """How many events of each kind were ever recorded (the /metrics counters): kept up
        to date in the transaction of each insert, whichever process inserts; cheap to read
        (no scan of the log); never lowered by `purge_events`."""
        ...

    async def purge_events(self, before: datetime) -> int:
        """Delete events older than `before` (`events.retention`), except the newest event,
        so ids never go backwards; returns how many. Idempotent; counters stay."""
        ...

    # private-key retention (issue 10). Certificate rows stay (serial, dates and PEM are
    # public and form the history); only their `key_pem` is blanked (''), and a certificate
    # without its key is never returned as current.
    async def wipe_keys(self, name: str | None = None, *, superseded_before: datetime) -> int:
        """Blank the key of every certificate (of `name`, or of all) that a newer certificate
        of the same name, issued at or before `superseded_before`, replaced; never the current
        one. Also forget the key of finished orders (invalid, or whose certificate is stored,
        or no longer the latest order of their certificate); never of the latest unfinished
        order, which a resume needs. Returns how many rows changed. Idempotent."""
        ...

    async def destroy_keys(self, name: str) -> int:
        """Blank every key of `name` (all its certificates and orders) and drop its pending
        challenges: for a removed alias. Returns how many rows changed. Idempotent."""
        ...

    async def last_event_id(self) -> int:
        """The newest event's id (0 when there is none)."""
        ...

    # leases: at most one holder per name until it releases or the lease expires
    async def acquire_lease(self, name: str, owner: str, until: datetime, now: datetime) -> bool:
        """Take or extend the lease on `name` for `owner`; False if someone else holds it."""
        ...

    async def lease_holder(self, name: str, now: datetime) -> str | None:
        """Who holds an unexpired lease on `name`, or None."""
        ...

    async def take_over_lease(self, name: str, old_owner: str, owner: str,
                              until: datetime) -> bool:
        """Take the lease from `old_owner` (a holder known to be dead) if it still holds it."""
        ...

    async def extend_lease(self, name: str, owner: str, until: datetime) -> bool:
        """Move the expiry of `owner`'s lease on `name` to `until`, if `owner` still holds
        it: unexpired, or expired but taken by nobody since (no other owner worked on it).
        False if it was released, purged or taken over: the work under it is someone
        else's now. Inside a unit of work it is a fencing check: the lease row stays locked
        (PostgreSQL; SQLite's write lock) until the unit commits, so nobody takes the lease
        over between the check and the writes it guards."""
        ...

    async def release_lease(self, name: str, owner: str) -> None: ...

    async def leases(self, now: datetime) -> list[tuple[str, str, datetime]]:
        """Every unexpired lease as (name, owner, expires_at), ordered by name."""
        ...

    async def purge_leases(self, now: datetime) -> int:
        """Drop the leases expired at `now` (the event forwarder's claims, holders that
        died); returns how many. Idempotent."""
        ...

    # CAs cooling down (acme.issuers, certd/issuance/issuers.py): one row per directory,
    # read by every process before it chooses a CA, and by status and metrics
    async def set_issuer_cooldown(self, directory: str, until: datetime | None,
                                  reason: str = "") -> None:
        """New orders skip the CA at `directory` until `until`, for `reason` (replacing a
        cooldown it had); `until` None ends its cooldown. Idempotent."""
        ...

    async def issuer_cooldowns(self, now: datetime) -> dict[str, tuple[datetime, str]]:
        """The CAs cooling down at `now`: directory -> (until, reason)."""
        ...

    # instances sharing the store: one heartbeat row each (certd/instances.py)
    async def heartbeat(self, instance: Instance, forget_before: datetime) -> None:
        """Insert or replace the row of `instance.id`; drop rows last seen before
        `forget_before` (instances killed long ago)."""
        ...

    async def instances(self) -> list[Instance]:
        """Every instance row, ordered by id."""
        ...

    async def remove_instance(self, instance_id: str) -> None:
        """Drop the row (a clean stop). Idempotent."""
        ...

    # alerts: the alerting state of findings, one row per Finding.key (certd/monitor/alerts.py)
    async def active_alerts(self) -> list[Alert]:
        """Every alert not resolved, ordered by key."""
        ...

    async def put_alert(self, alert: Alert) -> None:
        """Insert or replace by `alert.finding.key`."""
        ...

    async def put_alerts(self, alerts: list[Alert]) -> None:
        """put_alert for many, in one transaction (a sweep's worth)."""
        ...

    async def resolve_alerts(self, keys: list[str], at: datetime) -> None:
        """Set resolved_at on the active alerts among `keys` (one transaction)."""
        ...

    async def purge_resolved(self, before: datetime) -> int:
        """Drop alerts resolved before `before`; returns how many."""
        ...

    # Salt pull mode: one-shot bundle tokens (certd/deployers/salt_pull.py, certd/api/salt.py)
    async def create_bundle_token(self, token_sha256: str, *, batch: str, minion: str,
                                  items: Sequence[tuple[str, str]], now: datetime,
                                  expires_at: datetime) -> None:
        """Store a token by its SHA-256 (hex) only: the token itself is never stored."""
        ...

    async def take_bundle_token(self, token_sha256: str, batch: str, now: datetime
                                ) -> BundleGrant | None:
        """Spend the token: the grant if it exists for `batch`, is unused and unexpired, and
        marks it used in the same statement, so of concurrent takes (any processes sharing
        the store) exactly one gets the grant. None otherwise (unknown, wrong batch, used,
        expired): the caller cannot tell which, and must not."""
        ...

    async def expire_bundle_tokens(self, now: datetime, batch: str | None = None) -> int:
        """Drop every token of `batch` (used or not: the job is over) and every token expired
        at `now`; returns how many."""
        ...
