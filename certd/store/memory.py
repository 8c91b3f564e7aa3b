"""The in-memory store: the whole Store Protocol in dicts, for unit tests.

Nothing persists and no other process sees it: a unit test gets a store without a file, and
`storage: memory://` runs certd on one, with a warning (certd/store/__init__.py). It behaves
as the SQLite store does; tests/test_store_contract.py holds both to the same contract.

Atomicity: every method first yields to the event loop once (so concurrent callers really
interleave, as on a real store), then checks and writes without awaiting again, so each call
is atomic on the loop like one SQL statement (a lease, a bundle token, an alias add, a batch
of alerts): no lock needed. A unit of work (`transaction()`) writes to a copy of the tables,
put in place when it ends without an error; meanwhile other tasks read what was committed
(as WAL readers do) and their writes wait for it (as for SQLite's write lock). Not
thread-safe: one event loop.

Several MemoryStore objects made on one MemoryData share it, as processes share a database
file; each has its own open/closed state.

What goes in is copied into frozen records (times converted to UTC, naive ones refused,
lists to tuples, event data through JSON as the SQLite store does); what comes out cannot
change what is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from datetime import datetime, timezone

from certd.errors import StoreError
from certd.issuance.status import ORDER_UNFINISHED, AcmeStatus
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
from certd.store.base import BundleGrant, matching_digest
from certd.store.sealing import ACCOUNTS, CERTIFICATES, ORDERS, KeyRing, Sealer

UNFINISHED = ORDER_UNFINISHED  # order statuses a run can resume


@dataclass(frozen=True)
class _Token:
    batch: str
    minion: str
    items: tuple[tuple[str, str], ...]
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None


class MemoryData:
    """The tables. Dicts keep insertion order, which stands in for SQLite's rowid where the
    contract depends on it (orders: latest per certificate)."""

    def __init__(self) -> None:
        self.gate = asyncio.Lock()  # held by a unit of work, for every store sharing these
        self.accounts: dict[str, Account] = {}
        self.challenges: dict[str, Challenge] = {}
        self.certificates: dict[str, list[IssuedCertificate]] = {}  # name -> by id, ascending
        self.certificate_id = 0  # the last id handed out
        self.states: dict[str, CertificateState] = {}
        self.orders: dict[str, Order] = {}  # url -> order, in order of first save
        self.aliases: dict[str, Alias] = {}
        self.ari: dict[str, AriState] = {}
        self.ledger: list[tuple[str, str, datetime]] = []  # (kind, key, at)
        self.deployments: dict[tuple[str, str, str], Deployment] = {}
        self.events: dict[int, tuple[Event, str]] = {}  # id -> (event, its data as JSON)
        self.event_id = 0  # the last id handed out (a purge never lowers it)
        self.event_counts: dict[str, int] = {}
        self.leases: dict[str, tuple[str, datetime]] = {}  # name -> (owner, expires_at)
        self.instances: dict[str, Instance] = {}
        self.cooldowns: dict[str, tuple[datetime, str]] = {}  # directory -> (until, reason)
        self.alerts: dict[str, Alert] = {}
        self.tokens: dict[str, _Token] = {}
        # bumped by every write to what an alias or certificate view shows (the SQL stores'
        # triggers do it there): Store.change_stamp
        self.stamp = 0

    def copy(self) -> MemoryData:
        """A unit of work's tables: the records are frozen, so copying the containers is
        enough."""
        other = MemoryData()
        for name, value in vars(self).items():
            if isinstance(value, dict):
                value = {k: list(v) if isinstance(v, list) else v for k, v in value.items()}
            elif isinstance(value, list):
                value = list(value)
            setattr(other, name, value)  # the gate too: the same lock
        return other

    def adopt(self, other: MemoryData) -> None:
        """Put a finished unit of work's tables in place of these."""
        vars(self).update(vars(other))


