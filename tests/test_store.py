"""certd/store/sqlite.py: what only the SQLite store has — its file (modes, WAL, a file it
cannot use), its migrations, another process writing plain SQL, key bytes gone from the file.
What every store must do is tests/test_store_contract.py, run against SQLite too."""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import timedelta

import pytest

from certd.errors import StoreError
from certd.model import Event, Order
from certd.store.migrations import MIGRATIONS
from certd.store.sqlite import SqliteStore
from tests.test_store_contract import T0, cert, keyed, pem_body

__all__ = ["T0", "cert"]  # tests/test_backup.py takes them from here


# --- schema, files ---------------------------------------------------------------------

async def test_migrations_create_the_schema(tmp_path):
    path = tmp_path / "certd.db"
    s = SqliteStore(path)
    await s.open()
    await s.close()
    with sqlite3.connect(path) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert version == len(MIGRATIONS)
    assert {"accounts", "certificates", "cert_state", "orders", "challenges", "deployments",
            "events", "leases"} <= tables


async def test_reopen_is_idempotent_and_keeps_data(tmp_path):
    path = tmp_path / "certd.db"
    s = SqliteStore(path)
    await s.open()
    await s.add_certificate(cert())
    await s.close()
    for _ in range(2):
        s = SqliteStore(path)
        await s.open()
        try:
            assert (await s.current_certificate("portal")).serial == "0a"
        finally:
            await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_migrates_a_version_1_database(tmp_path):
    """A file written by the first release: every later migration applies, data survives."""
    path = tmp_path / "certd.db"
    with sqlite3.connect(path) as db:
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("PRAGMA user_version=1")
        db.execute("INSERT INTO orders (url, certificate, status, created_at) "
                   "VALUES ('https://ca/order/1', 'portal', 'valid', ?)",
                   (T0.isoformat(timespec="microseconds"),))
    s = SqliteStore(path)
    await s.open()
    try:
        (order,) = await s.orders("portal")
        assert (order.url, order.status, order.created_at) == ("https://ca/order/1", "valid", T0)
        assert order.domains == () and order.key_pem is None
        await s.add_certificate(cert())
    finally:
        await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "certd.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    s = SqliteStore(path)
    with pytest.raises(StoreError, match="newer"):
        await s.open()
    # a failed open leaves nothing behind: the connection is closed
    with pytest.raises(StoreError, match="not open"):
        await s.get_account("x")
    with sqlite3.connect(path) as db:  # and the file is untouched
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1


async def test_unusable_file_is_a_store_error(tmp_path):
    path = tmp_path / "certd.db"
    path.write_bytes(b"this is not a database" * 100)
    s = SqliteStore(path)
    with pytest.raises(StoreError):
        await s.open()
    with pytest.raises(StoreError, match="not open"):
        await s.get_account("x")


async def test_closed_store_raises_store_error(tmp_path):
    s = SqliteStore(tmp_path / "certd.db")
    with pytest.raises(StoreError):
        await s.current_certificate("portal")
    await s.close()  # closing a store that never opened is harmless


async def test_database_file_is_0600_under_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "state" / "certd.db"
        s = SqliteStore(path)
        await s.open()
        try:
            await s.add_certificate(cert())  # write something: the WAL file exists now
            for f in path.parent.iterdir():
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        finally:
            await s.close()
    finally:
        os.umask(old)


# --- retention (issue 10): counters and keys, seen in the file ------------------------------

async def test_event_counters_follow_inserts_from_any_connection(tmp_path, store):
    await store.add_event(Event("deploy.failed", "a"))
    with sqlite3.connect(store.path) as raw:  # another process, plain SQL
        raw.execute("INSERT INTO events (at, kind, severity, message, data) VALUES "
                    "('2026-01-01T00:00:00.000000+00:00', 'deploy.failed', 'error', 'b', '{}')")
    assert await store.event_counts() == {"deploy.failed": 2}


async def test_event_counters_are_backfilled_from_an_older_schema(tmp_path):
    path = tmp_path / "certd.db"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:4]:
            for statement in script:
                db.execute(statement)
        db.execute("PRAGMA user_version=4")
        db.executemany("INSERT INTO events (at, kind, severity, message, data) "
                       "VALUES ('2026-01-01T00:00:00.000000+00:00', ?, 'info', 'm', '{}')",
                       [("issue.ok",)] * 3 + [("deploy.ok",)] * 2)
    s = SqliteStore(path)
    await s.open()
    try:
        assert await s.event_counts() == {"issue.ok": 3, "deploy.ok": 2}
        await s.add_event(Event("issue.ok", "new"))
        assert (await s.event_counts())["issue.ok"] == 4
    finally:
        await s.close()


async def test_destroyed_keys_are_gone_from_the_database_file(store):
    # rows of another name interleaved on the same pages: without secure_delete, SQLite
    # leaves a rewritten row's old bytes in the page's free space
    bodies, kept = [pem_body() for _ in range(7)], [pem_body() for _ in range(6)]
    for i in range(6):
        await store.add_certificate(keyed("gone.example", f"0{i}", T0 + timedelta(days=i),
                                          bodies[i]))
        await store.add_certificate(keyed("stays.example", f"1{i}", T0, kept[i]))
    await store.save_order(Order("gone.example", "https://ca/order/g", "ready", T0,
                                 domains=("gone.example",),
                                 key_pem=f"-----BEGIN PRIVATE KEY-----\n{bodies[6]}\n"))
    await store.save_order(Order("stays.example", "https://ca/order/s", "ready", T0,
                                 domains=("stays.example",), key_pem="order-key"))

    def raw_bytes() -> bytes:
        with sqlite3.connect(store.path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = store.path.read_bytes()
        wal = store.path.with_name(store.path.name + "-wal")
        return data + (wal.read_bytes() if wal.exists() else b"")

    before = raw_bytes()
    assert all(b.encode() in before for b in bodies)  # the test can see a key if one is there
    assert await store.destroy_keys("gone.example") == 7
    after = raw_bytes()
    assert not [b for b in bodies if b.encode() in after]
    assert all(k.encode() in after for k in kept)
    # the rows stay as history; none of them is current any more (nothing to deploy)
    assert [c.serial for c in await store.certificate_history("gone.example")] == [
        f"0{i}" for i in range(6)]
    assert await store.current_certificate("gone.example") is None
    assert "gone.example" not in await store.overview()
    assert [o.key_pem for o in await store.orders("gone.example")] == [None]
    assert await store.destroy_keys("gone.example") == 0


async def test_removing_an_alias_destroys_its_keys(store):
    from certd.config import Config
    from certd.model import Alias
    from certd.service import Certd

    certd = Certd(Config(), store, issuer=None, deployers_by_frontend={})
    await certd.add_alias(Alias("gone.example", (), "test", T0))
    await store.add_certificate(keyed("gone.example", "01", T0, "secret-key"))
    assert await certd.remove_alias("gone.example") == []  # no frontends: nothing to remove
    assert await store.get_alias("gone.example") is None
    assert [c.key_pem for c in await store.certificate_history("gone.example")] == [""]
