"""The Store contract (certd/store/base.py): what every backend must do, run against each one
in tests/stores.py's BACKENDS (test ids `[sqlite]`, `[memory]`, ...).

`store` here is an open, empty store of the backend under test; `any_backend` opens more
handles on that same store, as other processes would. What only one backend has (SQLite's
files, WAL, migrations, busy timeout) is tested beside it (tests/test_store.py)."""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from certd.errors import StoreError
from certd.model import (
    Account,
    Alert,
    Alias,
    AriState,
    CertificateState,
    CertStatus,
    Challenge,
    Deployment,
    DeployStatus,
    Event,
    Finding,
    IssuedCertificate,
    Order,
    Severity,
)
from certd.store.base import BundleGrant, Store

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


def pem_body() -> str:
    """A key-like PEM whose body is unique, to look for in the raw database file."""
    return base64.b64encode(os.urandom(120)).decode()


def keyed(name, serial, issued, body):
    return replace(cert(name, serial, issued=issued),
                   key_pem=f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")


def alert(check="expiry", domain="a.example", node="web/fe1", *, severity=Severity.WARNING,
          seen=T0, resolved=None):
    finding = Finding(check, severity, domain, node, f"{check} on {node}", "portal", "0a",
                      T0 + timedelta(days=20), 20.0)
    return Alert(finding, seen, seen, None, None, resolved)


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def test_satisfies_the_protocol(store):
    # every method of the Protocol exists on the implementation, a coroutine function where
    # the Protocol has one (`transaction` returns a context manager)
    for name, member in inspect.getmembers(Store, inspect.isfunction):
        if name.startswith("_"):
            continue
        impl = getattr(type(store), name, None)
        assert impl is not None, name
        assert inspect.iscoroutinefunction(impl) == inspect.iscoroutinefunction(member), name


# --- lifecycle -------------------------------------------------------------------------------

async def test_a_closed_store_raises_store_error(any_backend):
    async with any_backend() as s:
        await s.add_certificate(cert())
    with pytest.raises(StoreError):  # closed on the way out of the block
        await s.current_certificate("portal")
    await s.close()  # closing again is harmless


async def test_reopened_store_keeps_its_data(any_backend):
    async with any_backend() as s:
        await s.add_certificate(cert())
    for _ in range(2):
        async with any_backend() as s:
            assert (await s.current_certificate("portal")).serial == "0a"


# --- accounts ------------------------------------------------------------------------------

async def test_accounts(store):
    assert await store.get_account("https://ca/dir") is None
    await store.save_account(Account("https://ca/dir", "https://ca/acct/1", "KEY1", T0))
    await store.save_account(Account("https://other/dir", "https://other/acct/9", "KEY9", T0))
    got = await store.get_account("https://ca/dir")
    assert got == Account("https://ca/dir", "https://ca/acct/1", "KEY1", T0)
    assert got.created_at.tzinfo is not None
    # saving again replaces uri and key, keeps one row per directory and its creation time
    await store.save_account(Account("https://ca/dir", "https://ca/acct/2", "KEY2",
                                     T0 + timedelta(days=1)))
    got = await store.get_account("https://ca/dir")
    assert (got.uri, got.key_pem, got.created_at) == ("https://ca/acct/2", "KEY2", T0)
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
    # and come out in UTC
    await store.put_state(CertificateState("portal", updated_at=T0.astimezone(plus2)))
    got = await store.get_state("portal")
    assert got.updated_at == T0 and got.updated_at.utcoffset() == timedelta(0)


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


async def test_the_issuing_ca_is_kept_with_each_certificate(store):
    """acme.issuers: the directory URL of the CA that issued it, through every read
    (current, history, the sweep's overview, the views' details); None when unknown."""
    directory = "https://ca-two.example/acme/directory"
    await store.add_certificate(cert(serial="01"))
    await store.add_certificate(replace(cert(serial="02"), issuer=directory))
    assert (await store.current_certificate("portal")).issuer == directory
    assert [c.issuer for c in await store.certificate_history("portal")] == [None, directory]
    assert (await store.overview())["portal"][0].issuer == directory
    assert (await store.details(["portal"]))["portal"].summary.issuer == directory


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


async def test_orders_created_together_come_newest_saved_first(store):
    for i in range(3):
        await store.save_order(Order("portal", f"https://ca/order/{i}", "pending", T0))
    assert [o.url for o in await store.orders("portal")] == [
        "https://ca/order/2", "https://ca/order/1", "https://ca/order/0"]


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
                                          DeployStatus.ROLLED_BACK, "reload: exit 1", T0,
                                          batch="b1", seconds=1.5))
    deps = await store.deployments("portal")
    assert [(d.frontend, d.node, d.serial, d.status) for d in deps] == [
        ("edge", "fe1", "01", DeployStatus.DEPLOYED),
        ("web", "fe1", "02", DeployStatus.ROLLED_BACK),
        ("web", "fe2", "01", DeployStatus.DEPLOYED),
    ]
    assert deps[1].message == "reload: exit 1"
    assert (deps[1].batch, deps[1].seconds, deps[0].seconds) == ("b1", 1.5, None)
    assert await store.deployments("nothing") == []