class MemoryStore:
    """Store in this process's memory (see the module docstring): unit tests only."""

    def __init__(self, data: MemoryData | None = None, *, keyring: KeyRing | None = None):
        self.data = data if data is not None else MemoryData()
        # private keys sealed in the tables when a key file is given (certd/store/sealing.py)
        self.sealer = Sealer(keyring, "memory")
        self._open = False
        # the tables of the unit of work this task is in (None: outside one)
        self._unit: contextvars.ContextVar[MemoryData | None] = contextvars.ContextVar(
            f"memory-unit-{id(self)}", default=None)

    async def open(self) -> None:
        self._open = True
        await self.reseal()

    async def reseal(self) -> int:
        """Seal every private key under the key file's first key, as the SQL stores do at
        open; returns how many records changed."""
        prefix = self.sealer.current_prefix
        if prefix is None:
            return 0
        seal = self.sealer.reseal
        changed = 0
        async with self.transaction():
            db = await self._db()
            for history in db.certificates.values():
                for i, c in enumerate(history):
                    if c.key_pem and not c.key_pem.startswith(prefix):
                        history[i] = replace(c, key_pem=seal(c.key_pem, CERTIFICATES,
                                                             (c.name, c.serial)))
                        changed += 1
            for url, o in db.orders.items():
                if o.key_pem and not o.key_pem.startswith(prefix):
                    db.orders[url] = replace(o, key_pem=seal(o.key_pem, ORDERS, (url,)))
                    changed += 1
            for directory, a in db.accounts.items():
                if a.key_pem and not a.key_pem.startswith(prefix):
                    db.accounts[directory] = replace(a, key_pem=seal(a.key_pem, ACCOUNTS,
                                                                     (directory,)))
                    changed += 1
        return changed

    async def close(self) -> None:
        self._open = False

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """A unit of work: the calls this task makes inside apply together when it ends, or
        not at all if it raises. Nested: part of the outer one."""
        if self._unit.get() is not None:
            yield
            return
        await self._read()
        async with self.data.gate:
            working = self.data.copy()
            token = self._unit.set(working)
            try:
                yield
            finally:
                self._unit.reset(token)
            self.data.adopt(working)

    async def _read(self) -> MemoryData:
        """The tables to read: the unit of work's if this task is in one, else the
        committed ones (never waiting for another task's unit)."""
        await asyncio.sleep(0)
        if not self._open:
            raise StoreError("memory: store is not open", unavailable=True)
        return self._unit.get() or self.data

    async def _db(self) -> MemoryData:
        """The tables to write: as `_read`, after another task's unit of work has ended."""
        working = await self._read()
        while working is self.data and self.data.gate.locked():
            async with self.data.gate:
                pass  # released without yielding: the caller writes before a next unit runs
        return working

    # accounts
    async def get_account(self, directory: str) -> Account | None:
        account = (await self._read()).accounts.get(directory)
        return None if account is None else self.sealer.account_out(account)

    async def save_account(self, account: Account) -> None:
        db = await self._db()
        old = db.accounts.get(account.directory)
        if old is not None:  # as an upsert: the first created_at stays
            account = replace(account, created_at=old.created_at)
        db.accounts[account.directory] = self.sealer.account_in(_clean(account))
        db.stamp += 1

    # challenges
    async def put_challenge(self, challenge: Challenge) -> None:
        challenge = _clean(challenge)
        (await self._db()).challenges[challenge.token] = challenge

    async def get_key_authorization(self, token: str, now: datetime) -> str | None:
        now = _utc(now)
        challenge = (await self._read()).challenges.get(token)
        if challenge is None or challenge.expires_at <= now:
            return None
        return challenge.key_authorization

    async def delete_challenge(self, token: str) -> None:
        (await self._db()).challenges.pop(token, None)

    async def purge_challenges(self, now: datetime) -> int:
        now = _utc(now)
        db = await self._db()
        return _drop(db.challenges, lambda c: c.expires_at <= now)

    # certificates
    async def add_certificate(self, cert: IssuedCertificate) -> IssuedCertificate:
        cert = _clean(cert)
        db = await self._db()
        db.certificate_id += 1
        cert = replace(cert, id=db.certificate_id)
        db.certificates.setdefault(cert.name, []).append(self.sealer.cert_in(cert))
        db.stamp += 1
        return cert

    async def current_certificate(self, name: str) -> IssuedCertificate | None:
        cert = _current((await self._read()).certificates.get(name, ()))
        return None if cert is None else self.sealer.cert_out(cert)

    async def certificate_history(self, name: str, limit: int = 20) -> list[IssuedCertificate]:
        history = (await self._read()).certificates.get(name, [])
        recent = history[max(len(history) - limit, 0):] if limit >= 0 else history
        return [self.sealer.cert_out(c) for c in recent]

    # state
    async def get_state(self, name: str) -> CertificateState | None:
        return (await self._read()).states.get(name)

    async def put_state(self, state: CertificateState) -> None:
        state = _clean(state)
        db = await self._db()
        db.states[state.name] = state
        db.stamp += 1

    # orders
    async def save_order(self, order: Order) -> None:
        order = self.sealer.order_in(_clean(order))
        db = await self._db()
        old = db.orders.get(order.url)
        if old is not None:  # an update changes status, error and key; the rest stays
            order = replace(old, status=order.status, error=order.error, key_pem=order.key_pem)
        db.orders[order.url] = order

    async def orders(self, certificate: str | None = None, limit: int = 100) -> list[Order]:
        db = await self._read()
        found = [(o.created_at, i, o) for i, o in enumerate(db.orders.values())
                 if certificate is None or o.certificate == certificate]
        found.sort(key=lambda t: t[:2], reverse=True)
        return [self.sealer.order_out(o) for _, _, o in _limited(found, limit)]

    async def unfinished_orders(self) -> list[Order]:
        latest: dict[str, Order] = {}
        for order in (await self._read()).orders.values():  # the last saved first wins
            latest[order.certificate] = order
        return [self.sealer.order_out(o) for o in latest.values() if o.status in UNFINISHED
                or (o.status == AcmeStatus.VALID and o.key_pem is not None)]

    # aliases
    async def add_alias(self, alias: Alias) -> tuple[Alias, bool]:
        alias = _clean(replace(alias, removing=False))  # a new alias is never being removed
        db = await self._db()
        stored = db.aliases.setdefault(alias.domain, alias)
        db.stamp += stored is alias
        return stored, stored is alias

    async def get_alias(self, domain: str) -> Alias | None:
        return (await self._read()).aliases.get(domain)

    async def list_aliases(self, *, limit: int | None = None, after: str | None = None
                           ) -> list[Alias]:
        db = await self._read()
        domains = sorted(d for d in db.aliases if after is None or d > after)
        return [db.aliases[d] for d in _limited(domains, limit)]

    async def alias_statuses(self) -> dict[str, str]:
        db = await self._read()
        return {d: "removing" if a.removing else
                (db.states[d].status.value if d in db.states else "pending")
                for d, a in db.aliases.items()}

    async def mark_alias_removing(self, domain: str) -> None:
        db = await self._db()
        if domain in db.aliases:
            db.aliases[domain] = replace(db.aliases[domain], removing=True)
            db.stamp += 1

    async def delete_alias(self, domain: str) -> None:
        db = await self._db()
        db.stamp += db.aliases.pop(domain, None) is not None

    # ARI windows
    async def get_ari(self, name: str) -> AriState | None:
        return (await self._read()).ari.get(name)

    async def put_ari(self, ari: AriState) -> None:
        ari = _clean(ari)
        db = await self._db()
        db.ari[ari.name] = ari
        db.stamp += 1

    # the request ledger (budget)
    async def ledger_add(self, kind: str, keys: list[str], at: datetime) -> None:
        at = _utc(at)
        (await self._db()).ledger.extend((kind, key, at) for key in keys)

    async def ledger_times(self, kind: str, key: str, since: datetime) -> list[datetime]:
        since = _utc(since)
        return sorted(at for k, key_, at in (await self._read()).ledger
                      if k == kind and key_ == key and at > since)

    async def ledger_purge(self, before: datetime) -> int:
        before = _utc(before)
        db = await self._db()
        kept = [entry for entry in db.ledger if entry[2] > before]
        purged = len(db.ledger) - len(kept)
        db.ledger[:] = kept
        return purged

    async def ledger_take(self, kind: str, key: str, at: datetime, *, since: datetime,
                          limit: int) -> datetime | None:
        at, since = _utc(at), _utc(since)
        db = await self._db()  # no await from here on: the count and the write are one step
        times = sorted(t for k, key_, t in db.ledger if k == kind and key_ == key and t > since)
        if len(times) >= limit:
            return times[len(times) - limit] if limit > 0 else at
        db.ledger.append((kind, key, at))
        return None

    async def change_stamp(self) -> int:
        return (await self._read()).stamp

    # the bulk reads
    async def overview(self) -> dict[str, tuple[CertSummary | None, CertificateState | None,
                                                AriState | None]]:
        db = await self._read()
        summaries = {name: _summary(c) for name, history in db.certificates.items()
                     if (c := _current(history)) is not None}
        return {name: (summaries.get(name), db.states.get(name), db.ari.get(name))
                for name in {**summaries, **db.states, **db.ari}}

    async def details(self, names: Sequence[str]) -> dict[str, CertDetails]:
        db = await self._read()
        out = {}
        for name in dict.fromkeys(names):
            current = _current(db.certificates.get(name, ()))
            out[name] = CertDetails(None if current is None else _summary(current),
                                    db.states.get(name), db.ari.get(name),
                                    tuple(_deployments(db, name)))
        return out

    # deployments
    async def put_deployment(self, deployment: Deployment) -> None:
        d = _clean(deployment)
        db = await self._db()
        db.deployments[d.certificate, d.frontend, d.node] = d
        db.stamp += 1

    async def deployments(self, certificate: str) -> list[Deployment]:
        return _deployments(await self._read(), certificate)

    # events
    async def add_event(self, event: Event) -> None:
        event, data = _clean(replace(event, data={})), json.dumps(event.data)
        db = await self._db()
        db.event_id += 1
        db.events[db.event_id] = (replace(event, id=db.event_id), data)
        db.event_counts[event.kind] = db.event_counts.get(event.kind, 0) + 1

    async def events(
        self, *, certificate: str | None = None, kind: str | None = None, limit: int = 100,
        before: int | None = None,
    ) -> list[Event]:
        db = await self._read()
        found = (row for i, row in reversed(db.events.items())
                 if (before is None or i < before)
                 and (certificate is None or row[0].certificate == certificate)
                 and (kind is None or row[0].kind == kind))
        return [_event(row) for row in _limited(found, limit)]

    async def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        found = (row for i, row in (await self._read()).events.items() if i > after_id)
        return [_event(row) for row in _limited(found, limit)]

    async def event_counts(self) -> dict[str, int]:
        return dict((await self._read()).event_counts)

    async def purge_events(self, before: datetime) -> int:
        before = _utc(before)
        db = await self._db()
        newest = max(db.events, default=None)  # always stays: ids never go backwards
        return _drop(db.events, lambda row: row[0].at < before and row[0].id != newest)

    async def last_event_id(self) -> int:
        return max((await self._read()).events, default=0)

    # retention of private keys (issue 10)
    async def wipe_keys(self, name: str | None = None, *,
                        superseded_before: datetime) -> int:
        before = _utc(superseded_before)
        db = await self._db()
        certs = 0
        for history in db.certificates.values():
            for i, cert in enumerate(history):
                if cert.key_pem and (name is None or cert.name == name) and any(
                        newer.key_pem and newer.issued_at <= before
                        for newer in history[i + 1:]):
                    history[i] = replace(cert, key_pem="")
                    certs += 1
        db.stamp += certs
        stored = {c.order_url for history in db.certificates.values() for c in history
                  if c.order_url is not None}
        latest = {o.certificate: o.url for o in db.orders.values()}
        orders = 0
        for url, order in db.orders.items():
            if order.key_pem is not None and (name is None or order.certificate == name) and (
                    order.status == AcmeStatus.INVALID or url in stored
                    or latest[order.certificate] != url):
                db.orders[url] = replace(order, key_pem=None)
                orders += 1
        return certs + orders

    async def destroy_keys(self, name: str) -> int:
        db = await self._db()
        changed = 0
        history = db.certificates.get(name, [])
        for i, cert in enumerate(history):
            if cert.key_pem:
                history[i] = replace(cert, key_pem="")
                changed += 1
        db.stamp += changed
        for url, order in db.orders.items():
            if order.certificate != name:
                continue
            if order.key_pem is not None:
                changed += 1
            # an unfinished order is abandoned with its key: a re-added alias orders afresh
            if order.status in UNFINISHED:
                order = replace(order, status=AcmeStatus.INVALID.value,
                                error="abandoned: keys destroyed")
            db.orders[url] = replace(order, key_pem=None)
        _drop(db.challenges, lambda c: c.certificate == name)
        return changed

    # leases
    async def acquire_lease(self, name: str, owner: str, until: datetime, now: datetime) -> bool:
        until, now = _utc(until), _utc(now)
        db = await self._db()
        held = db.leases.get(name)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        db.leases[name] = (owner, until)
        return True

    async def lease_holder(self, name: str, now: datetime) -> str | None:
        now = _utc(now)
        held = (await self._read()).leases.get(name)
        return held[0] if held is not None and held[1] > now else None

    async def take_over_lease(self, name: str, old_owner: str, owner: str,
                              until: datetime) -> bool:
        until = _utc(until)
        db = await self._db()
        held = db.leases.get(name)
        if held is None or held[0] != old_owner:
            return False
        db.leases[name] = (owner, until)
        return True

    async def extend_lease(self, name: str, owner: str, until: datetime) -> bool:
        until = _utc(until)
        db = await self._db()
        held = db.leases.get(name)
        if held is None or held[0] != owner:
            return False
        db.leases[name] = (owner, until)
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        db = await self._db()
        held = db.leases.get(name)
        if held is not None and held[0] == owner:
            del db.leases[name]

    async def leases(self, now: datetime) -> list[tuple[str, str, datetime]]:
        now = _utc(now)
        held = (await self._read()).leases
        return [(name, owner, until) for name, (owner, until) in sorted(held.items())
                if until > now]

    async def purge_leases(self, now: datetime) -> int:
        now = _utc(now)
        return _drop((await self._db()).leases, lambda held: held[1] <= now)

    # CAs cooling down
    async def set_issuer_cooldown(self, directory: str, until: datetime | None,
                                  reason: str = "") -> None:
        db = await self._db()
        if until is None:
            db.cooldowns.pop(directory, None)
        else:
            db.cooldowns[directory] = (_utc(until), reason)

    async def issuer_cooldowns(self, now: datetime) -> dict[str, tuple[datetime, str]]:
        now = _utc(now)
        held = (await self._read()).cooldowns
        return {d: held[d] for d in sorted(held) if held[d][0] > now}

    # instances
    async def heartbeat(self, instance: Instance, forget_before: datetime) -> None:
        forget_before = _utc(forget_before)
        db = await self._db()
        _drop(db.instances, lambda i: i.last_seen_at < forget_before)
        db.instances[instance.id] = replace(instance, started_at=_utc(instance.started_at),
                                            last_seen_at=_utc(instance.last_seen_at))

    async def instances(self) -> list[Instance]:
        db = await self._read()
        return [db.instances[k] for k in sorted(db.instances)]

    async def remove_instance(self, instance_id: str) -> None:
        (await self._db()).instances.pop(instance_id, None)

    # alerts
    async def active_alerts(self) -> list[Alert]:
        db = await self._read()
        return [db.alerts[k] for k in sorted(db.alerts) if db.alerts[k].resolved_at is None]

    async def put_alert(self, alert: Alert) -> None:
        await self.put_alerts([alert])

    async def put_alerts(self, alerts: list[Alert]) -> None:
        alerts = [_clean(a) for a in alerts]
        db = await self._db()
        for alert in alerts:
            db.alerts[alert.finding.key] = alert

    async def resolve_alerts(self, keys: list[str], at: datetime) -> None:
        at = _utc(at)
        db = await self._db()
        for key in keys:
            alert = db.alerts.get(key)
            if alert is not None and alert.resolved_at is None:
                db.alerts[key] = replace(alert, resolved_at=at)

    async def purge_resolved(self, before: datetime) -> int:
        before = _utc(before)
        db = await self._db()
        return _drop(db.alerts, lambda a: a.resolved_at is not None and a.resolved_at < before)

    # Salt pull mode: one-shot bundle tokens
    async def create_bundle_token(self, token_sha256: str, *, batch: str, minion: str,
                                  items: Sequence[tuple[str, str]], now: datetime,
                                  expires_at: datetime) -> None:
        token = _Token(batch, minion, tuple((str(c), str(s)) for c, s in items), _utc(now),
                       _utc(expires_at))
        db = await self._db()
        if token_sha256 in db.tokens:  # the SQLite store's primary key refuses it too
            raise StoreError("memory: bundle token already exists")
        db.tokens[token_sha256] = token

    async def take_bundle_token(self, token_sha256: str, batch: str, now: datetime
                                ) -> BundleGrant | None:
        now = _utc(now)
        db = await self._db()
        match = matching_digest((d for d, t in db.tokens.items() if t.batch == batch),
                                token_sha256)
        token = db.tokens.get(match) if match is not None else None
        if token is None or token.used_at is not None or token.expires_at <= now:
            return None
        db.tokens[match] = replace(token, used_at=now)
        return BundleGrant(token.batch, token.minion, token.items)

    async def expire_bundle_tokens(self, now: datetime, batch: str | None = None) -> int:
        now = _utc(now)
        db = await self._db()
        return _drop(db.tokens, lambda t: t.expires_at <= now or t.batch == batch)


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    return dt.astimezone(timezone.utc)


