"""certd/store/postgres.py against a real PostgreSQL (tests/lab/postgres.py): what only this
backend has — its migrations, reconnecting after a server restart, races between instances
that the database's row locks decide, the password file.

The Store contract itself runs on PostgreSQL too: tests/test_store_contract.py, `[postgresql]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from certd.config import Config
from certd.errors import StoreError
from certd.model import CertificateState, CertStatus, Challenge, Event, utcnow
from certd.store import make_store, pg_pool, storage_problem
from certd.store.pg_schema import MIGRATIONS, migrate
from certd.store.postgres import PostgresStore
from tests.certd_lab import Daemon, write_config
from tests.lab.postgres import PgDatabase, PostgresCluster
from tests.lab.procs import free_port, running, stop_all
from tests.stores import opened

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
UNTIL = T0 + timedelta(minutes=5)
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"  # RFC 8555 §8.3's example token
PATIENCE = 20.0  # bound on every wait below: far above what a pass takes


def pg_store(db: PgDatabase, **options) -> PostgresStore:
    return PostgresStore(db.url, password_file=db.password_file, **options)


async def admin(db: PgDatabase) -> asyncpg.Connection:
    """A plain connection as certd's role: to look at the database behind the store's back."""
    return await asyncpg.connect(db.url, password=db.password_file.read_text().strip())


async def until(predicate: Callable[[], object], what: str) -> None:
    """Poll an async predicate until it is true (bounded)."""
    deadline = asyncio.get_running_loop().time() + PATIENCE
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def waiting_on_a_lock(db: PgDatabase) -> Callable[[], object]:
    """Whether some session of `db` is blocked on a lock (a row, an advisory lock)."""
    async def check() -> bool:
        n = await asyncio.to_thread(
            db.psql, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")
        return int(n) > 0
    return check


# --- the URL ------------------------------------------------------------------------------

def test_storage_urls_for_postgresql():
    assert storage_problem("postgresql://certd@db.example:5432/certd") is None
    assert storage_problem("postgresql:///certd?host=/run/postgresql") is None  # a socket
    for bad in ("postgresql://", "postgresql://certd@db.example", "postgresql://h:port/db",
                "postgresql://h:99999/db"):
        assert "postgresql://USER@HOST:PORT/DATABASE" in storage_problem(bad), bad
    problem = storage_problem("postgresql://certd:hunter2@db.example/certd")
    assert "storage_password_file" in problem and "hunter2" not in problem
    store = PostgresStore("postgresql://certd:hunter2@db.example:6432/certd?sslmode=require")
    assert store.name == "certd@db.example:6432/certd"
    assert "hunter2" not in repr(store)


# --- migrations --------------------------------------------------------------------------

async def test_migrations_from_an_empty_database(postgres_database):
    db = postgres_database
    async with opened(pg_store(db)) as s:
        await s.put_state(CertificateState("portal", CertStatus.ISSUED, updated_at=T0))
    assert db.psql("SELECT max(version) FROM schema_version") == str(len(MIGRATIONS))
    tables = set(db.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split())
    assert {"accounts", "certificates", "cert_state", "orders", "challenges", "deployments",
            "events", "event_counts", "leases", "ari", "ledger", "aliases", "alerts",
            "bundle_tokens", "schema_version"} <= tables
    # opening again applies nothing and keeps the data
    async with opened(pg_store(db)) as s:
        assert (await s.get_state("portal")).status is CertStatus.ISSUED
    assert db.psql("SELECT count(*) FROM schema_version") == str(len(MIGRATIONS))


async def test_a_newer_schema_is_refused_and_left_alone(postgres_database):
    db = postgres_database
    async with opened(pg_store(db)):
        pass
    db.psql(f"INSERT INTO schema_version (version) VALUES ({len(MIGRATIONS) + 1})")
    store = pg_store(db)
    with pytest.raises(StoreError) as refused:
        await store.open()
    message = str(refused.value)
    assert f"store schema {len(MIGRATIONS) + 1} is newer than this certd" in message
    assert f"knows up to {len(MIGRATIONS)}" in message
    assert message.startswith(f"postgresql[certd@127.0.0.1:{db.cluster.port}/{db.name}]")
    with pytest.raises(StoreError, match="not open"):  # nothing left half open
        await store.get_state("portal")
    assert db.psql("SELECT count(*) FROM schema_version") == str(len(MIGRATIONS) + 1)


async def test_a_failed_step_leaves_nothing_of_itself(postgres_database):
    db = postgres_database
    conn = await admin(db)
    try:
        broken = [*MIGRATIONS, ["CREATE TABLE half_done (a integer)", "SELECT no_such_fn()"]]
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrate(conn, broken)
        assert await conn.fetchval("SELECT max(version) FROM schema_version") == len(MIGRATIONS)
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    finally:
        await conn.close()
    async with opened(pg_store(db)):  # the store opens at the version it knows
        pass


async def test_instances_starting_together_migrate_once(postgres_database):
    stores = [pg_store(postgres_database) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].add_event(Event("test", "after the race"))
        assert [e.message for e in await stores[3].events()] == ["after the race"]
    finally:
        for s in stores:
            await s.close()
    assert postgres_database.psql("SELECT count(*) FROM schema_version") == str(len(MIGRATIONS))


# --- the server goes away and comes back -------------------------------------------------

@pytest.mark.lab  # a real server of its own, started here
async def test_reconnects_after_the_server_restarts():
    # a cluster of its own: this test stops it
    cluster = await asyncio.to_thread(lambda: PostgresCluster.create().start())
    try:
        db = await asyncio.to_thread(cluster.database)
        challenge = Challenge(TOKEN, TOKEN + ".thumb", "portal", "https://ca/authz/1",
                              T0 + timedelta(hours=1))
        async with opened(pg_store(db)) as store:
            await store.put_challenge(challenge)
            assert await store.get_key_authorization(TOKEN, T0) == TOKEN + ".thumb"

            pid = cluster.pid
            await asyncio.to_thread(cluster.stop)  # by PID: fast shutdown, then reaped
            assert not running(pid)

            # a challenge the instance holds is still answered, from its cache
            assert await store.get_key_authorization(TOKEN, T0) == TOKEN + ".thumb"
            assert not store.challenges.live
            # every other call fails, at once and clearly, naming the store, not its secret
            name = f"postgresql[certd@127.0.0.1:{cluster.port}/{db.name}]"
            password = db.password_file.read_text().strip()
            for call in (lambda: store.get_state("portal"),
                         lambda: store.get_key_authorization("unknown" + TOKEN[7:], T0),
                         lambda: store.add_event(Event("test", "during the outage"))):
                with pytest.raises(StoreError) as down:
                    await call()
                assert str(down.value).startswith(name), down.value
                assert password not in str(down.value)
                assert down.value.unavailable  # the sweep stops on it (certd/sweep.py)
            with pytest.raises(StoreError):
                async with store.transaction():
                    await store.put_state(CertificateState("portal", CertStatus.ISSUING))

            await asyncio.to_thread(cluster.start)
            # the next calls work: both pools replaced their dead connections
            assert await store.get_key_authorization("unknown" + TOKEN[7:], T0) is None
            async with store.transaction():
                await store.put_state(CertificateState("portal", CertStatus.ISSUED,
                                                       updated_at=T0))
                await store.add_event(Event("test", "after the restart"))
            assert (await store.get_state("portal")).status is CertStatus.ISSUED
            assert [e.message for e in await store.events()] == ["after the restart"]
            # and the challenge cache listens again (in the background, soon)
            await asyncio.wait_for(store.challenges.wait_live(), PATIENCE)
    finally:
        await asyncio.to_thread(cluster.destroy)


# --- several instances on one database: the database decides -----------------------------

async def test_instances_competing_for_leases_one_wins_each(postgres_database):
    async with opened(pg_store(postgres_database)) as a, \
            opened(pg_store(postgres_database)) as b:
        names = [f"issue:cert{i}" for i in range(25)]
        won = await asyncio.gather(*(s.acquire_lease(n, owner, UNTIL, T0)
                                     for n in names for s, owner in ((a, "a"), (b, "b"))))
        for i, name in enumerate(names):
            a_won, b_won = won[2 * i], won[2 * i + 1]
            assert a_won != b_won, name  # exactly one of the two
            assert await b.lease_holder(name, T0) == ("a" if a_won else "b")
        # every lease expired: both instances try to take each one over at the same moment
        later = UNTIL + timedelta(seconds=1)
        won = await asyncio.gather(*(s.acquire_lease(n, owner, later + (UNTIL - T0), later)
                                     for n in names for s, owner in ((b, "b"), (a, "a"))))
        assert all(won[2 * i] != won[2 * i + 1] for i in range(len(names)))


async def test_a_lease_held_in_an_open_transaction_is_waited_for(postgres_database):
    # instance A takes the lease inside a unit of work that has not committed: B's attempt
    # waits on the row lock, then sees A's lease and loses (no double grant, no error)
    db = postgres_database
    async with opened(pg_store(db)) as a, opened(pg_store(db)) as b:
        committed, taken = asyncio.Event(), asyncio.Event()

        async def unit() -> None:
            async with a.transaction():
                assert await a.acquire_lease("issue:portal", "a", UNTIL, T0)
                taken.set()
                await committed.wait()

        holder = asyncio.create_task(unit())
        await taken.wait()
        assert await b.lease_holder("issue:portal", T0) is None  # not committed yet
        contender = asyncio.create_task(b.acquire_lease("issue:portal", "b", UNTIL, T0))
        await until(waiting_on_a_lock(db), "B to wait on A's row lock")
        assert not contender.done()
        committed.set()
        await holder
        assert await asyncio.wait_for(contender, PATIENCE) is False
        assert await b.lease_holder("issue:portal", T0) == "a"


async def test_a_write_blocked_too_long_fails_instead_of_hanging(postgres_database,
                                                                  monkeypatch):
    monkeypatch.setattr(pg_pool, "LOCK_TIMEOUT", "200ms")  # instead of 5 s
    db = postgres_database
    async with opened(pg_store(db)) as a, opened(pg_store(db)) as b:
        release, taken = asyncio.Event(), asyncio.Event()

        async def unit() -> None:
            async with a.transaction():
                await a.acquire_lease("issue:portal", "a", UNTIL, T0)
                taken.set()
                await release.wait()

        holder = asyncio.create_task(unit())
        await taken.wait()
        with pytest.raises(StoreError, match="another session held a lock for over 200ms"):
            await asyncio.wait_for(b.acquire_lease("issue:portal", "b", UNTIL, T0), PATIENCE)
        release.set()
        await holder
        assert await b.lease_holder("issue:portal", T0) == "a"


async def test_a_bundle_token_taken_by_two_connections_at_once_grants_once(postgres_database):
    async with opened(pg_store(postgres_database)) as a, \
            opened(pg_store(postgres_database)) as b:
        digests = [f"{i:064x}" for i in range(20)]
        for d in digests:
            await a.create_bundle_token(d, batch="b" * 16, minion="fe1",
                                        items=[("portal", "0a")], now=T0,
                                        expires_at=T0 + timedelta(minutes=10))
        got = await asyncio.gather(*(s.take_bundle_token(d, "b" * 16, T0)
                                     for d in digests for s in (a, b)))
        for i in range(len(digests)):
            grants = [g for g in got[2 * i:2 * i + 2] if g is not None]
            assert len(grants) == 1
            assert grants[0].items == (("portal", "0a"),)


async def test_event_ids_become_visible_in_order(postgres_database):
    # A draws an event id inside a unit of work that has not committed; B's event must not
    # become visible before it, or a reader following ids (the alert forwarder) would move
    # its cursor past A's event and never see it
    db = postgres_database
    async with opened(pg_store(db)) as a, opened(pg_store(db)) as b, \
            opened(pg_store(db)) as reader:
        release, drawn = asyncio.Event(), asyncio.Event()

        async def unit() -> None:
            async with a.transaction():
                await a.add_event(Event("one", "first, committed late"))
                drawn.set()
                await release.wait()

        slow = asyncio.create_task(unit())
        await drawn.wait()
        # another kind: the per-kind counter row (event_counts) is no lock they share
        fast = asyncio.create_task(b.add_event(Event("other", "second")))
        blocked = waiting_on_a_lock(db)

        async def b_waits_or_is_done() -> bool:
            return fast.done() or await blocked()

        await until(b_waits_or_is_done, "B's insert to wait for A's (or to end)")
        assert await reader.events_since(0) == []  # B's event is not visible before A's
        release.set()
        await asyncio.wait_for(asyncio.gather(slow, fast), PATIENCE)
        assert [e.message for e in await reader.events_since(0)] == [
            "first, committed late", "second"]


async def test_challenge_lookups_do_not_wait_for_the_main_pool(postgres_database):
    # a main pool of one connection, held by an open unit of work: the responder's lookup
    # still answers (its own pool), and sees only what is committed, from any instance
    db = postgres_database
    async with opened(pg_store(db, pool_size=1)) as s, opened(pg_store(db)) as other:
        await s.challenges.stop()  # no cache: every lookup goes to the database
        await other.put_challenge(Challenge(TOKEN, "committed", "portal", "u",
                                            T0 + timedelta(hours=1)))
        release, inside = asyncio.Event(), asyncio.Event()

        async def unit() -> None:
            async with s.transaction():
                await s.put_challenge(Challenge(TOKEN, "uncommitted", "portal", "u",
                                                T0 + timedelta(hours=1)))
                inside.set()
                await release.wait()

        task = asyncio.create_task(unit())
        await inside.wait()
        for _ in range(3):
            assert await s.get_key_authorization(TOKEN, T0) == "committed"
        release.set()
        await task
        assert await s.get_key_authorization(TOKEN, T0) == "uncommitted"
        assert await other.get_key_authorization(TOKEN, T0) == "uncommitted"


# --- challenge answers across instances: the cache LISTEN/NOTIFY keeps -------------------

def count_lookups(store: PostgresStore) -> list[str]:
    """The tokens `store` looks up in the database from now on (its cache's misses)."""
    queried: list[str] = []
    lookup = store._lookup

    async def counted(what, sql, token, *args):
        queried.append(token)
        return await lookup(what, sql, token, *args)

    store._lookup = counted
    return queried


async def cached(store: PostgresStore, token: str, answer: str | None) -> None:
    """Until `store`'s cache holds `answer` for `token` (None: holds nothing for it)."""
    async def check() -> bool:
        known, got = store.challenges.answer(token, T0)
        return (known and got == answer) if answer is not None else not known
    await until(check, f"the cache to hold {answer!r} for the token")


async def test_another_instance_answers_from_its_cache_without_a_query(postgres_database):
    db = postgres_database
    async with opened(pg_store(db)) as a, opened(pg_store(db)) as b:
        queried = count_lookups(b)
        await a.put_challenge(Challenge(TOKEN, "ka-1", "portal", "u", T0 + timedelta(hours=1)))
        await cached(b, TOKEN, "ka-1")  # announced at A's commit
        for _ in range(5):  # the CA asks from several places: no query for any of them
            assert await b.get_key_authorization(TOKEN, T0) == "ka-1"
        assert await b.get_key_authorization(TOKEN, T0 + timedelta(hours=1)) is None  # expired
        # replaced, then deleted, by A: B follows
        await a.put_challenge(Challenge(TOKEN, "ka-2", "portal", "u", T0 + timedelta(hours=1)))
        await cached(b, TOKEN, "ka-2")
        assert await b.get_key_authorization(TOKEN, T0) == "ka-2"
        assert queried == []
        await a.delete_challenge(TOKEN)
        await cached(b, TOKEN, None)
        assert await b.get_key_authorization(TOKEN, T0) is None  # not held: asked, not there
        assert queried == [TOKEN]


async def test_the_cache_starts_with_what_is_stored(postgres_database):
    db = postgres_database
    async with opened(pg_store(db)) as a:
        # (the cache fills with what is unexpired now, by the database's clock)
        await a.put_challenge(Challenge(TOKEN, "stored", "portal", "u",
                                        utcnow() + timedelta(days=1)))
        for i in range(3):  # expired ones are left out
            await a.put_challenge(Challenge(f"old{i}", "x", "portal", "u", utcnow()))
        async with opened(pg_store(db)) as b:
            queried = count_lookups(b)
            assert await b.get_key_authorization(TOKEN, T0) == "stored"
            assert queried == []
            assert not b.challenges.answer("old0", T0)[0]


async def test_the_cache_listens_again_and_misses_nothing(postgres_database):
    # B's listening connection is ended behind its back; a challenge A publishes meanwhile
    # reaches B all the same (the notification, or the refill when B listens again)
    db = postgres_database
    async with opened(pg_store(db)) as a, opened(pg_store(db)) as b:
        for round in range(3):
            listener = b.challenges._connection.get_server_pid()
            await asyncio.to_thread(db.psql, f"SELECT pg_terminate_backend({listener})")
            token = f"round{round}" + TOKEN[6:]
            await a.put_challenge(Challenge(token, f"ka-{round}", "portal", "u",
                                            utcnow() + timedelta(hours=1)))
            await asyncio.wait_for(b.challenges.wait_live(), PATIENCE)
            await cached(b, token, f"ka-{round}")
            assert b.challenges._connection.get_server_pid() != listener


# --- the password ------------------------------------------------------------------------

async def test_the_password_comes_from_its_file_and_never_into_a_message(postgres_database,
                                                                        tmp_path):
    db = postgres_database
    right = db.password_file.read_text().strip()
    async with opened(pg_store(db)) as s:  # the fixture's file: the right password
        await s.add_event(Event("test", "logged in"))

    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password-4711\n")
    store = PostgresStore(db.url, password_file=wrong)
    with pytest.raises(StoreError) as failed:
        await store.open()
    message = str(failed.value)
    assert message.startswith(f"postgresql[certd@127.0.0.1:{db.cluster.port}/{db.name}]: open: ")
    assert 'password authentication failed for user "certd"' in message
    assert "storage_password_file" in message
    assert "not-the-password-4711" not in message and right not in message
    assert not failed.value.unavailable  # reachable, refused: not an outage

    missing = PostgresStore(db.url, password_file=tmp_path / "nowhere")
    with pytest.raises(StoreError, match=f"password file {tmp_path / 'nowhere'}: cannot be "
                                         "read: No such file or directory"):
        await missing.open()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(StoreError, match="is empty"):
        await PostgresStore(db.url, password_file=empty).open()

    # a URL with the password in it: config refuses it without repeating it
    problem = storage_problem(f"postgresql://certd:{right}@127.0.0.1:{db.cluster.port}/x")
    assert "storage_password_file" in problem and right not in problem
    with pytest.raises(Exception) as refused:
        Config(storage=f"postgresql://certd:{right}@127.0.0.1:5432/certd")
    assert right not in str(refused.value)


async def test_config_storage_builds_the_store(postgres_database, monkeypatch):
    # storage: postgresql://..., the password as a systemd credential
    db = postgres_database
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(db.password_file.parent))
    config = Config(storage=db.url,
                    storage_password_file=f"$CREDENTIALS_DIRECTORY/{db.password_file.name}")
    assert config.database_path is None
    store = make_store(config)
    assert isinstance(store, PostgresStore)
    assert store.password_file == db.password_file
    async with opened(store):
        await store.put_state(CertificateState("portal", CertStatus.ISSUED, updated_at=T0))
        assert (await store.get_state("portal")).status is CertStatus.ISSUED
    with pytest.raises(Exception, match="storage_password_file: only for a postgresql"):
        Config(storage_password_file=db.password_file)