async def test_a_deployment_keeps_when_it_was_verified(store):
    # the rollout's stored fact (certd/rollout.py _verify), read back by deployments() and
    # details() alike; a later record without it (verify off, a failure) clears it
    seen = T0 + timedelta(seconds=3, microseconds=250)
    await store.put_deployment(Deployment("portal", "web", "fe1", "01", DeployStatus.DEPLOYED,
                                          "placed", T0, "b1", 0.5, verified_at=seen))
    await store.put_deployment(Deployment("portal", "web", "fe2", "01", DeployStatus.DEPLOYED,
                                          "placed", T0, "b1", 0.5))
    deps = await store.deployments("portal")
    assert [(d.node, d.verified_at) for d in deps] == [("fe1", seen), ("fe2", None)]
    assert deps[0].verified_at.utcoffset() == timedelta(0)
    details = (await store.details(["portal"]))["portal"]
    assert [d.verified_at for d in details.deployments] == [seen, None]
    await store.put_deployment(Deployment("portal", "web", "fe1", "02",
                                          DeployStatus.ROLLED_BACK, "verify: serves 01", T0))
    assert [d.verified_at for d in await store.deployments("portal")] == [None, None]


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
    # pages: `before` is the last id of the previous page (the dashboard's cursor)
    page2 = await store.events(limit=2, before=events[1].id)
    assert [e.message for e in page2] == ["event 2", "event 1"]
    assert [e.message for e in await store.events(certificate="portal", before=page2[0].id)
            ] == ["event 1", "event 0"]
    assert await store.events(before=events[-1].id) == []


async def test_event_ids_and_the_feed_since_an_id(store):
    assert await store.last_event_id() == 0
    assert await store.events_since(0) == []
    for i in range(5):
        await store.add_event(Event("issue.ok", f"e{i}", at=T0, id=999))  # the store numbers
    ids = [e.id for e in reversed(await store.events())]
    assert ids == sorted(ids) and len(set(ids)) == 5 and ids[0] > 0
    assert await store.last_event_id() == ids[-1]
    feed = await store.events_since(0)
    assert [e.message for e in feed] == [f"e{i}" for i in range(5)]  # oldest first
    assert [e.id for e in feed] == ids
    assert [e.message for e in await store.events_since(ids[1])] == ["e2", "e3", "e4"]
    assert [e.message for e in await store.events_since(ids[1], limit=2)] == ["e2", "e3"]
    assert await store.events_since(ids[-1]) == []


async def test_records_read_back_are_the_stores_own(store):
    data = {"list": [1, 2], "n": 1}
    await store.add_event(Event("issue.ok", "e", data=data, at=T0))
    data["n"] = 2  # the caller's dict changes after the write: not what was stored
    (read,) = await store.events()
    assert read.data == {"list": [1, 2], "n": 1}
    read.data["n"] = 3  # nor does a reader's change reach the store or other readers
    read.data["list"].append(3)
    assert (await store.events())[0].data == {"list": [1, 2], "n": 1}
    assert (await store.events_since(0))[0].data == {"list": [1, 2], "n": 1}


# --- CAs cooling down (acme.issuers) --------------------------------------------------

async def test_issuer_cooldowns(store):
    a, b = "https://ca-a.example/dir", "https://ca-b.example/dir"
    assert await store.issuer_cooldowns(T0) == {}
    await store.set_issuer_cooldown(a, T0 + timedelta(minutes=5), "down: refused")
    await store.set_issuer_cooldown(b, T0 + timedelta(minutes=1), "rateLimited: slow")
    assert await store.issuer_cooldowns(T0) == {
        a: (T0 + timedelta(minutes=5), "down: refused"),
        b: (T0 + timedelta(minutes=1), "rateLimited: slow")}
    # a cooldown is over at its end; a second one replaces the first
    assert list(await store.issuer_cooldowns(T0 + timedelta(minutes=1))) == [a]
    await store.set_issuer_cooldown(a, T0 + timedelta(minutes=2), "5xx: 503")
    until, reason = (await store.issuer_cooldowns(T0))[a]
    assert (until, reason) == (T0 + timedelta(minutes=2), "5xx: 503")
    assert until.utcoffset() == timedelta(0)
    # ended early (the CA answered); idempotent
    await store.set_issuer_cooldown(a, None)
    await store.set_issuer_cooldown(a, None)
    assert list(await store.issuer_cooldowns(T0)) == [b]


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
    await store.release_lease("issue:nothing", "a")  # releasing no lease is harmless


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


