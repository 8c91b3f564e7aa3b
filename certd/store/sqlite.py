"""The embedded store: one SQLite file (WAL, 0600) through aiosqlite, so the loop never blocks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import aiosqlite

from certd.errors import StoreError
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
from certd.store.migrations import MIGRATIONS, newer_schema
from certd.store.rows import (
    SQLITE,
    Mappers,
    collector_paused,
    overview_done,
    overview_into,
)
from certd.store.sealing import KeyRing, Sealer, reseal_sql

log = logging.getLogger(__name__)
ROWS = Mappers(SQLITE)  # stored rows back into model objects

PURGE_BATCH = 5000  # events deleted per statement by purge_events

# How long a write waits for another connection's write lock (another certd process, the
# CLI) before it fails with StoreError: short, so the API answers 503 in seconds instead of
# hanging; every write certd makes is one short transaction, so a healthy peer never holds
# the lock this long.
BUSY_TIMEOUT = 5.0
# The challenge reader's wait. In WAL mode a reader never waits for a writer; this covers
# only the moments SQLite itself locks readers out (WAL recovery after a crash).
READ_BUSY_TIMEOUT = 1.0


def _ts(dt: datetime | None) -> str | None:
    """Sortable text: UTC, microseconds, always the same width."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class SqliteStore:
    """Store on a SQLite file. Several processes may share the file (WAL, busy timeout).

    Two connections, each with its own aiosqlite thread: the main one for everything, and a
    read-only one for `get_key_authorization`, so a challenge lookup never queues behind a
    write that waits for another process's lock."""

    def __init__(self, path: Path, *, keyring: KeyRing | None = None):
        self.path = Path(path)
        # private keys sealed at rest when a key file is configured (certd/store/sealing.py)
        self.sealer = Sealer(keyring, f"sqlite[{self.path}]")
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # every call on the main connection takes its turn under one lock, and a unit of
        # work keeps it from BEGIN to COMMIT for the task that owns it: no other task's
        # statement can run inside someone else's transaction
        self._turns = asyncio.Lock()
        self._unit_task: asyncio.Task | None = None
        self._unit_durable = False  # a call in the open unit asked for a checkpoint

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        if self._unit_task is not None and asyncio.current_task() is self._unit_task:
            yield  # inside this task's own unit of work
            return
        async with self._turns:
            yield

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """A unit of work: the store calls this task makes inside commit together or not at
        all; an error or a kill -9 between them leaves none. Nested: part of the outer.
        Other tasks' calls wait until it ends (the body must not wait for them). Checkpointed
        after its COMMIT if a call in it wanted that (a key stored or wiped), as it would
        have been outside a unit; not otherwise (an alias and its quota slot, a heartbeat)."""
        task = asyncio.current_task()
        if task is not None and task is self._unit_task:
            yield
            return
        async with self._turns:
            self._unit_task = task
            self._unit_durable = False
            try:
                await self._exec("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    await self.db.execute("ROLLBACK")
                    raise
                await self._exec("COMMIT")
            finally:
                self._unit_task = None
        if self._unit_durable:
            await self._durable()

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            self._db = await self._writer()
            await self._migrate()
            await self._check_writable()
            resealed = await self.reseal()
            if resealed:
                log.info("sqlite[%s]: %d private keys sealed under key %s", self.path,
                         resealed, self.sealer.keyring.primary)
            # mode=ro: this connection can never take the write lock, and in WAL mode a
            # reader never waits for a writer; each lookup is its own read transaction, so
            # what another process committed is visible at once
            self._reader = await aiosqlite.connect(
                f"file:{quote(str(self.path.absolute()))}?mode=ro", uri=True,
                timeout=READ_BUSY_TIMEOUT, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreError(f"sqlite[{self.path}]: open: {_reason(exc)}") from exc
        except BaseException:  # a newer schema, a cancellation: never leave the connection
            await self.close()
            raise

    async def _writer(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash or kill -9 (consistency never
            # depends on it); only a power cut can drop the last commits. What must survive
            # even that (a new certificate and its key, the account) is checkpointed at once.
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            # deleted and overwritten content (a wiped key, an order's key set to NULL) is
            # zeroed in the database file instead of lingering in free space. Not covered:
            # the WAL (old page images stay in it until a checkpoint copies them and the next
            # write cycle overwrites it; wipe_keys/destroy_keys checkpoint), backups and
            # copies of the file, and the filesystem's or the disk's own remapping.
            await db.execute("PRAGMA secure_delete=ON")
        except BaseException:
            await db.close()
            raise
        return db

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _check_writable(self) -> None:
        """A file SQLite can read but not write (a read-only mount, chattr +i) opens fine and
        fails every write later: find out now, with a write that is rolled back (in WAL mode
        BEGIN IMMEDIATE alone succeeds on a read-only file). Another process's write lock
        means writable."""
        try:
            await self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorname == "SQLITE_BUSY":
                return
            raise
        try:
            async with self.db.execute("PRAGMA user_version") as cur:
                (version,) = await cur.fetchone()
            await self.db.execute(f"PRAGMA user_version={int(version)}")
        finally:
            await self.db.execute("ROLLBACK")

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"sqlite[{self.path}]: store is not open", unavailable=True)
        return self._db

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            (version,) = await cur.fetchone()
        refused = newer_schema(version)
        if refused:
            raise StoreError(f"sqlite[{self.path}]: {refused}")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in script:
                    await self.db.execute(statement)
                await self.db.execute(f"PRAGMA user_version={number}")
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    async def _exec(self, sql: str, params: tuple | dict = ()) -> int:
        try:
            async with self._turn(), self.db.execute(sql, params) as cur:
                return cur.rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite[{self.path}]: {_reason(exc)}",
                             unavailable=_unavailable(exc)) from exc

    async def _all(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        try:  # one trip to aiosqlite's thread (execute + fetch + close would be three)
            async with self._turn():
                return list(await self.db.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite[{self.path}]: {_reason(exc)}",
                             unavailable=_unavailable(exc)) from exc

    async def _one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _durable(self) -> None:
        """fsync the WAL and copy it into the database file (a passive checkpoint); inside a
        caller's unit of work, the unit's COMMIT comes first."""
        if self._unit_task is not None and asyncio.current_task() is self._unit_task:
            self._unit_durable = True
            return
        try:
            async with self._turn(), self.db.execute("PRAGMA wal_checkpoint(PASSIVE)") as cur:
                await cur.fetchall()  # a pragma left unread keeps its statement active
        except sqlite3.OperationalError as exc:  # busy elsewhere: the commit still stands
            log.debug("sqlite[%s]: checkpoint skipped: %s", self.path, exc)

    # accounts
    async def get_account(self, directory: str) -> Account | None:
        row = await self._one("SELECT * FROM accounts WHERE directory = ?", (directory,))
        if row is None:
            return None
        return self.sealer.account_out(
            Account(row["directory"], row["uri"], row["key_pem"], _dt(row["created_at"])))

    async def save_account(self, account: Account) -> None:
        await self._exec(
            "INSERT INTO accounts (directory, uri, key_pem, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(directory) DO UPDATE SET uri = excluded.uri, key_pem = excluded.key_pem",
            (account.directory, account.uri, self.sealer.account_in(account).key_pem,
             _ts(account.created_at)),
        )
        await self._durable()

    # challenges
    async def put_challenge(self, challenge: Challenge) -> None:
        await self._exec(
            "INSERT OR REPLACE INTO challenges "
            "(token, key_authorization, certificate, authorization_url, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                challenge.token,
                challenge.key_authorization,
                challenge.certificate,
                challenge.authorization_url,
                _ts(challenge.expires_at),
            ),
        )

    async def get_key_authorization(self, token: str, now: datetime) -> str | None:
        if self._reader is None:
            raise StoreError(f"sqlite[{self.path}]: store is not open")
        try:  # the read-only connection: never queued behind a write on the main one
            rows = await self._reader.execute_fetchall(
                "SELECT key_authorization FROM challenges WHERE token = ? AND expires_at > ?",
                (token, _ts(now)),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite[{self.path}]: challenge lookup: {_reason(exc)}") from exc
        return rows[0][0] if rows else None

    async def delete_challenge(self, token: str) -> None:
        await self._exec("DELETE FROM challenges WHERE token = ?", (token,))

    async def purge_challenges(self, now: datetime) -> int:
        return await self._exec("DELETE FROM challenges WHERE expires_at <= ?", (_ts(now),))

    # certificates
    async def add_certificate(self, cert: IssuedCertificate) -> IssuedCertificate:
        try:
            async with self._turn(), self.db.execute(
                "INSERT INTO certificates (name, serial, domains, not_before, not_after, "
                "cert_pem, chain_pem, key_pem, fingerprint_sha256, issued_at, order_url, "
                "issuer, profile) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cert.name,
                    cert.serial,
                    json.dumps(list(cert.domains)),
                    _ts(cert.not_before),
                    _ts(cert.not_after),
                    cert.cert_pem,
                    cert.chain_pem,
                    self.sealer.cert_in(cert).key_pem,
                    cert.fingerprint_sha256,
                    _ts(cert.issued_at),
                    cert.order_url,
                    cert.issuer,
                    cert.profile,
                ),
            ) as cur:
                new_id = cur.lastrowid
            await self._durable()
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite[{self.path}]: {exc}") from exc
        return replace(cert, id=new_id)

    async def current_certificate(self, name: str) -> IssuedCertificate | None:
        # a row whose key was destroyed (a removed alias) is history, never current: an alias
        # added again gets a new certificate instead of one nobody can deploy
        row = await self._one(
            "SELECT * FROM certificates WHERE name = ? AND key_pem <> '' "
            "ORDER BY id DESC LIMIT 1", (name,)
        )
        return None if row is None else self.sealer.cert_out(ROWS.certificate(row))

    async def certificate_history(self, name: str, limit: int = 20) -> list[IssuedCertificate]:
        rows = await self._all(
            "SELECT * FROM (SELECT * FROM certificates WHERE name = ? ORDER BY id DESC LIMIT ?) "
            "ORDER BY id",
            (name, limit),
        )
        return [self.sealer.cert_out(ROWS.certificate(r)) for r in rows]

    # state
    async def get_state(self, name: str) -> CertificateState | None:
        row = await self._one("SELECT * FROM cert_state WHERE name = ?", (name,))
        return None if row is None else ROWS.state(row)

    async def put_state(self, state: CertificateState) -> None:
        await self._exec(
            "INSERT OR REPLACE INTO cert_state "
            "(name, status, last_error, attempts, next_attempt_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                state.name,
                state.status.value,
                state.last_error,
                state.attempts,
                _ts(state.next_attempt_at),
                _ts(state.updated_at),
            ),
        )

    # orders
    async def save_order(self, order: Order) -> None:
        await self._exec(
            "INSERT INTO orders (url, certificate, status, created_at, error, domains, key_pem, "
            "replaces) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(url) DO UPDATE SET "
            "status = excluded.status, error = excluded.error, key_pem = excluded.key_pem",
            (order.url, order.certificate, order.status, _ts(order.created_at), order.error,
             json.dumps(list(order.domains)), self.sealer.order_in(order).key_pem,
             order.replaces),
        )

    async def orders(self, certificate: str | None = None, limit: int = 100) -> list[Order]:
        rows = await self._all(
            "SELECT * FROM orders WHERE (? IS NULL OR certificate = ?) "
            "ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (certificate, certificate, limit),
        )
        return [self.sealer.order_out(ROWS.order(r)) for r in rows]

    async def unfinished_orders(self) -> list[Order]:
        rows = await self._all(
            "SELECT o.* FROM orders o JOIN (SELECT certificate, MAX(rowid) AS last FROM orders "
            "GROUP BY certificate) latest ON o.rowid = latest.last "
            "WHERE o.status IN ('pending', 'ready', 'processing') "
            "OR (o.status = 'valid' AND o.key_pem IS NOT NULL)"
        )
        return [self.sealer.order_out(ROWS.order(r)) for r in rows]

    # aliases
    async def add_alias(self, alias: Alias) -> tuple[Alias, bool]:
        created = await self._exec(
            "INSERT OR IGNORE INTO aliases (domain, frontends, created_by, created_at, "
            "validation, profile) VALUES (?, ?, ?, ?, ?, ?)",
            (alias.domain, json.dumps(list(alias.frontends)), alias.created_by,
             _ts(alias.created_at), alias.validation, alias.profile),
        )
        return await self.get_alias(alias.domain), created == 1

    async def get_alias(self, domain: str) -> Alias | None:
        row = await self._one("SELECT * FROM aliases WHERE domain = ?", (domain,))
        return None if row is None else ROWS.alias(row)

    async def list_aliases(self, *, limit: int | None = None, after: str | None = None
                           ) -> list[Alias]:
        # two statements, not '(? IS NULL OR domain > ?)': that one scans and sorts the table
        with collector_paused():  # all of them, before every sweep (rows.collector_paused)
            if after is None:
                rows = await self._all("SELECT * FROM aliases ORDER BY domain LIMIT ?",
                                       (-1 if limit is None else limit,))
            else:
                rows = await self._all("SELECT * FROM aliases WHERE domain > ? ORDER BY domain "
                                       "LIMIT ?", (after, -1 if limit is None else limit))
            return [ROWS.alias(r) for r in rows]

    async def alias_statuses(self) -> dict[str, str]:
        return {r[0]: r[1] for r in await self._all(
            "SELECT a.domain, CASE WHEN a.removing THEN 'removing' "
            "ELSE COALESCE(s.status, 'pending') END FROM aliases a "
            "LEFT JOIN cert_state s ON s.name = a.domain")}

    async def mark_alias_removing(self, domain: str) -> None:
        await self._exec("UPDATE aliases SET removing = 1 WHERE domain = ?", (domain,))

    async def delete_alias(self, domain: str) -> None:
        await self._exec("DELETE FROM aliases WHERE domain = ?", (domain,))

    # ARI windows
    async def get_ari(self, name: str) -> AriState | None:
        row = await self._one("SELECT * FROM ari WHERE name = ?", (name,))
        return None if row is None else ROWS.ari(row)

    async def put_ari(self, ari: AriState) -> None:
        await self._exec(
            "INSERT OR REPLACE INTO ari (name, serial, window_start, window_end, renew_at, "
            "next_check_at, explanation_url, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (ari.name, ari.serial, _ts(ari.window_start), _ts(ari.window_end),
             _ts(ari.renew_at), _ts(ari.next_check_at), ari.explanation_url,
             _ts(ari.checked_at)),
        )

    # the request ledger (budget)
    async def ledger_add(self, kind: str, keys: list[str], at: datetime) -> None:
        try:
            async with self._turn(), self.db.executemany(
                "INSERT INTO ledger (kind, key, at) VALUES (?, ?, ?)",
                [(kind, key, _ts(at)) for key in keys],
            ):
                pass
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite[{self.path}]: {exc}") from exc

    async def ledger_times(self, kind: str, key: str, since: datetime) -> list[datetime]:
        rows = await self._all(
            "SELECT at FROM ledger WHERE kind = ? AND key = ? AND at > ? ORDER BY at",
            (kind, key, _ts(since)),
        )
        return [_dt(r[0]) for r in rows]

    async def ledger_purge(self, before: datetime) -> int:
        return await self._exec("DELETE FROM ledger WHERE at <= ?", (_ts(before),))

    async def ledger_take(self, kind: str, key: str, at: datetime, *, since: datetime,
                          limit: int) -> datetime | None:
        # one statement: a writing statement holds the write lock from its start, so no
        # other connection or process writes between its count and its insert
        taken = await self._exec(
            "INSERT INTO ledger (kind, key, at) SELECT :kind, :key, :at WHERE (SELECT COUNT(*) "
            "FROM ledger WHERE kind = :kind AND key = :key AND at > :since) < :limit",
            {"kind": kind, "key": key, "at": _ts(at), "since": _ts(since), "limit": limit})
        if taken:
            return None
        times = await self.ledger_times(kind, key, since)  # a refusal: its Retry-After
        return times[len(times) - limit] if 0 < limit <= len(times) else at

    async def change_stamp(self) -> int:
        # the read-only connection: never queued behind a write on the main one; kept by
        # the triggers of migration 9
        if self._reader is None:
            raise StoreError(f"sqlite[{self.path}]: store is not open")
        try:
            rows = await self._reader.execute_fetchall("SELECT n FROM change_stamp")
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite[{self.path}]: change stamp: {_reason(exc)}") from exc
        return rows[0][0]

    # the sweep's bulk read
    async def overview(self) -> dict[str, tuple[CertSummary | None, CertificateState | None,
                                                AriState | None]]:
        out: dict[str, list] = {}
        with collector_paused():  # ~250,000 rows at 100,000 names (rows.collector_paused)
            overview_into(out, 0, ROWS.summary, await self._all(_LATEST_CERTS.format(where="")))
            overview_into(out, 1, ROWS.state, await self._all("SELECT * FROM cert_state"))
            overview_into(out, 2, ROWS.ari, await self._all("SELECT * FROM ari"))
            return overview_done(out)

    async def details(self, names: Sequence[str]) -> dict[str, CertDetails]:
        names = list(dict.fromkeys(names))
        out: dict[str, CertDetails] = {}
        for i in range(0, len(names), 500):  # SQLite's bound-parameter limit
            chunk = names[i:i + 500]
            marks = ",".join("?" * len(chunk))
            certs = {r[0]: ROWS.summary(r) for r in await self._all(
                _LATEST_CERTS.format(where=f"AND name IN ({marks})"), chunk)}
            states = {r["name"]: ROWS.state(r) for r in await self._all(
                f"SELECT * FROM cert_state WHERE name IN ({marks})", chunk)}
            aris = {r["name"]: ROWS.ari(r) for r in await self._all(
                f"SELECT * FROM ari WHERE name IN ({marks})", chunk)}
            deps: dict[str, list[Deployment]] = {}
            for r in await self._all(f"SELECT * FROM deployments WHERE certificate IN ({marks}) "
                                     "ORDER BY certificate, frontend, node", chunk):
                deps.setdefault(r["certificate"], []).append(ROWS.deployment(r))
            for name in chunk:
                out[name] = CertDetails(certs.get(name), states.get(name), aris.get(name),
                                        tuple(deps.get(name, ())))
        return out

    # deployments
    async def put_deployment(self, deployment: Deployment) -> None:
        d = deployment
        await self._exec(
            "INSERT OR REPLACE INTO deployments "
            "(certificate, frontend, node, serial, status, message, updated_at, batch, "
            "seconds, verified_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (d.certificate, d.frontend, d.node, d.serial, d.status.value, d.message,
             _ts(d.updated_at), d.batch, d.seconds,
             _ts(d.verified_at)),
        )

    async def deployments(self, certificate: str) -> list[Deployment]:
        rows = await self._all(
            "SELECT * FROM deployments WHERE certificate = ? ORDER BY frontend, node",
            (certificate,),
        )
        return [ROWS.deployment(r) for r in rows]

    # events
    async def add_event(self, event: Event) -> None:
        await self._exec(
            "INSERT INTO events (at, kind, severity, certificate, node, message, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (_ts(event.at), event.kind, event.severity.value, event.certificate, event.node,
             event.message, json.dumps(event.data)),
        )

    async def events(
        self, *, certificate: str | None = None, kind: str | None = None, limit: int = 100,
        before: int | None = None,
    ) -> list[Event]:
        rows = await self._all(
            "SELECT * FROM events WHERE (:c IS NULL OR certificate = :c) "
            "AND (:k IS NULL OR kind = :k) AND id < :b ORDER BY id DESC LIMIT :n",
            {"c": certificate, "k": kind, "n": limit, "b": 2**63 - 1 if before is None
             else before},
        )
        return [ROWS.event(r) for r in rows]

    async def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        rows = await self._all("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?",
                               (after_id, limit))
        return [ROWS.event(r) for r in rows]

    async def event_counts(self) -> dict[str, int]:
        # kept by the events_counted trigger (migration 5): one row per kind, not a scan
        return {r[0]: r[1] for r in await self._all("SELECT kind, count FROM event_counts")}

    async def purge_events(self, before: datetime) -> int:
        # in batches, so another process's write never waits long for the lock; the newest
        # event always stays, so ids keep growing (a rowid table reuses MAX(id) + 1, and the
        # alert forwarder's cursor is an id)
        total = 0
        while True:
            n = await self._exec(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ? "
                "AND id < (SELECT MAX(id) FROM events) ORDER BY id LIMIT ?)",
                (_ts(before), PURGE_BATCH))
            total += n
            if n < PURGE_BATCH:
                return total

    # retention of private keys (issue 10)
    async def wipe_keys(self, name: str | None = None, *,
                        superseded_before: datetime) -> int:
        certs = await self._exec(
            "UPDATE certificates SET key_pem = '' WHERE key_pem <> '' "
            "AND (:name IS NULL OR name = :name) AND EXISTS (SELECT 1 FROM certificates n "
            "WHERE n.name = certificates.name AND n.id > certificates.id "
            "AND n.key_pem <> '' AND n.issued_at <= :before)",
            {"name": name, "before": _ts(superseded_before)})
        orders = await self._exec(
            "UPDATE orders SET key_pem = NULL WHERE key_pem IS NOT NULL "
            "AND (:name IS NULL OR certificate = :name) AND (status = 'invalid' "
            "OR url IN (SELECT order_url FROM certificates WHERE order_url IS NOT NULL) "
            "OR rowid < (SELECT MAX(rowid) FROM orders o WHERE o.certificate = "
            "orders.certificate))",
            {"name": name})
        if certs or orders:
            await self._durable()
        return certs + orders

    async def destroy_keys(self, name: str) -> int:
        certs = await self._exec(
            "UPDATE certificates SET key_pem = '' WHERE name = ? AND key_pem <> ''", (name,))
        orders = await self._exec(
            "UPDATE orders SET key_pem = NULL WHERE certificate = ? AND key_pem IS NOT NULL",
            (name,))
        # an unfinished order is abandoned with its key: a re-added alias orders afresh
        await self._exec(
            "UPDATE orders SET status = 'invalid', error = 'abandoned: keys destroyed' "
            "WHERE certificate = ? AND status IN ('pending', 'ready', 'processing')", (name,))
        await self._exec("DELETE FROM challenges WHERE certificate = ?", (name,))
        if certs or orders:
            await self._durable()
        return certs + orders

    async def reseal(self) -> int:
        """Seal every private key under the key file's first key (plain ones, and those
        under an older key); returns how many rows changed. Runs at each open."""
        changed = await reseal_sql(self.sealer, lambda i: "?", self._all,
                                   lambda sql, args: self._exec(sql, args), self.transaction)
        if changed:  # the plain keys' pages out of the WAL, zeroed (secure_delete)
            await self._durable()
        return changed

    async def last_event_id(self) -> int:
        row = await self._one("SELECT COALESCE(MAX(id), 0) FROM events")
        return row[0]

    # leases
    async def acquire_lease(self, name: str, owner: str, until: datetime, now: datetime) -> bool:
        await self._exec(
            "INSERT INTO leases (name, owner, expires_at) VALUES (:n, :o, :u) "
            "ON CONFLICT(name) DO UPDATE SET owner = :o, expires_at = :u "
            "WHERE leases.owner = :o OR leases.expires_at <= :now",
            {"n": name, "o": owner, "u": _ts(until), "now": _ts(now)},
        )
        row = await self._one("SELECT owner FROM leases WHERE name = ?", (name,))
        return row is not None and row[0] == owner

    async def lease_holder(self, name: str, now: datetime) -> str | None:
        row = await self._one("SELECT owner FROM leases WHERE name = ? AND expires_at > ?",
                              (name, _ts(now)))
        return None if row is None else row[0]

    async def take_over_lease(self, name: str, old_owner: str, owner: str,
                              until: datetime) -> bool:
        """Take a lease from `old_owner` (known dead) if it still holds it."""
        changed = await self._exec(
            "UPDATE leases SET owner = ?, expires_at = ? WHERE name = ? AND owner = ?",
            (owner, _ts(until), name, old_owner),
        )
        return changed == 1

    async def extend_lease(self, name: str, owner: str, until: datetime) -> bool:
        changed = await self._exec("UPDATE leases SET expires_at = ? WHERE name = ? AND owner = ?",
                                   (_ts(until), name, owner))
        return changed == 1

    async def release_lease(self, name: str, owner: str) -> None:
        await self._exec("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    async def leases(self, now: datetime) -> list[tuple[str, str, datetime]]:
        rows = await self._all("SELECT name, owner, expires_at FROM leases "
                               "WHERE expires_at > ? ORDER BY name", (_ts(now),))
        return [(r["name"], r["owner"], _dt(r["expires_at"])) for r in rows]

    async def purge_leases(self, now: datetime) -> int:
        return await self._exec("DELETE FROM leases WHERE expires_at <= ?", (_ts(now),))

    # CAs cooling down (issue 14, item 2)
    async def set_issuer_cooldown(self, directory: str, until: datetime | None,
                                  reason: str = "") -> None:
        if until is None:
            await self._exec("DELETE FROM issuer_cooldowns WHERE directory = ?", (directory,))
            return
        await self._exec(
            "INSERT INTO issuer_cooldowns (directory, until, reason) VALUES (?, ?, ?) "
            "ON CONFLICT(directory) DO UPDATE SET until = excluded.until, "
            "reason = excluded.reason", (directory, _ts(until), reason))

    async def issuer_cooldowns(self, now: datetime) -> dict[str, tuple[datetime, str]]:
        rows = await self._all("SELECT directory, until, reason FROM issuer_cooldowns "
                               "WHERE until > ? ORDER BY directory", (_ts(now),))
        return {r["directory"]: (_dt(r["until"]), r["reason"]) for r in rows}

    # instances sharing the store (issue 13, item 7)
    async def heartbeat(self, instance: Instance, forget_before: datetime) -> None:
        async with self.transaction():
            await self._exec("DELETE FROM instances WHERE last_seen_at < ?",
                             (_ts(forget_before),))
            await self._exec(
                "INSERT INTO instances (id, host, pid, started_at, last_seen_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "last_seen_at = excluded.last_seen_at",
                (instance.id, instance.host, instance.pid, _ts(instance.started_at),
                 _ts(instance.last_seen_at)))

    async def instances(self) -> list[Instance]:
        rows = await self._all("SELECT * FROM instances ORDER BY id")
        return [Instance(r["id"], r["host"], r["pid"], _dt(r["started_at"]),
                         _dt(r["last_seen_at"])) for r in rows]

    async def remove_instance(self, instance_id: str) -> None:
        await self._exec("DELETE FROM instances WHERE id = ?", (instance_id,))

    # alerts (issue 6): one row per finding key. A sweep's writes are one statement each
    # over a JSON array (json_each): atomic, one round trip, and nothing else running on the
    # shared connection can interleave with them.
    async def active_alerts(self) -> list[Alert]:
        rows = await self._all("SELECT * FROM alerts WHERE resolved_at IS NULL ORDER BY key")
        return [ROWS.alert(r) for r in rows]

    async def put_alert(self, alert: Alert) -> None:
        await self.put_alerts([alert])

    async def put_alerts(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        rows = [
            [a.finding.key, a.finding.check, a.finding.severity.value, a.finding.domain,
             a.finding.node, a.finding.message, a.finding.certificate, a.finding.serial,
             _ts(a.finding.not_after), a.finding.days_remaining, _ts(a.first_seen),
             _ts(a.last_seen), _ts(a.notified_at),
             a.notified_severity.value if a.notified_severity else None, _ts(a.resolved_at)]
            for a in alerts
        ]
        columns = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(15))
        await self._exec(
            "INSERT OR REPLACE INTO alerts (key, check_id, severity, domain, node, message, "
            "certificate, serial, not_after, days_remaining, first_seen, last_seen, "
            f"notified_at, notified_severity, resolved_at) SELECT {columns} FROM json_each(?)",
            (json.dumps(rows),),
        )

    async def resolve_alerts(self, keys: list[str], at: datetime) -> None:
        if keys:
            await self._exec(
                "UPDATE alerts SET resolved_at = ? WHERE resolved_at IS NULL "
                "AND key IN (SELECT value FROM json_each(?))",
                (_ts(at), json.dumps(list(keys))),
            )

    async def purge_resolved(self, before: datetime) -> int:
        return await self._exec("DELETE FROM alerts WHERE resolved_at < ?", (_ts(before),))

    # Salt pull mode: one-shot bundle tokens. The take is one UPDATE ... RETURNING: atomic
    # against every other connection and process, so a token is spent exactly once.
    async def create_bundle_token(self, token_sha256: str, *, batch: str, minion: str,
                                  items: Sequence[tuple[str, str]], now: datetime,
                                  expires_at: datetime) -> None:
        await self._exec(
            "INSERT INTO bundle_tokens (token_sha256, batch, minion, items, created_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
            (token_sha256, batch, minion, json.dumps([list(i) for i in items]), _ts(now),
             _ts(expires_at)))

    async def take_bundle_token(self, token_sha256: str, batch: str, now: datetime
                                ) -> BundleGrant | None:
        # the batch's few digests compared in constant time here, not by the index lookup
        known = await self._all("SELECT token_sha256 FROM bundle_tokens WHERE batch = ?",
                                (batch,))
        match = matching_digest((r["token_sha256"] for r in known), token_sha256)
        if match is None:
            return None
        row = await self._one(
            "UPDATE bundle_tokens SET used_at = ? WHERE token_sha256 = ? AND batch = ? "
            "AND used_at IS NULL AND expires_at > ? RETURNING batch, minion, items",
            (_ts(now), match, batch, _ts(now)))
        if row is None:
            return None
        items = tuple((str(c), str(s)) for c, s in json.loads(row["items"]))
        return BundleGrant(row["batch"], row["minion"], items)

    async def expire_bundle_tokens(self, now: datetime, batch: str | None = None) -> int:
        return await self._exec(
            "DELETE FROM bundle_tokens WHERE expires_at <= ? OR batch = ?",
            (_ts(now), batch if batch is not None else ""))


def _unavailable(exc: Exception) -> bool:
    """The file cannot serve anyone now (StoreError.unavailable): its write lock held past
    the busy timeout, an I/O error, cannot be opened, disk full, read-only."""
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                            "SQLITE_FULL", "SQLITE_READONLY"))


def _reason(exc: Exception) -> str:
    """SQLite's words, with what they mean for an operator when they are terse."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith("SQLITE_BUSY"):
        return f"{exc} (another process held the write lock for over {BUSY_TIMEOUT:g} s)"
    if name.startswith("SQLITE_READONLY"):
        return f"{exc} (the file or its directory is read-only)"
    if name.startswith("SQLITE_CANTOPEN"):  # WAL mode also writes -wal and -shm beside it
        return f"{exc} (it, or its -wal and -shm files, cannot be opened for writing)"
    return str(exc)




_LATEST_CERTS = (
    "SELECT c.name, c.serial, c.domains, c.not_before, c.not_after, c.issued_at, "
    "c.fingerprint_sha256, c.issuer, c.profile FROM certificates c JOIN (SELECT name, MAX(id) AS id FROM "
    "certificates WHERE key_pem <> '' {where} GROUP BY name) latest ON c.id = latest.id"
)
