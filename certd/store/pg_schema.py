"""The PostgreSQL store's versioned schema and how it is applied.

Its own numbering, not SQLite's (certd/store/migrations.py): PostgreSQL gets native types —
`timestamptz` for times, identity columns for ids and insertion order, `text[]` for lists,
`json` (kept as written, keys in their order) for event data and token items — so the SQL
cannot be shared. Version 1 is the whole of what SQLite reached in its seven steps. Append a
new list of statements; never edit a released one.

The applied versions are rows of `schema_version`. Each step runs in one transaction with
its row (PostgreSQL's DDL is transactional: a failed step leaves nothing), under an advisory
lock, so several certd instances starting together apply it once. A database at a version
this certd does not know is refused (`newer_schema`), never touched.

Names, domains and keys that the API lists in order are `COLLATE "C"` (byte order, as in
SQLite), so a page cursor means the same whatever the database's locale.
"""

from __future__ import annotations

import asyncpg

from certd.store.migrations import newer_schema

# pg_advisory_xact_lock key held while a step runs ('certd' + 'mig' as bytes)
MIGRATION_LOCK = 0x6365727464_6D6967
# pg_advisory_xact_lock key that every event insert takes before its id is drawn, so ids
# commit in the order they were drawn: a reader following ids (events_since) never skips an
# event that a slower transaction commits later
EVENTS_LOCK = 0x6365727464_657674
# first key of the pg_advisory_xact_lock(int, int) pair that Store.ledger_take holds while it
# counts and records an entry (the second: a hash of the entry's kind and key); the two-key
# form's locks never collide with the one-key ones above ('cLdg' as bytes)
LEDGER_LOCK = 0x634C6467