async def test_extend_lease_only_by_its_holder(store):
    until = T0 + timedelta(minutes=5)
    assert not await store.extend_lease("monitor", "a", until)  # no lease: nothing to extend
    assert await store.acquire_lease("monitor", "a", until, T0)
    assert not await store.extend_lease("monitor", "b", until + timedelta(hours=1))
    assert await store.extend_lease("monitor", "a", T0 + timedelta(minutes=20))
    assert await store.leases(T0) == [("monitor", "a", T0 + timedelta(minutes=20))]
    assert await store.lease_holder("monitor", T0 + timedelta(minutes=19)) == "a"
    # expired, taken by nobody since: still its holder's to extend (nobody else worked)
    late = T0 + timedelta(minutes=30)
    assert await store.extend_lease("monitor", "a", late + timedelta(minutes=5))
    assert await store.lease_holder("monitor", late) == "a"
    # taken over (or expired and acquired) by another: the old holder's extension fails
    assert await store.take_over_lease("monitor", "a", "b", late + timedelta(minutes=5))
    assert not await store.extend_lease("monitor", "a", late + timedelta(hours=1))
    assert await store.lease_holder("monitor", late) == "b"
    await store.release_lease("monitor", "b")
    assert not await store.extend_lease("monitor", "b", late + timedelta(hours=1))
    # purged once expired: gone
    assert await store.acquire_lease("monitor", "c", late + timedelta(minutes=1), late)
    assert await store.purge_leases(late + timedelta(minutes=2)) == 1
    assert not await store.extend_lease("monitor", "c", late + timedelta(hours=1))


async def test_extend_lease_in_a_unit_of_work_fences_a_take_over(any_backend):
    # the holder checks its lease inside a unit of work (the writes after an issuance): a
    # take-over by another instance started meanwhile waits until the unit has committed
    # (PostgreSQL's row lock, SQLite's write lock, memory's gate), so it never lands between
    # the check and the writes it guards
    async with any_backend() as a, any_backend() as b:
        until = T0 + timedelta(minutes=5)
        assert await a.acquire_lease("issue:portal", "a", until, T0)
        checked, go_on = asyncio.Event(), asyncio.Event()
        order: list[str] = []

        async def holder() -> bool:
            async with a.transaction():
                held = await a.extend_lease("issue:portal", "a", until + timedelta(minutes=1))
                checked.set()
                await go_on.wait()
                await a.add_event(Event("issue.ok", "stored under the lease", at=T0))
            order.append("committed")
            return held

        async def other() -> bool:
            await checked.wait()
            took = await b.take_over_lease("issue:portal", "a", "b", until)
            # what the take-over saw committed (the two tasks' wake-ups after the commit
            # come in either order, so the order of appends proves nothing by itself)
            order.append(("taken over", [e.message for e in await b.events()]))
            return took

        unit = asyncio.create_task(holder())
        rival = asyncio.create_task(other())
        await checked.wait()
        await asyncio.sleep(0.2)
        assert order == []  # the take-over waits for the unit
        go_on.set()
        assert await unit and await rival
        assert sorted(order, key=str) == [("taken over", ["stored under the lease"]),
                                          "committed"]
        assert [e.message for e in await b.events()] == ["stored under the lease"]
        assert await b.lease_holder("issue:portal", T0) == "b"
        assert not await a.extend_lease("issue:portal", "a", until)  # fenced off now


async def test_concurrent_lease_race_has_one_winner(any_backend):
    async with (any_backend() as a, any_backend() as b, any_backend() as c,
                any_backend() as d):
        until = T0 + timedelta(minutes=5)
        won = await asyncio.gather(*(
            s.acquire_lease("issue:portal", f"owner-{i}", until, T0)
            for i, s in enumerate((a, b, c, d, a, b))))
        assert sum(won) == 1
        (winner,) = [f"owner-{i}" for i, w in enumerate(won) if w]
        assert await c.lease_holder("issue:portal", T0) == winner


async def test_concurrent_take_overs_have_one_winner(any_backend):
    async with any_backend() as a, any_backend() as b:
        until = T0 + timedelta(minutes=5)
        assert await a.acquire_lease("issue:portal", "dead", until, T0)
        won = await asyncio.gather(*(s.take_over_lease("issue:portal", "dead", f"heir-{i}",
                                                       until)
                                     for i, s in enumerate((a, b, a, b))))
        assert sum(won) == 1


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
    await store.ledger_add("order", [], T0)  # nothing to add
    assert await store.ledger_times("order", "example.org", T0 - timedelta(1)) == [
        T0, T0 + timedelta(hours=1)]
    assert await store.ledger_times("order", "example.org", T0) == [T0 + timedelta(hours=1)]
    assert await store.ledger_times("order", "example.com", T0 - timedelta(1)) == []
    assert await store.ledger_purge(T0 + timedelta(hours=1)) == 3
    assert await store.ledger_times("cert", "example.org", T0) == [T0 + timedelta(hours=2)]


async def test_ledger_times_are_oldest_first_whatever_the_order_added(store):
    for hours in (3, 1, 2):
        await store.ledger_add("order", ["example.org"], T0 + timedelta(hours=hours))
    assert await store.ledger_times("order", "example.org", T0) == [
        T0 + timedelta(hours=h) for h in (1, 2, 3)]


