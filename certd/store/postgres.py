"""The shared store: PostgreSQL through asyncpg, for several certd instances on one database.

`storage: postgresql://certd@db.example:5432/certd` with `storage_password_file:` (a file, or
`$CREDENTIALS_DIRECTORY/NAME`), or a libpq `passfile` named in the URL. Connections, pools,
the password and units of work: certd/store/pg_pool.py; the schema: pg_schema.py.

Same contract as the SQLite store (certd/store/base.py), statement by statement:

- Leases, bundle tokens and alias adds are single statements whose row lock decides the race
  between instances (`INSERT ... ON CONFLICT ... WHERE`, `UPDATE ... RETURNING`).
- Event ids are drawn under a transaction-scoped advisory lock, so they commit in the order
  they were drawn and `events_since` never skips one committed late.
- `get_key_authorization` answers from the instance's challenge cache, which LISTEN/NOTIFY
  keeps fresh across instances (certd/store/pg_challenges.py); a token it does not hold is
  read through a pool of its own: never queued behind this process's writes (and in
  PostgreSQL a read never waits for another session's write lock).
- Orders keep their insertion order in `seq` (SQLite's rowid); names and domains that are
  listed in order compare as bytes (`COLLATE "C"`), as in SQLite.

Not like SQLite: PostgreSQL has no `secure_delete`. A wiped key's old row version stays in
the table file until VACUUM reuses its space, and in the WAL and its archives; keys
encrypted at rest (`storage_key_file`, certd/store/sealing.py) are the answer there: what
lingers of a key written after it was configured is ciphertext.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

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
from certd.store.pg_challenges import ChallengeCache
from certd.store.pg_pool import FAILURES, PgConnections
from certd.store.pg_schema import EVENTS_LOCK, LEDGER_LOCK
from certd.store.rows import (
    NATIVE,
    Mappers,
    collector_paused,
    overview_done,
    overview_into,
)
from certd.store.sealing import KeyRing, Sealer, reseal_sql

log = logging.getLogger(__name__)
ROWS = Mappers(NATIVE)  # stored rows back into model objects

PURGE_BATCH = 5000  # events deleted per statement by purge_events


def _ts(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    return dt


class PostgresStore(PgConnections):
    """Store on a PostgreSQL database (see the module's docstring)."""

    challenges: ChallengeCache | None = None  # while open

    def __init__(self, url: str, *, keyring: KeyRing | None = None, **options: object):
        super().__init__(url, **options)
        # private keys sealed at rest when a key file is configured (certd/store/sealing.py)
        self.sealer = Sealer(keyring, f"postgresql[{self.name}]")

    async def open(self) -> None:
        await super().open()
        try:
            resealed = await self.reseal()
        except BaseException:  # a key the file lacks, an outage: never leave a pool behind
            await super().close()
            raise
        if resealed:
            log.info("postgresql[%s]: %d private keys sealed under key %s", self.name,
                     resealed, self.sealer.keyring.primary)
        if self.api_worker:  # serves no challenges: no cache, no LISTEN connection
            return
        cache = ChallengeCache(self.name, self._new_connection)
        try:
            await cache.start()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, FAILURES):
                raise self._error(exc, "open: challenge cache: ") from exc
            raise
        self.challenges = cache

    async def close(self) -> None:
        cache, self.challenges = self.challenges, None
        if cache is not None:
            await cache.stop()
        await super().close()

    # -------------------------------------------------------------------- accounts

    async def get_account(self, directory: str) -> Account | None:
        row = await self._one("SELECT * FROM accounts WHERE directory = $1", directory)
        if row is None:
            return None
        return self.sealer.account_out(
            Account(row["directory"], row["uri"], row["key_pem"], row["created_at"]))

    async def save_account(self, account: Account) -> None:
        await self._exec(_SAVE_ACCOUNT, account.directory, account.uri,
                         self.sealer.account_in(account).key_pem,
                         _ts(account.created_at))

    # ------------------------------------------------------------------ challenges

    async def put_challenge(self, challenge: Challenge) -> None:
        c = challenge
        await self._exec(_PUT_CHALLENGE, c.token, c.key_authorization, c.certificate,
                         c.authorization_url, _ts(c.expires_at))
        self._wrote_challenge(c.token)

    async def get_key_authorization(self, token: str, now: datetime) -> str | None:
        """From this instance's challenge cache while it listens (no query); else, and for
        a token it does not hold, from the database; from the cache again if the database
        cannot answer (an outage) and the cache knows the token."""
        now = _ts(now)
        cache = self.challenges
        if cache is not None:
            known, answer = cache.answer(token, now)
            if known:
                return answer
        seen = cache.changes if cache is not None else 0
        try:
            row = await self._lookup("challenge lookup", _KEY_AUTHORIZATION, token)
        except StoreError:
            if cache is not None:
                known, answer = cache.answer(token, now, live_only=False)
                if known:
                    return answer
            raise
        if row is None:
            return None
        if cache is not None:
            cache.remember(token, row["key_authorization"], row["expires_at"], seen)
        return row["key_authorization"] if row["expires_at"] > now else None

    def _wrote_challenge(self, token: str) -> None:
        """This instance reads what it wrote: its cache forgets the token once committed
        (the notification that follows brings the new answer)."""
        cache = self.challenges
        if cache is not None:
            self._after_commit(lambda: cache.invalidate(token))

    async def delete_challenge(self, token: str) -> None:
        await self._exec("DELETE FROM challenges WHERE token = $1", token)
        self._wrote_challenge(token)

    async def purge_challenges(self, now: datetime) -> int:
        return await self._exec("DELETE FROM challenges WHERE expires_at <= $1", _ts(now))

    # ---------------------------------------------------------------- certificates

    async def add_certificate(self, cert: IssuedCertificate) -> IssuedCertificate:
        row = await self._one(
            "INSERT INTO certificates (name, serial, domains, not_before, not_after, "
            "cert_pem, chain_pem, key_pem, fingerprint_sha256, issued_at, order_url, issuer, "
            "profile) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
            "RETURNING id",
            cert.name, cert.serial, list(cert.domains), _ts(cert.not_before),
            _ts(cert.not_after), cert.cert_pem, cert.chain_pem,
            self.sealer.cert_in(cert).key_pem,
            cert.fingerprint_sha256, _ts(cert.issued_at), cert.order_url, cert.issuer,
            cert.profile)
        return replace(cert, id=row["id"])

    async def current_certificate(self, name: str) -> IssuedCertificate | None:
        # a row whose key was destroyed (a removed alias) is history, never current
        row = await self._one(
            "SELECT * FROM certificates WHERE name = $1 AND key_pem <> '' "
            "ORDER BY id DESC LIMIT 1", name)
        return None if row is None else self.sealer.cert_out(ROWS.certificate(row))

    async def certificate_history(self, name: str, limit: int = 20) -> list[IssuedCertificate]:
        rows = await self._all(
            "SELECT * FROM (SELECT * FROM certificates WHERE name = $1 ORDER BY id DESC "
            "LIMIT $2) recent ORDER BY id", name, limit)
        return [self.sealer.cert_out(ROWS.certificate(r)) for r in rows]

    # ----------------------------------------------------------------------- state

    async def get_state(self, name: str) -> CertificateState | None:
        row = await self._one("SELECT * FROM cert_state WHERE name = $1", name)
        return None if row is None else ROWS.state(row)

    async def put_state(self, state: CertificateState) -> None:
        s = state
        await self._exec(_PUT_STATE, s.name, s.status.value, s.last_error, s.attempts,
                         _ts(s.next_attempt_at), _ts(s.updated_at))

    # ---------------------------------------------------------------------- orders

    async def save_order(self, order: Order) -> None:
        o = order
        await self._exec(_SAVE_ORDER, o.url, o.certificate, o.status, _ts(o.created_at), o.error,
                         list(o.domains), self.sealer.order_in(o).key_pem, o.replaces)

    async def orders(self, certificate: str | None = None, limit: int = 100) -> list[Order]:
        rows = await self._all(
            "SELECT * FROM orders WHERE ($1::text IS NULL OR certificate = $1) "
            "ORDER BY created_at DESC, seq DESC LIMIT $2", certificate, limit)
        return [self.sealer.order_out(ROWS.order(r)) for r in rows]

    async def unfinished_orders(self) -> list[Order]:
        rows = await self._all(
            "SELECT * FROM (SELECT DISTINCT ON (certificate) * FROM orders "
            "ORDER BY certificate, seq DESC) latest "
            "WHERE status IN ('pending', 'ready', 'processing') "
            "OR (status = 'valid' AND key_pem IS NOT NULL) ORDER BY seq")
        return [self.sealer.order_out(ROWS.order(r)) for r in rows]

    # --------------------------------------------------------------------- aliases

    async def add_alias(self, alias: Alias) -> tuple[Alias, bool]:
        created = await self._exec(
            "INSERT INTO aliases (domain, frontends, created_by, created_at, validation, "
            "profile) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (domain) DO NOTHING",
            alias.domain, list(alias.frontends), alias.created_by, _ts(alias.created_at),
            alias.validation, alias.profile)
        return await self.get_alias(alias.domain), created == 1

    async def get_alias(self, domain: str) -> Alias | None:
        row = await self._one("SELECT * FROM aliases WHERE domain = $1", domain)
        return None if row is None else ROWS.alias(row)

    async def list_aliases(self, *, limit: int | None = None, after: str | None = None
                           ) -> list[Alias]:
        # LIMIT NULL is no limit; the column is COLLATE "C": byte order, as in SQLite
        with collector_paused():  # all of them, before every sweep (rows.collector_paused)
            if after is None:
                rows = await self._all("SELECT * FROM aliases ORDER BY domain LIMIT $1", limit)
            else:
                rows = await self._all("SELECT * FROM aliases WHERE domain > $1 ORDER BY domain "
                                       "LIMIT $2", after, limit)
            return [ROWS.alias(r) for r in rows]

    async def alias_statuses(self) -> dict[str, str]:
        return {r[0]: r[1] for r in await self._all(
            "SELECT a.domain, CASE WHEN a.removing THEN 'removing' "
            "ELSE COALESCE(s.status, 'pending') END FROM aliases a "
            "LEFT JOIN cert_state s ON s.name = a.domain")}

    async def mark_alias_removing(self, domain: str) -> None:
        await self._exec("UPDATE aliases SET removing = true WHERE domain = $1", domain)

    async def delete_alias(self, domain: str) -> None:
        await self._exec("DELETE FROM aliases WHERE domain = $1", domain)

    # ------------------------------------------------------------------------- ARI

    async def get_ari(self, name: str) -> AriState | None:
        row = await self._one("SELECT * FROM ari WHERE name = $1", name)
        return None if row is None else ROWS.ari(row)

    async def put_ari(self, ari: AriState) -> None:
        a = ari
        await self._exec(_PUT_ARI, a.name, a.serial, _ts(a.window_start), _ts(a.window_end),
                         _ts(a.renew_at), _ts(a.next_check_at), a.explanation_url,
                         _ts(a.checked_at))

    # ---------------------------------------------------------- the request ledger

    async def ledger_add(self, kind: str, keys: list[str], at: datetime) -> None:
        at = _ts(at)
        await self._many("INSERT INTO ledger (kind, key, at) VALUES ($1, $2, $3)",
                         [(kind, key, at) for key in keys])

    async def ledger_times(self, kind: str, key: str, since: datetime) -> list[datetime]:
        rows = await self._all(
            "SELECT at FROM ledger WHERE kind = $1 AND key = $2 AND at > $3 ORDER BY at",
            kind, key, _ts(since))
        return [r["at"] for r in rows]

    async def ledger_purge(self, before: datetime) -> int:
        return await self._exec("DELETE FROM ledger WHERE at <= $1", _ts(before))

    async def ledger_take(self, kind: str, key: str, at: datetime, *, since: datetime,
                          limit: int) -> datetime | None:
        # takers of one (kind, key) queue on a transaction-scoped advisory lock; the count
        # is a statement after it, so it sees what the one before committed (read committed)
        async with self.transaction():
            await self._exec("SELECT pg_advisory_xact_lock($1, hashtext($2 || '|' || $3))",
                             LEDGER_LOCK, kind, key)
            times = await self.ledger_times(kind, key, since)
            if len(times) >= limit:
                return times[len(times) - limit] if limit > 0 else at
            await self._exec("INSERT INTO ledger (kind, key, at) VALUES ($1, $2, $3)",
                             kind, key, _ts(at))
            return None

    async def change_stamp(self) -> int:
        # kept by the triggers of migration 4; one row, one index lookup
        row = await self._one("SELECT n FROM change_stamp")
        return row["n"]

    # ------------------------------------------------------------- the bulk reads

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
        if not names:
            return {}
        certs = {r["name"]: ROWS.summary(r) for r in await self._all(
            _LATEST_CERTS.format(where="AND name = ANY($1::text[])"), names)}
        states = {r["name"]: ROWS.state(r) for r in await self._all(
            "SELECT * FROM cert_state WHERE name = ANY($1::text[])", names)}
        aris = {r["name"]: ROWS.ari(r) for r in await self._all(
            "SELECT * FROM ari WHERE name = ANY($1::text[])", names)}
        deps: dict[str, list[Deployment]] = {}
        for r in await self._all("SELECT * FROM deployments WHERE certificate = ANY($1::text[]) "
                                 "ORDER BY certificate, frontend, node", names):
            deps.setdefault(r["certificate"], []).append(ROWS.deployment(r))
        return {name: CertDetails(certs.get(name), states.get(name), aris.get(name),
                                  tuple(deps.get(name, ()))) for name in names}

    # ----------------------------------------------------------------- deployments

    async def put_deployment(self, deployment: Deployment) -> None:
        d = deployment
        await self._exec(_PUT_DEPLOYMENT, d.certificate, d.frontend, d.node, d.serial,
                         d.status.value, d.message, _ts(d.updated_at), d.batch, d.seconds,
                         _ts(d.verified_at))

    async def deployments(self, certificate: str) -> list[Deployment]:
        rows = await self._all(
            "SELECT * FROM deployments WHERE certificate = $1 ORDER BY frontend, node",
            certificate)
        return [ROWS.deployment(r) for r in rows]

    # ---------------------------------------------------------------------- events

    async def add_event(self, event: Event) -> None:
        # the advisory lock is taken (by the CTE) before the row's id is drawn and held to
        # the commit: ids commit in order across every instance
        e = event
        await self._exec(
            "WITH turn AS (SELECT pg_advisory_xact_lock($1)) "
            "INSERT INTO events (at, kind, severity, certificate, node, message, data) "
            "SELECT $2::timestamptz, $3::text, $4::text, $5::text, $6::text, $7::text, "
            "$8::json FROM turn",
            EVENTS_LOCK, _ts(e.at), e.kind, e.severity.value, e.certificate, e.node,
            e.message, json.dumps(e.data))

    async def events(
        self, *, certificate: str | None = None, kind: str | None = None, limit: int = 100,
        before: int | None = None,
    ) -> list[Event]:
        rows = await self._all(
            "SELECT * FROM events WHERE ($1::text IS NULL OR certificate = $1) "
            "AND ($2::text IS NULL OR kind = $2) AND ($4::bigint IS NULL OR id < $4) "
            "ORDER BY id DESC LIMIT $3",
            certificate, kind, limit, before)
        return [ROWS.event(r) for r in rows]

    async def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        rows = await self._all("SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                               after_id, limit)
        return [ROWS.event(r) for r in rows]

    async def event_counts(self) -> dict[str, int]:
        # kept by the events_counted trigger: one row per kind, not a scan
        return {r["kind"]: r["count"] for r in await self._all(
            "SELECT kind, count FROM event_counts")}

    async def purge_events(self, before: datetime) -> int:
        # in batches, so no statement holds many row locks for long; the newest event
        # always stays, as in SQLite (there it keeps ids from going backwards)
        total = 0
        while True:
            n = await self._exec(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < $1 "
                "AND id < (SELECT MAX(id) FROM events) ORDER BY id LIMIT $2)",
                _ts(before), PURGE_BATCH)
            total += n
            if n < PURGE_BATCH:
                return total

    async def last_event_id(self) -> int:
        row = await self._one("SELECT COALESCE(MAX(id), 0) AS id FROM events")
        return row["id"]

    # ------------------------------------------- retention of private keys (issue 10)

    async def wipe_keys(self, name: str | None = None, *,
                        superseded_before: datetime) -> int:
        certs = await self._exec(
            "UPDATE certificates c SET key_pem = '' WHERE c.key_pem <> '' "
            "AND ($1::text IS NULL OR c.name = $1) AND EXISTS (SELECT 1 FROM certificates n "
            "WHERE n.name = c.name AND n.id > c.id AND n.key_pem <> '' "
            "AND n.issued_at <= $2)",
            name, _ts(superseded_before))
        orders = await self._exec(
            "UPDATE orders o SET key_pem = NULL WHERE o.key_pem IS NOT NULL "
            "AND ($1::text IS NULL OR o.certificate = $1) AND (o.status = 'invalid' "
            "OR EXISTS (SELECT 1 FROM certificates c WHERE c.order_url = o.url) "
            "OR o.seq < (SELECT MAX(l.seq) FROM orders l WHERE l.certificate = o.certificate))",
            name)
        return certs + orders

    async def destroy_keys(self, name: str) -> int:
        async with self.transaction():
            certs = await self._exec(
                "UPDATE certificates SET key_pem = '' WHERE name = $1 AND key_pem <> ''", name)
            orders = await self._exec(
                "UPDATE orders SET key_pem = NULL WHERE certificate = $1 "
                "AND key_pem IS NOT NULL", name)
            # an unfinished order is abandoned with its key: a re-added alias orders afresh
            await self._exec(
                "UPDATE orders SET status = 'invalid', error = 'abandoned: keys destroyed' "
                "WHERE certificate = $1 AND status IN ('pending', 'ready', 'processing')", name)
            for r in await self._all("DELETE FROM challenges WHERE certificate = $1 "
                                     "RETURNING token", name):
                self._wrote_challenge(r["token"])
        return certs + orders

    # ---------------------------------------------------------------------- leases

    async def acquire_lease(self, name: str, owner: str, until: datetime, now: datetime) -> bool:
        # one statement: the row lock of the upsert decides between instances; a row comes
        # back only if this owner inserted, extended, or took over an expired lease
        row = await self._one(
            "INSERT INTO leases (name, owner, expires_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
            "expires_at = excluded.expires_at "
            "WHERE leases.owner = excluded.owner OR leases.expires_at <= $4 RETURNING owner",
            name, owner, _ts(until), _ts(now))
        return row is not None

    async def lease_holder(self, name: str, now: datetime) -> str | None:
        row = await self._one("SELECT owner FROM leases WHERE name = $1 AND expires_at > $2",
                              name, _ts(now))
        return None if row is None else row["owner"]

    async def take_over_lease(self, name: str, old_owner: str, owner: str,
                              until: datetime) -> bool:
        changed = await self._exec(
            "UPDATE leases SET owner = $1, expires_at = $2 WHERE name = $3 AND owner = $4",
            owner, _ts(until), name, old_owner)
        return changed == 1

    async def extend_lease(self, name: str, owner: str, until: datetime) -> bool:
        # the UPDATE's row lock lasts until the unit of work (if any) commits: a take-over
        # or an acquire by another owner waits for it, then sees this owner's new expiry
        changed = await self._exec(
            "UPDATE leases SET expires_at = $1 WHERE name = $2 AND owner = $3",
            _ts(until), name, owner)
        return changed == 1

    async def release_lease(self, name: str, owner: str) -> None:
        await self._exec("DELETE FROM leases WHERE name = $1 AND owner = $2", name, owner)

    async def leases(self, now: datetime) -> list[tuple[str, str, datetime]]:
        rows = await self._all("SELECT name, owner, expires_at FROM leases "
                               "WHERE expires_at > $1 ORDER BY name", _ts(now))
        return [(r["name"], r["owner"], r["expires_at"]) for r in rows]

    async def purge_leases(self, now: datetime) -> int:
        return await self._exec("DELETE FROM leases WHERE expires_at <= $1", _ts(now))

    # ------------------------------------------------------------ CAs cooling down

    async def set_issuer_cooldown(self, directory: str, until: datetime | None,
                                  reason: str = "") -> None:
        if until is None:
            await self._exec("DELETE FROM issuer_cooldowns WHERE directory = $1", directory)
            return
        await self._exec(
            "INSERT INTO issuer_cooldowns (directory, until, reason) VALUES ($1, $2, $3) "
            "ON CONFLICT (directory) DO UPDATE SET until = excluded.until, "
            "reason = excluded.reason", directory, _ts(until), reason)

    async def issuer_cooldowns(self, now: datetime) -> dict[str, tuple[datetime, str]]:
        rows = await self._all("SELECT directory, until, reason FROM issuer_cooldowns "
                               "WHERE until > $1 ORDER BY directory", _ts(now))
        return {r["directory"]: (r["until"], r["reason"]) for r in rows}

    # ---------------------------------------------------------------------- instances

    async def heartbeat(self, instance: Instance, forget_before: datetime) -> None:
        async with self.transaction():
            await self._exec("DELETE FROM instances WHERE last_seen_at < $1",
                             _ts(forget_before))
            await self._exec(
                "INSERT INTO instances (id, host, pid, started_at, last_seen_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET "
                "last_seen_at = excluded.last_seen_at",
                instance.id, instance.host, instance.pid, _ts(instance.started_at),
                _ts(instance.last_seen_at))

    async def instances(self) -> list[Instance]:
        rows = await self._all("SELECT * FROM instances ORDER BY id")
        return [Instance(r["id"], r["host"], r["pid"], r["started_at"], r["last_seen_at"])
                for r in rows]

    async def remove_instance(self, instance_id: str) -> None:
        await self._exec("DELETE FROM instances WHERE id = $1", instance_id)

    # ---------------------------------------------------------------------- alerts

    async def active_alerts(self) -> list[Alert]:
        rows = await self._all("SELECT * FROM alerts WHERE resolved_at IS NULL ORDER BY key")
        return [ROWS.alert(r) for r in rows]

    async def put_alert(self, alert: Alert) -> None:
        await self.put_alerts([alert])

    async def put_alerts(self, alerts: list[Alert]) -> None:
        await self._many(_PUT_ALERT, [
            (a.finding.key, a.finding.check, a.finding.severity.value, a.finding.domain,
             a.finding.node, a.finding.message, a.finding.certificate, a.finding.serial,
             _ts(a.finding.not_after), a.finding.days_remaining, _ts(a.first_seen),
             _ts(a.last_seen), _ts(a.notified_at),
             a.notified_severity.value if a.notified_severity else None, _ts(a.resolved_at))
            for a in alerts])

    async def resolve_alerts(self, keys: list[str], at: datetime) -> None:
        if keys:
            await self._exec(
                "UPDATE alerts SET resolved_at = $1 WHERE resolved_at IS NULL "
                "AND key = ANY($2::text[])", _ts(at), list(keys))

    async def purge_resolved(self, before: datetime) -> int:
        return await self._exec("DELETE FROM alerts WHERE resolved_at < $1", _ts(before))

    # ------------------------------------------------- Salt pull mode: bundle tokens

    async def create_bundle_token(self, token_sha256: str, *, batch: str, minion: str,
                                  items: Sequence[tuple[str, str]], now: datetime,
                                  expires_at: datetime) -> None:
        await self._exec(
            "INSERT INTO bundle_tokens (token_sha256, batch, minion, items, created_at, "
            "expires_at) VALUES ($1, $2, $3, $4::json, $5, $6)",
            token_sha256, batch, minion, json.dumps([list(i) for i in items]), _ts(now),
            _ts(expires_at))

    async def take_bundle_token(self, token_sha256: str, batch: str, now: datetime
                                ) -> BundleGrant | None:
        now = _ts(now)
        # the batch's few digests compared in constant time here, not by the index lookup
        known = await self._all("SELECT token_sha256 FROM bundle_tokens WHERE batch = $1",
                                batch)
        match = matching_digest((r["token_sha256"] for r in known), token_sha256)
        if match is None:
            return None
        # one UPDATE: of concurrent takes, the row lock lets one through; the others see
        # used_at set when they get the row and match nothing
        row = await self._one(
            "UPDATE bundle_tokens SET used_at = $1 WHERE token_sha256 = $2 AND batch = $3 "
            "AND used_at IS NULL AND expires_at > $1 RETURNING batch, minion, items",
            now, match, batch)
        if row is None:
            return None
        items = tuple((str(c), str(s)) for c, s in json.loads(row["items"]))
        return BundleGrant(row["batch"], row["minion"], items)

    async def reseal(self) -> int:
        """Seal every private key under the key file's first key (plain ones, and those
        under an older key); returns how many rows changed. Runs at each open."""
        return await reseal_sql(self.sealer, lambda i: f"${i}",
                                lambda sql, args: self._all(sql, *args),
                                lambda sql, args: self._exec(sql, *args), self.transaction)

    async def expire_bundle_tokens(self, now: datetime, batch: str | None = None) -> int:
        return await self._exec(
            "DELETE FROM bundle_tokens WHERE expires_at <= $1 OR batch = $2",
            _ts(now), batch if batch is not None else "")


# expired or not: the cache keeps the expiry and compares it at each answer
_KEY_AUTHORIZATION = "SELECT key_authorization, expires_at FROM challenges WHERE token = $1"

_LATEST_CERTS = (
    "SELECT DISTINCT ON (name) name, serial, domains, not_before, not_after, issued_at, "
    "fingerprint_sha256, issuer, profile FROM certificates WHERE key_pem <> '' {where} "
    "ORDER BY name, id DESC"
)

def _upsert(table: str, columns: str, key: str, keep: str = "") -> str:
    """INSERT of every column in `columns` (in order: $1, $2, ...), or, for a row with the
    same `key`, an UPDATE of every column not in `key` nor in `keep`."""
    cols = columns.split()
    fixed = set(key.split()) | set(keep.split())
    marks = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in fixed)
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(key.split())}) DO UPDATE SET {sets}")


# saving an account again keeps its creation time; an order keeps what it was placed with
_SAVE_ACCOUNT = _upsert("accounts", "directory uri key_pem created_at", "directory",
                        keep="created_at")
_PUT_CHALLENGE = _upsert("challenges",
                         "token key_authorization certificate authorization_url expires_at",
                         "token")
_PUT_STATE = _upsert("cert_state",
                     "name status last_error attempts next_attempt_at updated_at", "name")
_SAVE_ORDER = _upsert("orders",
                      "url certificate status created_at error domains key_pem replaces", "url",
                      keep="certificate created_at domains replaces")
_PUT_ARI = _upsert("ari", "name serial window_start window_end renew_at next_check_at "
                   "explanation_url checked_at", "name")
_PUT_DEPLOYMENT = _upsert("deployments", "certificate frontend node serial status message "
                          "updated_at batch seconds verified_at", "certificate frontend node")
_PUT_ALERT = _upsert("alerts", "key check_id severity domain node message certificate serial "
                     "not_after days_remaining first_seen last_seen notified_at "
                     "notified_severity resolved_at", "key")