def _clean(record):
    """`record` (a frozen dataclass) as the store keeps it: times in UTC, lists as tuples,
    nested records too."""
    changes = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, datetime):
            changes[f.name] = _utc(value)
        elif isinstance(value, list):
            changes[f.name] = tuple(value)
        elif is_dataclass(value):
            changes[f.name] = _clean(value)
    return replace(record, **changes) if changes else record


def _drop(table: dict, doomed) -> int:
    """Delete the values of `table` for which `doomed(value)`; returns how many."""
    keys = [k for k, v in table.items() if doomed(v)]
    for k in keys:
        del table[k]
    return len(keys)


def _limited(rows, limit: int | None) -> list:
    """The first `limit` of `rows` (all of them for None or a negative limit, as SQL's LIMIT
    -1)."""
    return list(rows if limit is None or limit < 0 else itertools.islice(rows, limit))


def _current(history: Sequence[IssuedCertificate]) -> IssuedCertificate | None:
    """The newest certificate that still has its key (a destroyed key makes it history)."""
    return next((c for c in reversed(history) if c.key_pem), None)


def _summary(c: IssuedCertificate) -> CertSummary:
    return CertSummary(c.name, c.serial, c.domains, c.not_before, c.not_after, c.issued_at,
                       c.fingerprint_sha256, c.issuer, c.profile)


def _deployments(db: MemoryData, certificate: str) -> list[Deployment]:
    return [d for _, d in sorted((key, d) for key, d in db.deployments.items()
                                 if key[0] == certificate)]


def _event(row: tuple[Event, str]) -> Event:
    event, data = row
    return replace(event, data=json.loads(data))  # a dict of its own for every reader