async def test_ledger_take_records_while_under_the_limit(store):
    hour = timedelta(hours=1)
    await store.ledger_add("api_alias", ["ci"], T0 - 2 * hour)  # out of the window
    for minutes in (0, 10, 20):
        at = T0 + timedelta(minutes=minutes)
        assert await store.ledger_take("api_alias", "ci", at, since=at - hour, limit=3) is None
    late = T0 + timedelta(minutes=30)
    # full: nothing recorded, and the answer is the entry whose leaving frees a slot
    assert await store.ledger_take("api_alias", "ci", late, since=late - hour, limit=3) == T0
    assert await store.ledger_take("api_alias", "ci", late, since=late - hour, limit=2) == (
        T0 + timedelta(minutes=10))
    assert await store.ledger_take("api_alias", "ops", late, since=late - hour, limit=3) is None
    assert await store.ledger_take("order", "ci", late, since=late - hour, limit=1) is None
    assert await store.ledger_times("api_alias", "ci", T0 - 3 * hour) == [
        T0 - 2 * hour, T0, T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)]
    after = T0 + timedelta(minutes=61)  # the first one has left the window
    assert await store.ledger_take("api_alias", "ci", after, since=after - hour,
                                   limit=3) is None
    assert await store.ledger_take("api_alias", "ci", after, since=after - hour,
                                   limit=0) == after  # never a slot


async def test_ledger_take_in_a_rolled_back_unit_gives_the_slot_back(store):
    since = T0 - timedelta(hours=1)
    with pytest.raises(RuntimeError):
        async with store.transaction():
            assert await store.ledger_take("api_alias", "ci", T0, since=since, limit=1) is None
            raise RuntimeError("the alias was there already")
    assert await store.ledger_times("api_alias", "ci", since) == []
    assert await store.ledger_take("api_alias", "ci", T0, since=since, limit=1) is None


async def test_concurrent_ledger_takes_never_pass_the_limit(any_backend):
    # handles as processes: every take of every handle races for 5 slots
    async with any_backend() as a, any_backend() as b, any_backend() as c:
        since = T0 - timedelta(hours=1)
        takes = [h.ledger_take("api_alias", "ci", T0 + timedelta(seconds=i), since=since,
                               limit=5) for i, h in enumerate([a, b, c] * 8)]
        results = await asyncio.gather(*takes)
        assert sum(r is None for r in results) == 5
        assert all(r is None or since < r <= T0 + timedelta(seconds=23) for r in results)
        assert len(await c.ledger_times("api_alias", "ci", since)) == 5


# --- the change stamp (what the API's rendered reads are cached against) ---------------------

async def test_change_stamp_moves_with_every_write_a_view_shows(any_backend):
    async with any_backend() as a, any_backend() as b:  # b writes, a reads: two processes
        seen = [await a.change_stamp()]

        async def moved() -> bool:
            seen.append(await a.change_stamp())
            return seen[-1] != seen[-2]

        alias = Alias("shop.example.com", ("web",), "ops", T0)
        await b.add_alias(alias)
        assert await moved()
        await b.add_alias(replace(alias, created_by="other"))  # an idempotent repeat
        assert not await moved()
        await b.add_certificate(cert("shop.example.com", "01", domains=("shop.example.com",)))
        assert await moved()
        await b.put_state(CertificateState("shop.example.com", CertStatus.ISSUED,
                                           updated_at=T0))
        assert await moved()
        await b.put_state(CertificateState("shop.example.com", CertStatus.FAILED, "boom", 1,
                                           T0 + timedelta(minutes=1), updated_at=T0))
        assert await moved()
        await b.put_ari(AriState("shop.example.com", "01", T0, T0 + timedelta(days=1), T0,
                                 T0 + timedelta(hours=6), checked_at=T0))
        assert await moved()
        await b.put_deployment(Deployment("shop.example.com", "web", "fe1", "01",
                                          DeployStatus.DEPLOYED, "ok", T0))
        assert await moved()
        await b.put_deployment(Deployment("shop.example.com", "web", "fe1", "01",
                                          DeployStatus.FAILED, "down", T0))
        assert await moved()
        # what no view shows leaves it alone
        await b.add_event(Event("issue.ok", "noted", at=T0))
        await b.ledger_add("order", ["shop.example.com"], T0)
        await b.put_challenge(challenge(cert_name="shop.example.com"))
        await b.details(["shop.example.com"])
        assert not await moved()
        await b.save_account(Account("https://ca/dir", "https://ca/acct/1", "KEY", T0))
        assert await moved()
        await b.mark_alias_removing("shop.example.com")
        assert await moved()
        await b.destroy_keys("shop.example.com")
        assert await moved()
        await b.delete_alias("shop.example.com")
        assert await moved()
        assert len(set(seen)) == len(seen) - 2  # never back to an earlier value