async def test_reads_survive_a_backend_terminated_behind_the_stores_back(postgres_database):
    # what an administrator's pg_terminate_backend (or a pooler, or a failover) does to the
    # connections a store keeps: a read finds its connection gone and is tried once more on a
    # new one; a write is never repeated (it may fail once), and the next one works
    db = postgres_database
    async with opened(pg_store(db)) as s:
        await s.put_challenge(Challenge(TOKEN, "ka", "portal", "u", T0 + timedelta(hours=1)))
        await s.put_state(CertificateState("portal", CertStatus.ISSUED, updated_at=T0))
        for _ in range(3):
            ended = await asyncio.to_thread(
                db.psql, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND usename = 'certd'")
            assert int(ended) >= 1
            assert await s.get_key_authorization(TOKEN, T0) == "ka"
            assert (await s.get_state("portal")).status is CertStatus.ISSUED
        with contextlib.suppress(StoreError):
            await s.add_event(Event("test", "maybe lost with its connection"))
        await s.add_event(Event("test", "written"))
        assert "written" in [e.message for e in await s.events()]


# --- certd itself on PostgreSQL ------------------------------------------------------------

def test_two_certd_instances_on_one_database_answer_any_challenge(postgres_database,
                                                                  tmp_path):
    # `certd run` twice, `storage: postgresql://...` with the password in a file: a token
    # published in the shared database (as either instance's order would) is answered by
    # both challenge listeners
    db = postgres_database
    daemons = []
    try:
        for i in range(2):
            challenge_port, api_port = free_port(), free_port()
            data = {
                "state_dir": str(tmp_path / f"state{i}"),
                "storage": db.url,
                "storage_password_file": str(db.password_file),
                # no CA: the sweep's order fails at once, which is not what is tested here
                "acme": {"directory": f"https://127.0.0.1:{free_port()}/dir", "timeout": "2s"},
                "challenge": {"listen": f"127.0.0.1:{challenge_port}"},
                "api": {"listen": f"127.0.0.1:{api_port}"},
                "frontends": {"web": {"nodes": [{"name": "fe1", "address": "127.0.0.2"}],
                                      "deployer": {"type": "file",
                                                   "path": str(tmp_path) + "/{node}"}}},
                "certificates": [{"name": "x", "domains": ["x.test"], "frontends": ["web"]}],
            }
            daemon = Daemon(write_config(tmp_path / f"certd{i}.yaml", data),
                            tmp_path / f"certd{i}.log")
            daemons.append((daemon, challenge_port, api_port))
        for daemon, _, _ in daemons:
            daemon.wait_log("api listening on")
            assert db.url[len("postgresql://"):] in daemon.log()  # the store it said it uses

        async def publish() -> None:
            async with opened(pg_store(db)) as s:
                await s.put_challenge(Challenge(TOKEN, TOKEN + ".thumb", "x", "u",
                                                utcnow() + timedelta(hours=1)))

        asyncio.run(publish())
        for _, challenge_port, api_port in daemons:
            url = f"http://127.0.0.1:{challenge_port}/.well-known/acme-challenge/{TOKEN}"
            with urllib.request.urlopen(url, timeout=PATIENCE) as answer:
                assert answer.read() == (TOKEN + ".thumb").encode()
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz",
                                        timeout=PATIENCE) as answer:
                assert answer.status == 200
    finally:
        stop_all([d for d, _, _ in daemons])
    for daemon, _, _ in daemons:
        assert db.password_file.read_text().strip() not in daemon.log()