MIGRATIONS: list[list[str]] = [
    [  # 1: everything SQLite's migrations 1-7 made
        """CREATE TABLE accounts (
            directory text PRIMARY KEY,
            uri text NOT NULL,
            key_pem text NOT NULL,
            created_at timestamptz NOT NULL)""",
        """CREATE TABLE certificates (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text COLLATE "C" NOT NULL,
            serial text NOT NULL,
            domains text[] NOT NULL,
            not_before timestamptz NOT NULL,
            not_after timestamptz NOT NULL,
            cert_pem text NOT NULL,
            chain_pem text NOT NULL,
            key_pem text NOT NULL,
            fingerprint_sha256 text NOT NULL,
            issued_at timestamptz NOT NULL,
            order_url text)""",
        "CREATE INDEX certificates_by_name ON certificates (name, id)",
        "CREATE INDEX certificates_by_order ON certificates (order_url)",
        """CREATE TABLE cert_state (
            name text COLLATE "C" PRIMARY KEY,
            status text NOT NULL,
            last_error text,
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz,
            updated_at timestamptz NOT NULL)""",
        # seq: insertion order (SQLite's rowid), which an upsert by url keeps
        """CREATE TABLE orders (
            url text PRIMARY KEY,
            seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
            certificate text COLLATE "C" NOT NULL,
            status text NOT NULL,
            created_at timestamptz NOT NULL,
            error text,
            domains text[] NOT NULL DEFAULT '{}',
            key_pem text,
            replaces text)""",
        "CREATE INDEX orders_by_certificate ON orders (certificate, seq)",
        "CREATE INDEX orders_by_created ON orders (created_at, seq)",
        """CREATE TABLE challenges (
            token text PRIMARY KEY,
            key_authorization text NOT NULL,
            certificate text NOT NULL,
            authorization_url text NOT NULL,
            expires_at timestamptz NOT NULL)""",
        "CREATE INDEX challenges_by_certificate ON challenges (certificate)",
        """CREATE TABLE deployments (
            certificate text COLLATE "C" NOT NULL,
            frontend text COLLATE "C" NOT NULL,
            node text COLLATE "C" NOT NULL,
            serial text NOT NULL,
            status text NOT NULL,
            message text NOT NULL,
            updated_at timestamptz NOT NULL,
            batch text NOT NULL DEFAULT '',
            seconds double precision,
            PRIMARY KEY (certificate, frontend, node))""",
        """CREATE TABLE events (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at timestamptz NOT NULL,
            kind text NOT NULL,
            severity text NOT NULL,
            certificate text,
            node text,
            message text NOT NULL,
            data json NOT NULL)""",
        "CREATE INDEX events_by_certificate ON events (certificate, id)",
        "CREATE INDEX events_by_at ON events (at)",
        # the /metrics counters, kept in the transaction of each insert by a trigger, never
        # lowered by a purge (Prometheus counters only go up)
        """CREATE TABLE event_counts (
            kind text PRIMARY KEY,
            count bigint NOT NULL)""",
        """CREATE FUNCTION certd_count_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO event_counts (kind, count) VALUES (NEW.kind, 1)
            ON CONFLICT (kind) DO UPDATE SET count = event_counts.count + 1;
            RETURN NULL;
        END $$""",
        """CREATE TRIGGER events_counted AFTER INSERT ON events
            FOR EACH ROW EXECUTE FUNCTION certd_count_event()""",
        """CREATE TABLE leases (
            name text PRIMARY KEY,
            owner text NOT NULL,
            expires_at timestamptz NOT NULL)""",
        """CREATE TABLE ari (
            name text COLLATE "C" PRIMARY KEY,
            serial text NOT NULL,
            window_start timestamptz,
            window_end timestamptz,
            renew_at timestamptz,
            next_check_at timestamptz NOT NULL,
            explanation_url text,
            checked_at timestamptz NOT NULL)""",
        """CREATE TABLE ledger (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind text NOT NULL,
            key text NOT NULL,
            at timestamptz NOT NULL)""",
        "CREATE INDEX ledger_by_key ON ledger (kind, key, at)",
        "CREATE INDEX ledger_by_at ON ledger (at)",
        """CREATE TABLE aliases (
            domain text COLLATE "C" PRIMARY KEY,
            frontends text[] NOT NULL,
            created_by text NOT NULL,
            created_at timestamptz NOT NULL,
            removing boolean NOT NULL DEFAULT false)""",
        """CREATE TABLE alerts (
            key text COLLATE "C" PRIMARY KEY,
            check_id text NOT NULL,
            severity text NOT NULL,
            domain text NOT NULL,
            node text NOT NULL,
            message text NOT NULL,
            certificate text,
            serial text,
            not_after timestamptz,
            days_remaining double precision,
            first_seen timestamptz NOT NULL,
            last_seen timestamptz NOT NULL,
            notified_at timestamptz,
            notified_severity text,
            resolved_at timestamptz)""",
        "CREATE INDEX alerts_by_resolved ON alerts (resolved_at)",
        # Salt pull mode: one-shot tokens stored as their SHA-256 only; `items` is a JSON
        # list of [certificate, serial] (a token row never holds key material)
        """CREATE TABLE bundle_tokens (
            token_sha256 text PRIMARY KEY,
            batch text NOT NULL,
            minion text NOT NULL,
            items json NOT NULL,
            created_at timestamptz NOT NULL,
            expires_at timestamptz NOT NULL,
            used_at timestamptz)""",
        "CREATE INDEX bundle_tokens_by_batch ON bundle_tokens (batch)",
        "CREATE INDEX bundle_tokens_by_expiry ON bundle_tokens (expires_at)",
    ],
    [  # 2: challenge answers across instances (issue 13, item 2; certd/store/pg_challenges.py)
        # each put or delete of a challenge is announced at its commit, with what a responder
        # needs to answer it (the expiry as epoch seconds: no time zone to read)
        """CREATE FUNCTION certd_announce_challenge() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('certd_challenges', json_build_object(
                    'token', OLD.token)::text);
            ELSE
                PERFORM pg_notify('certd_challenges', json_build_object(
                    'token', NEW.token, 'key_authorization', NEW.key_authorization,
                    'expires_at', extract(epoch FROM NEW.expires_at))::text);
            END IF;
            RETURN NULL;
        END $$""",
        """CREATE TRIGGER challenges_announced AFTER INSERT OR UPDATE OR DELETE ON challenges
            FOR EACH ROW EXECUTE FUNCTION certd_announce_challenge()""",
    ],
    [  # 3: instances sharing the database (issue 13, item 7) — one heartbeat row each
        """CREATE TABLE instances (
            id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at timestamptz NOT NULL,
            last_seen_at timestamptz NOT NULL)""",
    ],
    [  # 4: the change stamp (issue 13) — the API's rendered reads are cached against it
        # (certd/api/cache.py). A row trigger bumps it in the transaction of every write to
        # what an alias or certificate view shows, whichever instance or code path writes.
        # The trigger is deferred to commit and bumps once per transaction: the stamp's row
        # lock is the last lock a writer takes and is held only while it commits (no
        # deadlock with another writer's row locks, no queue behind a long unit of work)
        """CREATE TABLE change_stamp (
            one boolean PRIMARY KEY DEFAULT true CHECK (one),
            n bigint NOT NULL)""",
        "INSERT INTO change_stamp (n) VALUES (0)",
        """CREATE FUNCTION certd_bump_change_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF coalesce(current_setting('certd.stamped', true), '') <> txid_current()::text
            THEN
                UPDATE change_stamp SET n = n + 1;
                PERFORM set_config('certd.stamped', txid_current()::text, true);
            END IF;
            RETURN NULL;
        END $$""",
        *(f"""CREATE CONSTRAINT TRIGGER {table}_stamped AFTER INSERT OR UPDATE OR DELETE
            ON {table} DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION certd_bump_change_stamp()"""
          for table in ("aliases", "certificates", "cert_state", "ari", "deployments",
                        "accounts")),  # accounts: a dns-persist alias shows its TXT record
    ],
    [  # 5: how the CA validates an alias (issue 14, item 4): 'http-01' | 'dns-persist'
        "ALTER TABLE aliases ADD COLUMN validation text NOT NULL DEFAULT 'http-01'",
    ],
    [  # 6: which CA issued each certificate (issue 14, item 2): its directory URL; NULL
        # for one stored before (the single CA of the time) or imported
        "ALTER TABLE certificates ADD COLUMN issuer text",
    ],
    [  # 7: ACME profiles (issue 14, item 1): the profile a certificate was ordered with,
        # and the one an alias asks for; NULL: none
        "ALTER TABLE certificates ADD COLUMN profile text",
        "ALTER TABLE aliases ADD COLUMN profile text",
    ],
    [  # 8: a deployment's verification as a stored fact, not its message text: when
        # the rollout saw the node serve the deployed serial; NULL: not verified
        "ALTER TABLE deployments ADD COLUMN verified_at timestamptz",
    ],
    [  # 9: CAs cooling down (issue 14, item 2): every instance sharing the database skips them
        """CREATE TABLE issuer_cooldowns (
            directory text PRIMARY KEY,
            until timestamptz NOT NULL,
            reason text NOT NULL)""",
    ],
]

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now())"""


class SchemaTooNew(Exception):
    """The database is at a version this certd does not know (the message says so)."""


async def schema_version(conn: asyncpg.Connection) -> int:
    """The database's schema version: 0 for an empty one."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")


async def migrate(conn: asyncpg.Connection, migrations: list[list[str]] = MIGRATIONS) -> int:
    """Bring the database up to `len(migrations)`, one transaction per step; returns the
    version it is at. Raises SchemaTooNew for a newer database. Safe to run from several
    instances at once (the advisory lock; each re-reads the version under it)."""
    version = await schema_version(conn)
    refused = newer_schema(version, known=len(migrations))
    if refused:
        raise SchemaTooNew(refused)
    while version < len(migrations):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(_VERSION_TABLE)
            version = await schema_version(conn)  # another instance may have gone first
            refused = newer_schema(version, known=len(migrations))
            if refused:
                raise SchemaTooNew(refused)
            if version >= len(migrations):
                break
            for statement in migrations[version]:
                await conn.execute(statement)
            version += 1
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    return version