async def test_change_stamp_of_a_unit_of_work_shows_at_its_commit(any_backend):
    async with any_backend() as a, any_backend() as b:
        before = await a.change_stamp()
        with pytest.raises(RuntimeError):
            async with b.transaction():
                await b.put_state(CertificateState("portal", CertStatus.ISSUING, updated_at=T0))
                raise RuntimeError("rolled back")
        assert await a.change_stamp() == before
        wrote = asyncio.Event()
        go_on = asyncio.Event()

        async def unit() -> None:
            async with b.transaction():
                await b.put_state(CertificateState("portal", CertStatus.ISSUING, updated_at=T0))
                wrote.set()
                await go_on.wait()

        task = asyncio.create_task(unit())
        await wrote.wait()
        assert await a.change_stamp() == before  # not committed yet
        go_on.set()
        await task
        assert await a.change_stamp() != before


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


async def test_details_for_many_names_at_once(store):
    await store.add_certificate(cert("a", "01"))
    second = await store.add_certificate(cert("a", "02", domains=("a.example", "b.example")))
    await store.put_state(CertificateState("a", CertStatus.DEPLOYED, updated_at=T0))
    ari = AriState("a", "02", None, None, None, T0 + timedelta(hours=6), checked_at=T0)
    await store.put_ari(ari)
    for frontend, node in (("web", "fe2"), ("edge", "fe9"), ("web", "fe1")):
        await store.put_deployment(Deployment("a", frontend, node, "02",
                                              DeployStatus.DEPLOYED, "ok", T0))
    await store.put_state(CertificateState("b", CertStatus.PENDING, updated_at=T0))
    details = await store.details(["a", "b", "nothing", "a"])
    assert list(details) == ["a", "b", "nothing"]  # each asked name once, in that order
    a = details["a"]
    assert (a.summary.serial, a.summary.domains, a.summary.not_after) == (
        "02", ("a.example", "b.example"), second.not_after)
    assert a.state.status is CertStatus.DEPLOYED and a.ari == ari
    assert [(d.frontend, d.node) for d in a.deployments] == [
        ("edge", "fe9"), ("web", "fe1"), ("web", "fe2")]
    assert details["b"].summary is None and details["b"].state.status is CertStatus.PENDING
    empty = details["nothing"]
    assert (empty.summary, empty.state, empty.ari, empty.deployments) == (None, None, None, ())
    assert await store.details([]) == {}
    many = await store.details([f"n{i}" for i in range(1200)] + ["a"])  # past any batch size
    assert len(many) == 1201 and many["a"].summary.serial == "02"


# --- custom-domain aliases ---------------------------------------------------------------

async def test_aliases(store):
    assert await store.get_alias("shop.example.com") is None
    assert await store.list_aliases() == []
    alias = Alias("shop.example.com", ("web", "edge"), "ops", T0)
    stored, created = await store.add_alias(alias)
    assert created and stored == alias
    # adding again, even with other details, keeps the first and says it created nothing
    again, created = await store.add_alias(Alias("shop.example.com", ("web",), "other",
                                                 T0 + timedelta(days=1)))
    assert not created and again == alias
    assert await store.get_alias("shop.example.com") == alias
    await store.mark_alias_removing("shop.example.com")
    removing = await store.get_alias("shop.example.com")
    assert removing.removing and replace(removing, removing=False) == alias
    # an add while it is being removed creates nothing and shows it removing
    assert await store.add_alias(alias) == (removing, False)
    await store.delete_alias("shop.example.com")
    assert await store.get_alias("shop.example.com") is None
    await store.delete_alias("shop.example.com")  # deleting twice is fine
    await store.mark_alias_removing("shop.example.com")  # so is marking one that is gone
    assert await store.get_alias("shop.example.com") is None
    # added again after its removal: a new alias, not being removed
    stored, created = await store.add_alias(replace(alias, removing=True))
    assert created and not stored.removing


async def test_alias_keeps_its_validation(store):
    # issue 14, item 4: an alias added with validation dns-persist reads back with it; the
    # default (and what aliases stored before the column existed read as) is http-01
    persist = Alias("persist.example.com", ("web",), "ops", T0, validation="dns-persist")
    stored, created = await store.add_alias(persist)
    assert created and stored == persist and stored.validation == "dns-persist"
    await store.add_alias(Alias("plain.example.com", ("web",), "ops", T0))
    by_domain = {a.domain: a.validation for a in await store.list_aliases()}
    assert by_domain == {"persist.example.com": "dns-persist", "plain.example.com": "http-01"}
    # a repeat with another validation keeps the first (the service layer refuses it)
    again, created = await store.add_alias(replace(persist, validation="http-01"))
    assert not created and again.validation == "dns-persist"
    await store.mark_alias_removing("persist.example.com")
    assert (await store.get_alias("persist.example.com")).validation == "dns-persist"
    await store.put_state(CertificateState("persist.example.com", CertStatus.AWAITING_DNS,
                                           attempts=2, next_attempt_at=T0, updated_at=T0))
    assert (await store.get_state("persist.example.com")).status is CertStatus.AWAITING_DNS


