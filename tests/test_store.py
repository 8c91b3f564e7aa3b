"""certd/store/sqlite.py: SqliteStore against the Store Protocol (certd/store/base.py)."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from certd.errors import StoreError
from certd.model import (
    Account,
    AriState,
    CertificateState,
    CertStatus,
    Challenge,
    Deployment,
    DeployStatus,
    Event,
    IssuedCertificate,
    Order,
    Severity,
)
from certd.store.base import Store
from certd.store.migrations import MIGRATIONS
from certd.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def cert(name="portal", serial="0a", *, days=90, issued=T0, domains=("a.example",)):
    return IssuedCertificate(
        name=name, serial=serial, domains=tuple(domains),
        not_before=issued, not_after=issued + timedelta(days=days),
        cert_pem=f"-----CERT {serial}-----\n", chain_pem="-----CHAIN-----\n",
        key_pem=f"-----KEY {serial}-----\n", fingerprint_sha256="ab" * 32,
        issued_at=issued, order_url=f"https://ca/order/{serial}",
    )


def challenge(token="t" * 43, *, expires=T0 + timedelta(hours=1), cert_name="portal"):
    return Challenge(token=token, key_authorization=f"{token}.thumb", certificate=cert_name,
                     authorization_url=f"https://ca/authz/{token}", expires_at=expires)


def test_satisfies_the_protocol():
    # every method of the Protocol exists on the implementation, as a coroutine function
    import inspect
    for name, member in inspect.getmembers(Store, inspect.isfunction):
        if name.startswith("_"):
            continue
        impl = getattr(SqliteStore, name, None)
        assert impl is not None, name
        assert inspect.iscoroutinefunction(impl), name


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


# --- accounts ------------------------------------------------------------------------------

async def test_accounts(store):
    assert await store.get_account("https://ca/dir") is None
    await store.save_account(Account("https://ca/dir", "https://ca/acct/1", "KEY1", T0))
    await store.save_account(Account("https://other/dir", "https://other/acct/9", "KEY9", T0))
    got = await store.get_account("https://ca/dir")
    assert got == Account("https://ca/dir", "https://ca/acct/1", "KEY1", T0)
    assert got.created_at.tzinfo is not None
    # saving again replaces uri and key, keeps one row per directory
    await store.save_account(Account("https://ca/dir", "https://ca/acct/2", "KEY2", T0))
    got = await store.get_account("https://ca/dir")
    assert (got.uri, got.key_pem) == ("https://ca/acct/2", "KEY2")
    assert (await store.get_account("https://other/dir")).uri == "https://other/acct/9"


# --- challenges ----------------------------------------------------------------------------

async def test_challenges(store):
    token = "A" * 43
    assert await store.get_key_authorization(token, T0) is None
    await store.put_challenge(challenge(token, expires=T0 + timedelta(minutes=5)))
    assert await store.get_key_authorization(token, T0) == f"{token}.thumb"
    # expired ones are not returned
    assert await store.get_key_authorization(token, T0 + timedelta(minutes=5)) is None
    assert await store.get_key_authorization(token, T0 + timedelta(minutes=6)) is None
    # putting again replaces
    await store.put_challenge(Challenge(token, "new-ka", "portal", "u", T0 + timedelta(hours=1)))
    assert await store.get_key_authorization(token, T0) == "new-ka"
    await store.delete_challenge(token)
    assert await store.get_key_authorization(token, T0) is None
    await store.delete_challenge(token)  # deleting twice is fine


async def test_purge_challenges(store):
    for i in range(3):
        await store.put_challenge(challenge(f"old{i}" + "x" * 40, expires=T0 - timedelta(1)))
    await store.put_challenge(challenge("edge" + "x" * 40, expires=T0))
    await store.put_challenge(challenge("live" + "x" * 40, expires=T0 + timedelta(hours=1)))
    assert await store.purge_challenges(T0) == 4
    assert await store.purge_challenges(T0) == 0
    assert await store.get_key_authorization("live" + "x" * 40, T0) == "live" + "x" * 40 + ".thumb"


async def test_times_in_other_zones_compare_correctly(store):
    plus2 = timezone(timedelta(hours=2))
    token = "Z" * 43
    # expires at 12:30 UTC, written as 14:30+02:00
    await store.put_challenge(challenge(token, expires=datetime(2026, 1, 1, 14, 30, tzinfo=plus2)))
    assert await store.get_key_authorization(token, T0) is not None
    assert await store.get_key_authorization(token, T0 + timedelta(minutes=31)) is None


async def test_naive_datetimes_are_refused(store):
    with pytest.raises(ValueError):
        await store.put_challenge(challenge(expires=datetime(2026, 1, 1)))


# --- certificates ----------------------------------------------------------------------

async def test_certificates(store):
    assert await store.current_certificate("portal") is None
    assert await store.certificate_history("portal") == []
    first = await store.add_certificate(cert(serial="01", issued=T0))
    assert isinstance(first.id, int)
    second = await store.add_certificate(cert(serial="02", issued=T0 + timedelta(days=60),
                                              domains=("a.example", "b.example")))
    await store.add_certificate(cert(name="other", serial="99"))
    assert second.id > first.id
    current = await store.current_certificate("portal")
    assert current == second
    assert current.domains == ("a.example", "b.example")
    assert current.key_pem == "-----KEY 02-----\n"
    assert current.not_after.tzinfo is not None
    history = await store.certificate_history("portal")
    assert [c.serial for c in history] == ["01", "02"]  # oldest first, newest last
    assert [c.serial for c in await store.certificate_history("portal", limit=1)] == ["02"]
    assert (await store.current_certificate("other")).serial == "99"


async def test_current_is_the_newest_added_not_the_latest_expiry(store):
    await store.add_certificate(cert(serial="long", days=365))
    await store.add_certificate(cert(serial="short", days=6))
    assert (await store.current_certificate("portal")).serial == "short"


# --- state, orders, deployments, events ------------------------------------------------

async def test_state(store):
    assert await store.get_state("portal") is None
    state = CertificateState("portal", CertStatus.FAILED, "acme: boom", 3,
                             T0 + timedelta(minutes=10), T0)
    await store.put_state(state)
    assert await store.get_state("portal") == state
    await store.put_state(CertificateState("portal", CertStatus.DEPLOYED, updated_at=T0))
    got = await store.get_state("portal")
    assert got.status is CertStatus.DEPLOYED
    assert (got.last_error, got.attempts, got.next_attempt_at) == (None, 0, None)


async def test_orders_upsert_by_url(store):
    await store.save_order(Order("portal", "https://ca/order/1", "pending", T0))
    await store.save_order(Order("portal", "https://ca/order/2", "pending",
                                 T0 + timedelta(minutes=1)))
    await store.save_order(Order("other", "https://ca/order/3", "valid",
                                 T0 + timedelta(minutes=2)))
    await store.save_order(Order("portal", "https://ca/order/1", "invalid",
                                 T0 + timedelta(hours=5), error="unauthorized"))
    orders = await store.orders("portal")
    assert [(o.url, o.status) for o in orders] == [
        ("https://ca/order/2", "pending"), ("https://ca/order/1", "invalid")]
    assert orders[1].error == "unauthorized"
    assert orders[1].created_at == T0  # the update keeps when it was created
    assert len(await store.orders()) == 3
    assert len(await store.orders(limit=1)) == 1


async def test_deployments_upsert_per_certificate_frontend_node(store):
    await store.put_deployment(Deployment("portal", "web", "fe1", "01", DeployStatus.DEPLOYED,
                                          "ok", T0))
    await store.put_deployment(Deployment("portal", "web", "fe2", "01", DeployStatus.DEPLOYED,
                                          "ok", T0))
    await store.put_deployment(Deployment("portal", "edge", "fe1", "01",
                                          DeployStatus.DEPLOYED, "ok", T0))
    await store.put_deployment(Deployment("other", "web", "fe1", "07", DeployStatus.FAILED,
                                          "bad", T0))
    await store.put_deployment(Deployment("portal", "web", "fe1", "02",
                                          DeployStatus.ROLLED_BACK, "reload: exit 1", T0))
    deps = await store.deployments("portal")
    assert [(d.frontend, d.node, d.serial, d.status) for d in deps] == [
        ("edge", "fe1", "01", DeployStatus.DEPLOYED),
        ("web", "fe1", "02", DeployStatus.ROLLED_BACK),
        ("web", "fe2", "01", DeployStatus.DEPLOYED),
    ]
    assert deps[1].message == "reload: exit 1"
    assert await store.deployments("nothing") == []


async def test_events_newest_first_with_filters(store):
    for i in range(5):
        await store.add_event(Event(
            "issue.ok" if i % 2 == 0 else "deploy.failed", f"event {i}",
            Severity.INFO if i % 2 == 0 else Severity.ERROR,
            certificate="portal" if i < 3 else "other", node="fe1" if i == 1 else None,
            data={"i": i, "nested": {"ok": True}}, at=T0 + timedelta(seconds=i)))
    events = await store.events()
    assert [e.message for e in events] == [f"event {i}" for i in (4, 3, 2, 1, 0)]
    assert events[3].node == "fe1" and events[3].severity is Severity.ERROR
    assert events[0].data == {"i": 4, "nested": {"ok": True}}
    assert events[0].id > events[1].id
    assert [e.message for e in await store.events(certificate="portal")] == [
        "event 2", "event 1", "event 0"]
    assert [e.message for e in await store.events(kind="deploy.failed")] == [
        "event 3", "event 1"]
    assert [e.message for e in await store.events(certificate="portal",
                                                  kind="deploy.failed")] == ["event 1"]
    assert [e.message for e in await store.events(limit=2)] == ["event 4", "event 3"]
    assert await store.events(certificate="nobody") == []


# --- leases ----------------------------------------------------------------------------

async def test_leases(store):
    later = T0 + timedelta(minutes=5)
    assert await store.acquire_lease("issue:portal", "a", later, T0)
    # a second owner is refused while the lease is valid
    assert not await store.acquire_lease("issue:portal", "b", later, T0)
    assert not await store.acquire_lease("issue:portal", "b", later,
                                         T0 + timedelta(minutes=4, seconds=59))
    # other names are independent
    assert await store.acquire_lease("issue:other", "b", later, T0)
    # the same owner extends
    assert await store.acquire_lease("issue:portal", "a", T0 + timedelta(minutes=10),
                                     T0 + timedelta(minutes=4))
    assert not await store.acquire_lease("issue:portal", "b", later + timedelta(hours=1),
                                         T0 + timedelta(minutes=9))
    # release by a non-owner does nothing
    await store.release_lease("issue:portal", "b")
    assert not await store.acquire_lease("issue:portal", "b", later, T0 + timedelta(minutes=9))
    # after expiry anyone takes it over, and the old owner is then refused
    expired = T0 + timedelta(minutes=10)
    assert await store.acquire_lease("issue:portal", "b", expired + timedelta(minutes=5),
                                     expired)
    assert not await store.acquire_lease("issue:portal", "a", expired + timedelta(minutes=5),
                                         expired)
    # released by its owner: free for anyone at once
    await store.release_lease("issue:portal", "b")
    assert await store.acquire_lease("issue:portal", "a", expired + timedelta(minutes=5),
                                     expired)


async def test_lease_holder_and_take_over(store):
    until = T0 + timedelta(minutes=5)
    assert await store.lease_holder("issue:portal", T0) is None
    assert await store.acquire_lease("issue:portal", "dead", until, T0)
    assert await store.lease_holder("issue:portal", T0) == "dead"
    assert await store.lease_holder("issue:portal", until) is None  # expired: nobody
    # taking over names the holder it replaces: a stale guess fails
    assert not await store.take_over_lease("issue:portal", "someone-else", "me", until)
    assert await store.take_over_lease("issue:portal", "dead", "me", until)
    assert await store.lease_holder("issue:portal", T0) == "me"
    assert not await store.take_over_lease("issue:portal", "dead", "third", until)
    assert not await store.take_over_lease("issue:nothing", "dead", "me", until)


# --- ARI windows, the ledger, unfinished orders, the overview ------------------------------

async def test_ari(store):
    assert await store.get_ari("portal") is None
    ari = AriState("portal", "0a", T0 + timedelta(days=60), T0 + timedelta(days=62),
                   T0 + timedelta(days=61), T0 + timedelta(hours=6), "https://ca/why", T0)
    await store.put_ari(ari)
    assert await store.get_ari("portal") == ari
    none = AriState("portal", "0b", None, None, None, T0 + timedelta(hours=6), checked_at=T0)
    await store.put_ari(none)
    assert await store.get_ari("portal") == none


async def test_ledger(store):
    await store.ledger_add("order", ["example.org", "example.net"], T0)
    await store.ledger_add("order", ["example.org"], T0 + timedelta(hours=1))
    await store.ledger_add("cert", ["example.org"], T0 + timedelta(hours=2))
    assert await store.ledger_times("order", "example.org", T0 - timedelta(1)) == [
        T0, T0 + timedelta(hours=1)]
    assert await store.ledger_times("order", "example.org", T0) == [T0 + timedelta(hours=1)]
    assert await store.ledger_times("order", "example.com", T0 - timedelta(1)) == []
    assert await store.ledger_purge(T0 + timedelta(hours=1)) == 3
    assert await store.ledger_times("cert", "example.org", T0) == [T0 + timedelta(hours=2)]


async def test_unfinished_orders_are_the_latest_per_certificate(store):
    await store.save_order(Order("a", "https://ca/o/1", "pending", T0))
    await store.save_order(Order("a", "https://ca/o/2", "valid", T0 + timedelta(minutes=1)))
    await store.save_order(Order("b", "https://ca/o/3", "processing", T0,
                                 domains=("b.example",), key_pem="KEY"))
    await store.save_order(Order("c", "https://ca/o/4", "valid", T0, key_pem="KEY"))
    await store.save_order(Order("d", "https://ca/o/5", "invalid", T0))
    unfinished = {o.certificate: o for o in await store.unfinished_orders()}
    assert set(unfinished) == {"b", "c"}  # a's latest is valid without a key: finished
    assert unfinished["b"].domains == ("b.example",) and unfinished["b"].key_pem == "KEY"
    # forgetting the key finishes it
    await store.save_order(Order("c", "https://ca/o/4", "valid", T0, key_pem=None))
    assert {o.certificate for o in await store.unfinished_orders()} == {"b"}


async def test_overview(store):
    await store.add_certificate(cert("a", "01"))
    await store.add_certificate(cert("a", "02", domains=("a.example", "www.a.example")))
    await store.put_state(CertificateState("b", CertStatus.FAILED, "boom", 2, None, T0))
    await store.put_ari(AriState("c", "09", None, None, None, T0))
    view = await store.overview()
    assert set(view) == {"a", "b", "c"}
    summary, state, ari = view["a"]
    assert (summary.serial, summary.domains) == ("02", ("a.example", "www.a.example"))
    assert state is None and ari is None
    assert view["b"][0] is None and view["b"][1].last_error == "boom"
    assert view["c"][2].serial == "09"


# --- two stores on one file, like two processes ------------------------------------------

async def test_two_stores_on_one_file(tmp_path):
    path = tmp_path / "shared.db"
    one, two = SqliteStore(path), SqliteStore(path)
    await one.open()
    try:
        await two.open()
        try:
            await one.add_certificate(cert(serial="01"))
            assert (await two.current_certificate("portal")).serial == "01"
            await two.put_challenge(challenge("S" * 43))
            assert await one.get_key_authorization("S" * 43, T0) == "S" * 43 + ".thumb"
            await one.put_state(CertificateState("portal", CertStatus.ISSUING, updated_at=T0))
            assert (await two.get_state("portal")).status is CertStatus.ISSUING

            until = T0 + timedelta(minutes=5)
            assert await one.acquire_lease("issue:portal", "proc-1", until, T0)
            assert not await two.acquire_lease("issue:portal", "proc-2", until, T0)
            await two.release_lease("issue:portal", "proc-2")  # not the owner: no effect
            assert not await two.acquire_lease("issue:portal", "proc-2", until, T0)
            await one.release_lease("issue:portal", "proc-1")
            assert await two.acquire_lease("issue:portal", "proc-2", until, T0)
            assert not await one.acquire_lease("issue:portal", "proc-1", until, T0)
        finally:
            await two.close()
    finally:
        await one.close()


async def test_concurrent_lease_race_has_one_winner(tmp_path):
    import asyncio

    path = tmp_path / "shared.db"
    stores = [SqliteStore(path) for _ in range(4)]
    for s in stores:
        await s.open()
    try:
        until = T0 + timedelta(minutes=5)
        won = await asyncio.gather(*(
            s.acquire_lease("issue:portal", f"owner-{i}", until, T0)
            for i, s in enumerate(stores)))
        assert sum(won) == 1
    finally:
        for s in stores:
            await s.close()


# --- retention (issue 10): events, counters, private keys ---------------------------------

def pem_body() -> str:
    """A key-like PEM whose body is unique, to look for in the raw database file."""
    return base64.b64encode(os.urandom(120)).decode()


def keyed(name, serial, issued, body):
    return replace(cert(name, serial, issued=issued),
                   key_pem=f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")


async def test_purge_events_keeps_recent_ones_and_the_counters(store):
    for i in range(10):
        await store.add_event(Event("issue.ok" if i % 2 else "deploy.ok", f"e{i}",
                                    at=T0 + timedelta(days=i)))
    before = await store.event_counts()
    assert before == {"issue.ok": 5, "deploy.ok": 5}
    assert await store.purge_events(T0 + timedelta(days=6)) == 6
    assert [e.message for e in await store.events()] == ["e9", "e8", "e7", "e6"]
    assert await store.event_counts() == before  # counters never go down
    assert await store.purge_events(T0 + timedelta(days=6)) == 0  # idempotent
    # everything is old: the newest stays, so the next id is still above every id handed out
    last = await store.last_event_id()
    assert await store.purge_events(T0 + timedelta(days=365)) == 3
    assert await store.last_event_id() == last
    await store.add_event(Event("issue.ok", "after", at=T0 + timedelta(days=400)))
    assert (await store.events(limit=1))[0].id == last + 1
    assert await store.event_counts() == {"issue.ok": 6, "deploy.ok": 5}


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


async def test_metrics_counters_survive_a_purge(store):
    from certd.metrics import Sources, render

    for i, kind in enumerate(["issue.ok", "issue.ok", "issue.failed", "deploy.ok",
                              "deploy.failed", "deploy.ok"]):
        await store.add_event(Event(kind, kind, at=T0 + timedelta(hours=i)))

    async def samples() -> dict:
        from prometheus_client.parser import text_string_to_metric_families

        text = (await render(Sources(SimpleNamespace(store=store)))).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    before = await samples()
    assert before[("certd_renewals_total", (("result", "ok"),))] == 2
    assert before[("certd_deploys_total", (("result", "ok"),))] == 2
    await store.purge_events(T0 + timedelta(days=1))
    assert len(await store.events()) == 1
    assert await samples() == before


async def test_wipe_keys_only_of_superseded_certificates_past_the_grace(store):
    day = timedelta(days=1)
    first = await store.add_certificate(keyed("portal", "01", T0, "k1"))
    second = await store.add_certificate(keyed("portal", "02", T0 + 30 * day, "k2"))
    third = await store.add_certificate(keyed("portal", "03", T0 + 60 * day, "k3"))
    alone = await store.add_certificate(keyed("other", "09", T0, "k9"))
    # orders: one finished (its certificate is stored), one superseded by a newer order,
    # the latest one unfinished (a resume needs its key), one of another name unfinished
    await store.save_order(Order("portal", third.order_url, "valid", T0 + 60 * day,
                                 domains=("a.example",), key_pem="order-key-3"))
    await store.save_order(Order("portal", "https://ca/order/old", "ready", T0 + 61 * day,
                                 domains=("a.example",), key_pem="order-key-old"))
    await store.save_order(Order("portal", "https://ca/order/new", "ready", T0 + 62 * day,
                                 domains=("a.example",), key_pem="order-key-new"))
    await store.save_order(Order("other", "https://ca/order/o", "processing", T0,
                                 domains=("a.example",), key_pem="order-key-o"))

    # 7 days after the second was issued: only the first one's key goes
    assert await store.wipe_keys(superseded_before=T0 + 37 * day) == 3
    keys = {c.serial: c.key_pem for c in await store.certificate_history("portal")}
    assert keys["01"] == "" and "k2" in keys["02"] and "k3" in keys["03"]
    assert "k9" in (await store.current_certificate("other")).key_pem
    orders = {o.url: o.key_pem for o in await store.orders(limit=10)}
    assert orders == {third.order_url: None, "https://ca/order/old": None,
                      "https://ca/order/new": "order-key-new",
                      "https://ca/order/o": "order-key-o"}
    assert {o.url for o in await store.unfinished_orders()} == {
        "https://ca/order/new", "https://ca/order/o"}
    # long after: every superseded key, never the current one
    assert await store.wipe_keys(superseded_before=T0 + 1000 * day) == 1
    keys = {c.serial: c.key_pem for c in await store.certificate_history("portal")}
    assert keys["01"] == keys["02"] == "" and "k3" in keys["03"]
    current = await store.current_certificate("portal")
    assert current.serial == "03" and "k3" in current.key_pem
    # the history keeps the public part
    assert [c.cert_pem for c in await store.certificate_history("portal")] == [
        first.cert_pem, second.cert_pem, third.cert_pem]
    assert await store.wipe_keys(superseded_before=T0 + 1000 * day) == 0
    assert alone.key_pem == (await store.current_certificate("other")).key_pem


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


async def test_retention_job_applies_the_configured_periods(store):
    from certd import retention
    from certd.config import Config

    day = timedelta(days=1)
    now = T0 + 200 * day
    await store.add_event(Event("issue.ok", "old", at=now - 91 * day))
    await store.add_event(Event("issue.ok", "recent", at=now - 89 * day))
    await store.add_certificate(keyed("portal", "01", T0, "k1"))
    await store.add_certificate(keyed("portal", "02", now - 8 * day, "k2"))
    await store.add_certificate(keyed("portal", "03", now - 6 * day, "k3"))
    result = await retention.apply(store, Config(), now)  # 90 d of events, 7 d of keys
    assert (result.events, result.keys) == (1, 1)
    assert [e.message for e in await store.events()] == ["recent"]
    keys = {c.serial: c.key_pem for c in await store.certificate_history("portal")}
    assert keys["01"] == "" and "k2" in keys["02"] and "k3" in keys["03"]


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
