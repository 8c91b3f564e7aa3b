"""Versioned schema. Append a new list of statements; never edit a released one.

The SQLite store's; the PostgreSQL store numbers its own, in native types (pg_schema.py).
Times are ISO-8601 UTC text with microseconds, which sorts like the times themselves.
"""


def newer_schema(version: int, known: int | None = None) -> str | None:
    """Why this certd must not touch a store at schema `version` (None if it may): a
    downgrade is refused, never attempted. Said at open and at restore. `known`: the newest
    version this certd has (default: SQLite's; the PostgreSQL store numbers its own)."""
    known = len(MIGRATIONS) if known is None else known
    if version <= known:
        return None
    return (f"store schema {version} is newer than this certd (knows up to {known}): "
            "upgrade certd or restore a backup taken by this version")


MIGRATIONS: list[list[str]] = [
    [  # 1: the core tables
        """CREATE TABLE accounts (
            directory TEXT PRIMARY KEY,
            uri TEXT NOT NULL,
            key_pem TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE certificates (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            serial TEXT NOT NULL,
            domains TEXT NOT NULL,
            not_before TEXT NOT NULL,
            not_after TEXT NOT NULL,
            cert_pem TEXT NOT NULL,
            chain_pem TEXT NOT NULL,
            key_pem TEXT NOT NULL,
            fingerprint_sha256 TEXT NOT NULL,
            issued_at TEXT NOT NULL,
            order_url TEXT)""",
        "CREATE INDEX certificates_by_name ON certificates (name, id)",
        """CREATE TABLE cert_state (
            name TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            last_error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            updated_at TEXT NOT NULL)""",
        """CREATE TABLE orders (
            url TEXT PRIMARY KEY,
            certificate TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            error TEXT)""",
        "CREATE INDEX orders_by_certificate ON orders (certificate, created_at)",
        """CREATE TABLE challenges (
            token TEXT PRIMARY KEY,
            key_authorization TEXT NOT NULL,
            certificate TEXT NOT NULL,
            authorization_url TEXT NOT NULL,
            expires_at TEXT NOT NULL)""",
        """CREATE TABLE deployments (
            certificate TEXT NOT NULL,
            frontend TEXT NOT NULL,
            node TEXT NOT NULL,
            serial TEXT NOT NULL,
            status TEXT NOT NULL,
            message TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (certificate, frontend, node))""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            severity TEXT NOT NULL,
            certificate TEXT,
            node TEXT,
            message TEXT NOT NULL,
            data TEXT NOT NULL)""",
        "CREATE INDEX events_by_certificate ON events (certificate, id)",
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at TEXT NOT NULL)""",
    ],
    [  # 2: renewal — ARI windows, the request ledger, resumable orders
        """CREATE TABLE ari (
            name TEXT PRIMARY KEY,
            serial TEXT NOT NULL,
            window_start TEXT,
            window_end TEXT,
            renew_at TEXT,
            next_check_at TEXT NOT NULL,
            explanation_url TEXT,
            checked_at TEXT NOT NULL)""",
        """CREATE TABLE ledger (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            at TEXT NOT NULL)""",
        "CREATE INDEX ledger_by_key ON ledger (kind, key, at)",
        "ALTER TABLE orders ADD COLUMN domains TEXT",
        "ALTER TABLE orders ADD COLUMN key_pem TEXT",
        "ALTER TABLE orders ADD COLUMN replaces TEXT",
    ],
    [  # 3: custom-domain aliases added through the API
        """CREATE TABLE aliases (
            domain TEXT PRIMARY KEY,
            frontends TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            removing INTEGER NOT NULL DEFAULT 0)""",
    ],
    [  # 4: alerting state, one row per finding key (check|domain|node)
        """CREATE TABLE alerts (
            key TEXT PRIMARY KEY,
            check_id TEXT NOT NULL,
            severity TEXT NOT NULL,
            domain TEXT NOT NULL,
            node TEXT NOT NULL,
            message TEXT NOT NULL,
            certificate TEXT,
            serial TEXT,
            not_after TEXT,
            days_remaining REAL,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            notified_at TEXT,
            notified_severity TEXT,
            resolved_at TEXT)""",
        "CREATE INDEX alerts_by_resolved ON alerts (resolved_at)",
    ],
    [  # 5: retention (issue 10) — event counters kept by a trigger, purge by time
        # /metrics reads these instead of a GROUP BY over every event; purging events never
        # touches them (Prometheus counters only go up).
        """CREATE TABLE event_counts (
            kind TEXT PRIMARY KEY,
            count INTEGER NOT NULL)""",
        "INSERT INTO event_counts (kind, count) SELECT kind, COUNT(*) FROM events GROUP BY kind",
        # In the same transaction as the insert, for every process sharing the file. The
        # upsert is the same in PostgreSQL; the trigger wrapper is not (PostgreSQL needs a
        # plpgsql function and `CREATE TRIGGER ... FOR EACH ROW EXECUTE FUNCTION`): the
        # PostgreSQL store will carry its own statement for this one.
        """CREATE TRIGGER events_counted AFTER INSERT ON events
        BEGIN
            INSERT INTO event_counts (kind, count) VALUES (NEW.kind, 1)
            ON CONFLICT (kind) DO UPDATE SET count = event_counts.count + 1;
        END""",
        "CREATE INDEX events_by_at ON events (at)",
    ],
    [  # 6: batched rollout (issue 11) — the batch a deployment went out in, how long it took
        "ALTER TABLE deployments ADD COLUMN batch TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE deployments ADD COLUMN seconds REAL",
    ],
    [  # 7: Salt pull mode (issue 11) — one-shot bundle tokens, stored as their SHA-256 only.
        # `items` is a JSON list of [certificate, serial]: what the minion's bundle holds
        # (the keys stay in `certificates`; a token row never holds key material).
        """CREATE TABLE bundle_tokens (
            token_sha256 TEXT PRIMARY KEY,
            batch TEXT NOT NULL,
            minion TEXT NOT NULL,
            items TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT)""",
        "CREATE INDEX bundle_tokens_by_batch ON bundle_tokens (batch)",
        "CREATE INDEX bundle_tokens_by_expiry ON bundle_tokens (expires_at)",
    ],
    [  # 8: instances sharing the store (issue 13, item 7) — one heartbeat row each
        """CREATE TABLE instances (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            last_seen_at TEXT NOT NULL)""",
    ],
    [  # 9: the change stamp (issue 13) — the API's rendered reads are cached against it
        # (certd/api/cache.py). Bumped by triggers in the transaction of every write to what
        # an alias or certificate view shows, whichever process or code path writes.
        "CREATE TABLE change_stamp (one INTEGER PRIMARY KEY CHECK (one = 1), n INTEGER NOT NULL)",
        "INSERT INTO change_stamp (one, n) VALUES (1, 0)",
        *(f"""CREATE TRIGGER {table}_{op.lower()}_stamped AFTER {op} ON {table}
            BEGIN UPDATE change_stamp SET n = n + 1; END"""
          for table in ("aliases", "certificates", "cert_state", "ari", "deployments",
                        "accounts")  # accounts: a dns-persist alias shows its TXT record
          for op in ("INSERT", "UPDATE", "DELETE")),
    ],
    [  # 10: how the CA validates an alias (issue 14, item 4): "http-01" | "dns-persist"
        "ALTER TABLE aliases ADD COLUMN validation TEXT NOT NULL DEFAULT 'http-01'",
    ],
    [  # 11: which CA issued each certificate (issue 14, item 2): its directory URL; NULL
        # for one stored before (the single CA of the time) or imported
        "ALTER TABLE certificates ADD COLUMN issuer TEXT",
    ],
    [  # 12: ACME profiles (issue 14, item 1): the profile a certificate was ordered with,
        # and the one an alias asks for; NULL: none
        "ALTER TABLE certificates ADD COLUMN profile TEXT",
        "ALTER TABLE aliases ADD COLUMN profile TEXT",
    ],
    [  # 13: a deployment's verification as a stored fact, not its message text: when
        # the rollout saw the node serve the deployed serial; NULL: not verified
        "ALTER TABLE deployments ADD COLUMN verified_at TEXT",
    ],
    [  # 14: CAs cooling down (issue 14, item 2): every process sharing the store skips them
        """CREATE TABLE issuer_cooldowns (
            directory TEXT PRIMARY KEY,
            until TEXT NOT NULL,
            reason TEXT NOT NULL)""",
    ],
]