async def test_aliases_page_in_domain_order(store):
    domains = ["b.example", "a.example", "xn--bcher-kva.example", "c.example", "aa.example"]
    for d in domains:
        await store.add_alias(Alias(d, ("web",), "ops", T0))
    ordered = sorted(domains)
    assert [a.domain for a in await store.list_aliases()] == ordered
    pages, after = [], None
    while True:
        page = await store.list_aliases(limit=2, after=after)
        if not page:
            break
        pages.append([a.domain for a in page])
        after = page[-1].domain
    assert pages == [ordered[0:2], ordered[2:4], ordered[4:]]
    assert [a.domain for a in await store.list_aliases(after="b.example")] == [
        "c.example", "xn--bcher-kva.example"]
    assert await store.list_aliases(limit=0) == []
    assert await store.list_aliases(after="zzz") == []


async def test_alias_statuses_in_one_read(store):
    assert await store.alias_statuses() == {}
    for d in ("new.example", "bad.example", "ok.example", "gone.example"):
        await store.add_alias(Alias(d, ("web",), "ops", T0))
    await store.put_state(CertificateState("bad.example", CertStatus.FAILED, "boom", 1))
    await store.put_state(CertificateState("ok.example", CertStatus.DEPLOYED))
    await store.put_state(CertificateState("gone.example", CertStatus.DEPLOYED))
    await store.put_state(CertificateState("portal", CertStatus.DEPLOYED))  # not an alias
    await store.mark_alias_removing("gone.example")
    assert await store.alias_statuses() == {
        "new.example": "pending", "bad.example": "failed", "ok.example": "deployed",
        "gone.example": "removing"}


async def test_concurrent_adds_of_one_alias_create_it_once(any_backend):
    async with any_backend() as a, any_backend() as b:
        results = await asyncio.gather(*(
            s.add_alias(Alias("shop.example.com", ("web",), f"token-{i}", T0))
            for i, s in enumerate((a, b, a, b))))
        assert sum(created for _, created in results) == 1
        (first,) = [alias for alias, created in results if created]
        assert {alias for alias, _ in results} == {first}  # everyone sees the one stored
        assert await b.list_aliases() == [first]


# --- alerts ----------------------------------------------------------------------------------

async def test_alerts(store):
    assert await store.active_alerts() == []
    b, a = alert("stale", "b.example"), alert("expiry", "a.example")
    await store.put_alert(b)
    await store.put_alerts([a, alert("chain", "c.example")])
    await store.put_alerts([])  # nothing to put
    assert [x.finding.key for x in await store.active_alerts()] == sorted(
        [a.finding.key, b.finding.key, "chain|c.example|web/fe1"])
    assert (await store.active_alerts())[1] == a
    # put again by key: replaced, not added
    notified = replace(a, last_seen=T0 + timedelta(hours=1), notified_at=T0,
                       notified_severity=Severity.WARNING)
    await store.put_alert(notified)
    active = {x.finding.key: x for x in await store.active_alerts()}
    assert len(active) == 3 and active[a.finding.key] == notified
    # resolved ones leave the active list; unknown keys and resolving twice do nothing
    await store.resolve_alerts([a.finding.key, "nope|x|y"], T0 + timedelta(hours=2))
    await store.resolve_alerts([a.finding.key], T0 + timedelta(hours=5))
    await store.resolve_alerts([], T0)
    assert {x.finding.key for x in await store.active_alerts()} == {
        b.finding.key, "chain|c.example|web/fe1"}
    # the resolved row is still there until purged: putting it again (a finding back)
    # replaces it as active
    assert await store.purge_resolved(T0 + timedelta(hours=2)) == 0  # resolved at 2h: not before
    assert await store.purge_resolved(T0 + timedelta(hours=3)) == 1
    assert await store.purge_resolved(T0 + timedelta(hours=3)) == 0
    await store.put_alert(a)
    assert a in await store.active_alerts()


async def test_an_alert_put_resolved_is_not_active(store):
    await store.put_alerts([alert(resolved=T0), alert("stale")])
    assert [x.finding.check for x in await store.active_alerts()] == ["stale"]
    assert await store.purge_resolved(T0 + timedelta(seconds=1)) == 1


# --- Salt pull mode's one-shot bundle tokens ---------------------------------------------

async def test_bundle_token_is_taken_once_even_concurrently(any_backend):
    async with any_backend() as a, any_backend() as b:
        digest, batch = "d" * 64, "b" * 16
        await a.create_bundle_token(digest, batch=batch, minion="fe1",
                                    items=[("portal", "0a1b"), ("shop", "0c")], now=T0,
                                    expires_at=T0 + timedelta(minutes=2))
        assert await a.take_bundle_token(digest, "f" * 16, T0) is None  # another batch
        assert await a.take_bundle_token("e" * 64, batch, T0) is None  # unknown
        got = await asyncio.gather(*(s.take_bundle_token(digest, batch, T0)
                                     for s in (a, b, a, b)))
        winners = [g for g in got if g is not None]
        assert winners == [BundleGrant(batch, "fe1", (("portal", "0a1b"), ("shop", "0c")))]
        assert await b.take_bundle_token(digest, batch, T0) is None  # replayed


async def test_bundle_tokens_expire(store):
    batch = "b" * 16
    await store.create_bundle_token("1" * 64, batch=batch, minion="fe1", items=[], now=T0,
                                    expires_at=T0 + timedelta(seconds=5))
    await store.create_bundle_token("2" * 64, batch=batch, minion="fe2", items=[], now=T0,
                                    expires_at=T0 + timedelta(minutes=5))
    await store.create_bundle_token("3" * 64, batch="o" * 16, minion="fe1", items=[],
                                    now=T0, expires_at=T0 + timedelta(seconds=5))
    await store.create_bundle_token("4" * 64, batch="o" * 16, minion="fe2", items=[],
                                    now=T0, expires_at=T0 + timedelta(minutes=5))
    assert await store.take_bundle_token("1" * 64, batch, T0 + timedelta(seconds=5)) is None
    grant = await store.take_bundle_token("2" * 64, batch, T0 + timedelta(seconds=5))
    assert grant == BundleGrant(batch, "fe2", ())
    # the job is over: every token of its batch goes, used or not, and every expired one
    assert await store.expire_bundle_tokens(T0 + timedelta(seconds=5), batch) == 3
    assert await store.expire_bundle_tokens(T0 + timedelta(seconds=5), batch) == 0
    assert await store.take_bundle_token("4" * 64, "o" * 16, T0) is not None
    assert await store.expire_bundle_tokens(T0 + timedelta(minutes=5)) == 1


async def test_a_bundle_token_is_created_once(store):
    kwargs = {"batch": "b" * 16, "minion": "fe1", "items": [], "now": T0,
              "expires_at": T0 + timedelta(minutes=2)}
    await store.create_bundle_token("1" * 64, **kwargs)
    with pytest.raises(StoreError):
        await store.create_bundle_token("1" * 64, **kwargs)


# --- several handles on one store, like several processes ---------------------------------

async def test_two_handles_on_one_store(any_backend):
    async with any_backend() as one, any_backend() as two:
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

        # one event log: ids from both handles grow, and each feed sees the other's
        await one.add_event(Event("issue.ok", "from one", at=T0))
        await two.add_event(Event("deploy.failed", "from two", at=T0))
        assert [e.message for e in await one.events_since(0)] == ["from one", "from two"]
        assert await one.last_event_id() == await two.last_event_id()
        assert await one.event_counts() == {"issue.ok": 1, "deploy.failed": 1}


# --- units of work (transactions) ----------------------------------------------------------

async def test_a_unit_of_work_commits_together(store):
    async with store.transaction():
        first = await store.add_certificate(cert(serial="01"))
        await store.put_state(CertificateState("portal", CertStatus.ISSUED, updated_at=T0))
        await store.add_event(Event("issue.ok", "issued", certificate="portal", at=T0))
        # inside, the unit sees its own writes
        assert await store.current_certificate("portal") == first
        async with store.transaction():  # nested: part of the outer one
            await store.save_order(Order("portal", "https://ca/order/01", "valid", T0))
    assert await store.current_certificate("portal") == first
    assert (await store.get_state("portal")).status is CertStatus.ISSUED
    assert [e.message for e in await store.events()] == ["issued"]
    assert [o.url for o in await store.orders("portal")] == ["https://ca/order/01"]


async def test_a_failed_unit_of_work_leaves_nothing(store):
    await store.put_state(CertificateState("portal", CertStatus.ISSUING, updated_at=T0))
    last = await store.last_event_id()
    with pytest.raises(RuntimeError, match="boom"):
        async with store.transaction():
            await store.add_certificate(cert(serial="01"))
            await store.put_state(CertificateState("portal", CertStatus.ISSUED, updated_at=T0))
            await store.add_event(Event("issue.ok", "issued", at=T0))
            async with store.transaction():
                await store.save_order(Order("portal", "https://ca/order/01", "valid", T0))
            raise RuntimeError("boom")
    assert await store.current_certificate("portal") is None
    assert await store.certificate_history("portal") == []
    assert (await store.get_state("portal")).status is CertStatus.ISSUING
    assert await store.events() == [] and await store.last_event_id() == last
    assert await store.event_counts() == {}
    assert await store.orders() == []
    # and the store works on afterwards
    assert (await store.add_certificate(cert(serial="02"))).serial == "02"


@pytest.mark.parametrize("fails", [False, True], ids=["committed", "rolled-back"])
async def test_a_unit_of_work_keeps_other_writers_apart(any_backend, fails):
    """Writes of other tasks, on this handle or another, made while a unit is open are not
    part of it: neither lost when it commits nor taken back when it fails."""
    async with any_backend() as one, any_backend() as two:
        entered, release = asyncio.Event(), asyncio.Event()

        async def unit() -> None:
            async with one.transaction():
                await one.put_state(CertificateState("inside", updated_at=T0))
                await one.add_event(Event("issue.ok", "inside", at=T0))
                entered.set()
                await release.wait()
                if fails:
                    raise RuntimeError("rolled back")

        task = asyncio.create_task(unit())
        await entered.wait()
        writes = [asyncio.create_task(one.put_state(CertificateState("same", updated_at=T0))),
                  asyncio.create_task(two.put_state(CertificateState("other", updated_at=T0))),
                  asyncio.create_task(two.add_event(Event("deploy.ok", "other", at=T0)))]
        await asyncio.sleep(0)
        release.set()
        if fails:
            with pytest.raises(RuntimeError, match="rolled back"):
                await task
        else:
            await task
        await asyncio.gather(*writes)
        assert (await one.get_state("inside") is None) == fails
        assert (await one.get_state("same")).name == "same"
        assert (await two.get_state("other")).name == "other"
        events = await two.events_since(0)
        assert sorted(e.message for e in events) == (["other"] if fails else ["inside", "other"])
        assert len({e.id for e in events}) == len(events)


# --- retention (issue 10): events, counters, private keys ---------------------------------

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


async def test_event_counters_follow_inserts_from_any_handle(any_backend):
    async with any_backend() as one, any_backend() as two:
        await one.add_event(Event("deploy.failed", "a"))
        await two.add_event(Event("deploy.failed", "b"))
        assert await one.event_counts() == {"deploy.failed": 2}


async def test_metrics_counters_survive_a_purge(store):
    from certd.metrics import Sources, render

    for i, kind in enumerate(["issue.ok", "issue.ok", "issue.failed", "deploy.ok",
                              "deploy.failed", "deploy.ok"]):
        await store.add_event(Event(kind, kind, at=T0 + timedelta(hours=i)))

    async def samples() -> dict:
        from prometheus_client.parser import text_string_to_metric_families

        class NoIssuers(list):  # a pool without CAs: this test reads the event counters
            async def refresh(self, now):
                pass

        text = (await render(Sources(SimpleNamespace(store=store,
                                                     issuers=NoIssuers())))).decode()
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


async def test_wipe_keys_of_one_name(store):
    day = timedelta(days=1)
    for name in ("a", "b"):
        await store.add_certificate(keyed(name, "01", T0, f"{name}1"))
        await store.add_certificate(keyed(name, "02", T0 + day, f"{name}2"))
        await store.save_order(Order(name, f"https://ca/order/{name}", "invalid", T0,
                                     key_pem="order-key"))
    assert await store.wipe_keys("a", superseded_before=T0 + 10 * day) == 2
    assert [c.key_pem == "" for c in await store.certificate_history("a")] == [True, False]
    assert [c.key_pem == "" for c in await store.certificate_history("b")] == [False, False]
    assert (await store.orders("b"))[0].key_pem == "order-key"
    assert await store.wipe_keys(superseded_before=T0 + 10 * day) == 2  # now b's


async def test_destroy_keys(store):
    for i in range(3):
        await store.add_certificate(keyed("gone.example", f"0{i}", T0 + timedelta(days=i),
                                          pem_body()))
        await store.add_certificate(keyed("stays.example", f"1{i}", T0, pem_body()))
    await store.save_order(Order("gone.example", "https://ca/order/g", "ready", T0,
                                 domains=("gone.example",), key_pem="order-key-g"))
    await store.save_order(Order("stays.example", "https://ca/order/s", "ready", T0,
                                 domains=("stays.example",), key_pem="order-key"))
    await store.put_challenge(challenge("g" * 43, cert_name="gone.example"))
    await store.put_challenge(challenge("s" * 43, cert_name="stays.example"))
    assert await store.destroy_keys("gone.example") == 4
    # the rows stay as history; none of them is current any more (nothing to deploy)
    history = await store.certificate_history("gone.example")
    assert [(c.serial, c.key_pem) for c in history] == [(f"0{i}", "") for i in range(3)]
    assert await store.current_certificate("gone.example") is None
    assert "gone.example" not in await store.overview()
    assert (await store.details(["gone.example"]))["gone.example"].summary is None
    # its unfinished order is abandoned with its key; its challenges are gone
    (order,) = await store.orders("gone.example")
    assert (order.status, order.key_pem, order.error) == (
        "invalid", None, "abandoned: keys destroyed")
    assert await store.unfinished_orders() == [
        Order("stays.example", "https://ca/order/s", "ready", T0, domains=("stays.example",),
              key_pem="order-key")]
    assert await store.get_key_authorization("g" * 43, T0) is None
    assert await store.get_key_authorization("s" * 43, T0) is not None
    assert (await store.current_certificate("stays.example")).serial == "12"
    assert await store.destroy_keys("gone.example") == 0  # idempotent
    # added again later: a new certificate is current again
    await store.add_certificate(keyed("gone.example", "09", T0 + timedelta(days=9), "new"))
    assert (await store.current_certificate("gone.example")).serial == "09"


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
