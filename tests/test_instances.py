"""Work claimed once across instances sharing a store (issue 13, item 3), on every backend:
the event forwarder's per-event claim, the monitor sweep's lease, the ARI check's lease."""

from __future__ import annotations

from datetime import timedelta

from certd.config import Config
from certd.model import Event, Severity, utcnow
from certd.monitor.events import EventForwarder
from certd.scheduler import MONITOR_LEASE, Scheduler
from certd.service import Certd
from certd.sweep import Sweeper


class Sent:
    def __init__(self):
        self.messages: list[str] = []

    async def notify(self, notification) -> None:
        self.messages.append(notification.message)


async def test_two_forwarders_send_each_failure_once(any_backend):
    async with any_backend() as a, any_backend() as b:
        sent = Sent()
        forwarders = [EventForwarder(a, sent), EventForwarder(b, sent)]
        for f in forwarders:
            await f.start()
        for i in range(5):
            await a.add_event(Event("issue.failed", f"failure {i}", Severity.ERROR))
        await b.add_event(Event("issue.ok", "not a failure"))
        assert sum([await f.forward() for f in forwarders]) == 5
        assert sum([await f.forward() for f in reversed(forwarders)]) == 0
        assert sorted(sent.messages) == [f"failure {i}" for i in range(5)]


class CountingMonitor:
    def __init__(self, config):
        self.config = config
        self.sweeps = 0

    async def sweep(self) -> None:
        self.sweeps += 1


def instance(store, now) -> tuple[Scheduler, CountingMonitor]:
    config = Config.model_validate({"monitor": {"interval": "1h", "jitter": "5m"}})
    certd = Certd(config, store, issuer=None, deployers_by_frontend={}, clock=lambda: now[0])
    monitor = CountingMonitor(config.monitor)
    return Scheduler(Sweeper(certd), config.renewal, monitor=monitor), monitor


async def test_the_monitor_sweep_runs_once_per_interval_across_instances(any_backend):
    now = [utcnow()]
    async with any_backend() as a, any_backend() as b:
        (one, m1), (two, m2) = instance(a, now), instance(b, now)
        await one._shared_monitor_sweep()
        await two._shared_monitor_sweep()  # the other instance swept lately
        assert (m1.sweeps, m2.sweeps) == (1, 0)
        now[0] += timedelta(minutes=30)
        await two._shared_monitor_sweep()
        assert (m1.sweeps, m2.sweeps) == (1, 0)
        await one._shared_monitor_sweep()  # its own lease: it goes on sweeping
        assert (m1.sweeps, m2.sweeps) == (2, 0)
        assert await a.lease_holder(MONITOR_LEASE, now[0]) == one.sweeper.certd.owner
        now[0] += timedelta(minutes=60)  # the holder stopped sweeping (died): it expired
        await two._shared_monitor_sweep()
        assert (m1.sweeps, m2.sweeps) == (2, 1)


# --- heartbeats (issue 13, item 7) ---------------------------------------------------------

async def test_heartbeat_rows_leases_and_the_status_view(any_backend):
    from certd import instances
    from certd.model import Instance

    now = utcnow()
    async with any_backend() as a, any_backend() as b:
        one = instances.this_instance("host1:101:aaaa", now, now)
        two = instances.this_instance("host2:202:bbbb", now, now)
        assert (one.host, one.pid) == ("host1", 101)
        await instances.beat(a, one, now)
        await instances.beat(b, two, now)
        await instances.beat(a, one, now + timedelta(seconds=5))  # the same row, updated
        rows = await b.instances()
        assert [(r.id, r.host, r.pid) for r in rows] == [(one.id, "host1", 101),
                                                         (two.id, "host2", 202)]
        assert rows[0].started_at == now and rows[0].last_seen_at == now + timedelta(seconds=5)
        assert await a.acquire_lease("issue:x", one.id, now + timedelta(minutes=1), now)
        assert await b.acquire_lease("deploy:y", two.id, now + timedelta(minutes=1), now)
        assert await a.acquire_lease("gone", one.id, now, now - timedelta(seconds=1))
        assert [(n, o) for n, o, _ in await b.leases(now)] == [("deploy:y", two.id),
                                                               ("issue:x", one.id)]
        later = now + instances.ALIVE_WITHIN + timedelta(seconds=1)
        view = await instances.view(a, later)
        assert view["store"]["ok"] and view["alive"] == 1  # two's last beat is too old
        assert [(i["id"], i["alive"], i["leases"]) for i in view["instances"]] == [
            (one.id, True, ["issue:x"]), (two.id, False, ["deploy:y"])]
        assert await instances.stopped(a, two.id, later)
        assert not await instances.stopped(a, one.id, later)
        assert not await instances.stopped(a, "cli:1:cccc", later)  # no row: not judged
        await a.remove_instance(one.id)
        await a.remove_instance(one.id)  # idempotent
        assert [r.id for r in await b.instances()] == [two.id]
        # rows of instances gone for longer than FORGET_AFTER are dropped by any beat
        far = now + instances.FORGET_AFTER + timedelta(minutes=1)
        await instances.beat(a, Instance("h:3:c", "h", 3, far, far), far)
        assert [r.id for r in await b.instances()] == ["h:3:c"]


async def test_a_lease_whose_holders_heartbeat_stopped_is_taken_over(any_backend):
    from certd import instances

    now = [utcnow()]
    async with any_backend() as a, any_backend() as b:
        config = Config()
        first = Certd(config, a, None, {}, owner="elsewhere:1:aaaa", clock=lambda: now[0])
        second = Certd(config, b, None, {}, owner="elsewhere:2:bbbb", clock=lambda: now[0])
        await instances.beat(a, instances.this_instance(first.owner, now[0], now[0]), now[0])
        assert await first._try_lease("issue:x")
        assert not await second._try_lease("issue:x")  # alive, on another host
        now[0] += instances.ALIVE_WITHIN + timedelta(seconds=1)  # it stopped beating
        assert await second._try_lease("issue:x")  # long before the lease would expire
        assert await b.lease_holder("issue:x", now[0]) == second.owner


async def test_expired_leases_are_purged(any_store):
    now = utcnow()
    assert await any_store.acquire_lease("event:1", "a", now + timedelta(days=2), now)
    assert await any_store.acquire_lease("event:2", "a", now + timedelta(seconds=1), now)
    later = now + timedelta(seconds=1)
    assert await any_store.purge_leases(later) == 1
    assert await any_store.purge_leases(later) == 0
    assert [n for n, _, _ in await any_store.leases(later)] == ["event:1"]


async def test_the_ari_check_runs_once_per_certificate_across_instances(any_backend):
    import asyncio

    from certd.model import AriState
    from tests.test_deploy_file import issued

    now = [utcnow()]
    checked: list[str] = []

    class Counting(Sweeper):
        async def check_ari(self, name):  # what the CA is asked, counted
            checked.append(self.certd.owner)
            await asyncio.sleep(0.05)  # the other instance tries meanwhile
            cert = await self.store.current_certificate(name)
            state = AriState(name, cert.serial, None, None, None, now[0] + timedelta(hours=6))
            await self.store.put_ari(state)
            return state

    async with any_backend() as a, any_backend() as b:
        await a.add_certificate(issued("portal", "portal.example.org"))
        sweepers = [Counting(Certd(Config(), s, None, {}, owner=f"h:{i}:x",
                                   clock=lambda: now[0])) for i, s in enumerate((a, b))]
        await asyncio.gather(*(s._check_ari(["portal"]) for s in sweepers))
        assert len(checked) == 1
        await sweepers[1]._check_ari(["portal"])  # checked again under the lease: not due
        assert len(checked) == 1
        now[0] += timedelta(hours=7)
        await sweepers[1]._check_ari(["portal"])
        assert len(checked) == 2 and await a.lease_holder("ari:portal", now[0]) is None


# --- fencing: the writes after an issuance need the lease still held ----------------------

class _TakenOverMidOrder:
    """An issuer whose order takes long enough for another instance to take the lease over
    (the holder cut off from the store: its heartbeat stopped), as `take_over` says."""

    def __init__(self, take_over=None):
        from types import SimpleNamespace

        self.take_over = take_over
        self.finished_orders: list[str] = []
        # http-01 through the nodes (no dns-01 solver to set up or wait for)
        self.solvers = SimpleNamespace(all=lambda: (), for_identifier=lambda spec, name: None)

    async def issue(self, spec, *, replaces=None, resume=None, key_pem=None):
        from dataclasses import replace as with_

        from tests.test_deploy_file import issued

        if self.take_over is not None:
            await self.take_over()
        return with_(issued(spec.name, spec.domains[0]), order_url="https://ca/order/1")

    async def finished(self, order_url, spec) -> None:
        self.finished_orders.append(order_url)


async def test_an_instance_that_lost_its_issue_lease_stores_nothing(any_backend):
    from certd import instances
    from certd.model import CertificateSpec

    now = [utcnow()]
    config = Config.model_validate({"domains": {"preflight": False}, "acme": {"ari": False}})
    spec = CertificateSpec("portal.example.org", ("portal.example.org",), (), "ec-p256")
    async with any_backend() as a, any_backend() as b:
        second = Certd(config, b, _TakenOverMidOrder(), {}, owner="h2:2:bbbb",
                       clock=lambda: now[0])

        async def cut_off_then_taken_over():
            now[0] += instances.ALIVE_WITHIN + timedelta(seconds=1)  # no heartbeat since
            assert await second._try_lease(f"issue:{spec.name}")

        issuer = _TakenOverMidOrder(cut_off_then_taken_over)
        first = Certd(config, a, issuer, {}, owner="h1:1:aaaa", clock=lambda: now[0])
        await instances.beat(a, instances.this_instance(first.owner, now[0], now[0]), now[0])
        assert await first._renew(spec, True, False, now[0]) is None  # fenced: not stored
        assert await a.certificate_history(spec.name, limit=10) == []
        assert issuer.finished_orders == []  # the order is the new holder's to finish
        (fenced,) = await a.events(kind="issue.fenced")
        assert fenced.severity is Severity.WARNING and fenced.certificate == spec.name
        assert await b.lease_holder(f"issue:{spec.name}", now[0]) == second.owner
        # the new holder stores its own, once
        stored = await second._order(spec, None, "forced")
        assert stored is not None
        assert [c.serial for c in await b.certificate_history(spec.name, limit=10)] == [
            stored.serial]
        await b.release_lease(f"issue:{spec.name}", second.owner)
        # a holder that kept its lease (even past its expiry: nobody took it) stores
        now[0] += timedelta(hours=2)
        third = Certd(config, a, _TakenOverMidOrder(), {}, owner="h1:1:cccc",
                      clock=lambda: now[0])
        again = await third._renew(spec, True, False, now[0])
        assert again is not None and again.serial != stored.serial
        assert len(await a.certificate_history(spec.name, limit=10)) == 2
        assert await a.lease_holder(f"issue:{spec.name}", now[0]) is None  # released


async def test_an_import_that_lost_its_issue_lease_stores_nothing(any_backend):
    """`certd import` (Certd.adopt) writes under `issue:NAME` as an issuance does, fenced the
    same way: taken over between taking the lease and writing, it stores nothing."""
    import pytest

    from certd import instances
    from certd.errors import CertdError
    from certd.model import CertificateSpec
    from certd.service import IMPORTED
    from tests.test_deploy_file import issued

    now = [utcnow()]
    config = Config.model_validate({"acme": {"ari": False}})
    name = "portal.example.org"
    spec = CertificateSpec(name, (name,), ())
    cert = issued(name, name)

    async def resolve(_name):
        return spec

    def event():
        return Event(IMPORTED, f"certificate[{name}]: imported", certificate=name,
                     data={"serial": cert.serial})

    async with any_backend() as a, any_backend() as b:
        first = Certd(config, a, None, {}, owner="h1:1:aaaa", clock=lambda: now[0])
        second = Certd(config, b, None, {}, owner="h2:2:bbbb", clock=lambda: now[0])
        first.resolve = second.resolve = resolve
        await instances.beat(a, instances.this_instance(first.owner, now[0], now[0]), now[0])
        take = first._take_lease

        async def taken_over_after_taking(lease, wait):
            assert await take(lease, wait)
            now[0] += instances.ALIVE_WITHIN + timedelta(seconds=1)  # cut off: no heartbeat
            assert await second._try_lease(lease)
            return True

        first._take_lease = taken_over_after_taking
        with pytest.raises(CertdError, match="took the issue lease over"):
            await first.adopt(cert, event(), expected=None)
        assert await a.certificate_history(name, limit=10) == []
        assert await a.get_state(name) is None
        assert await a.events(kind=IMPORTED) == []
        assert await b.lease_holder(f"issue:{name}", now[0]) == second.owner  # still its
        await b.release_lease(f"issue:{name}", second.owner)
        # not taken over: stored, with its state and event, and the lease released
        del first._take_lease
        stored = await first.adopt(cert, event(), expected=None)
        assert [c.serial for c in await a.certificate_history(name, limit=10)] == [
            stored.serial]
        assert (await a.get_state(name)).status.value == "issued"
        assert len(await a.events(kind=IMPORTED)) == 1
        assert await a.lease_holder(f"issue:{name}", now[0]) is None


# --- a monitor sweep longer than its lease ------------------------------------------------

class SlowMonitor(CountingMonitor):
    """A sweep that lasts until `release` is set; `cancelled` counts the ones stopped."""

    def __init__(self, config):
        import asyncio

        super().__init__(config)
        self.release = asyncio.Event()
        self.cancelled = 0

    async def sweep(self) -> None:
        import asyncio

        self.sweeps += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def slow_instance(store, now, owner) -> tuple[Scheduler, SlowMonitor]:
    config = Config.model_validate({"monitor": {"interval": "1h", "jitter": "5m"}})
    certd = Certd(config, store, issuer=None, deployers_by_frontend={}, owner=owner,
                  clock=lambda: now[0])
    monitor = SlowMonitor(config.monitor)
    return Scheduler(Sweeper(certd), config.renewal, monitor=monitor), monitor


async def test_a_monitor_sweep_longer_than_its_lease_keeps_it_or_stops(any_backend,
                                                                     monkeypatch):
    import asyncio

    from certd import instances, scheduler

    monkeypatch.setattr(scheduler, "LEASE_RENEW_EVERY", timedelta(seconds=0.02))
    now = [utcnow()]
    async with any_backend() as a, any_backend() as b:
        (one, m1), (two, m2) = slow_instance(a, now, "h1:1:aaaa"), slow_instance(b, now,
                                                                              "h2:2:bbbb")
        row = instances.this_instance("h1:1:aaaa", now[0], now[0])
        await instances.beat(a, row, now[0])
        sweeping = asyncio.create_task(one._shared_monitor_sweep())
        while m1.sweeps == 0:
            await asyncio.sleep(0.01)
        # the sweep outlasts its lease (55 minutes): renewed meanwhile, never lapses
        now[0] += timedelta(hours=2)
        await instances.beat(a, row, now[0])  # alive
        await asyncio.sleep(0.3)
        held = [(n, o) for n, o, _ in await b.leases(now[0])]
        assert held == [(MONITOR_LEASE, "h1:1:aaaa")]
        await two._shared_monitor_sweep()
        assert (m1.sweeps, m2.sweeps) == (1, 0)  # no second sweep beside it
        m1.release.set()
        await sweeping
        assert m1.cancelled == 0
        # a sweep whose instance is cut off from the store (its heartbeat stops): another
        # takes the lease over and sweeps; the first stops at its next renewal
        m1.release.clear()
        now[0] += timedelta(hours=2)
        await instances.beat(a, row, now[0])
        sweeping = asyncio.create_task(one._shared_monitor_sweep())
        while m1.sweeps == 1:
            await asyncio.sleep(0.01)
        now[0] += instances.ALIVE_WITHIN + timedelta(seconds=1)
        m2.release.set()
        await two._shared_monitor_sweep()
        assert m2.sweeps == 1
        assert await asyncio.wait_for(sweeping, 10) is None
        assert (m1.sweeps, m1.cancelled) == (2, 1)
        assert await b.lease_holder(MONITOR_LEASE, now[0]) == "h2:2:bbbb"


async def test_a_monitor_sweep_stops_when_the_store_stays_unreachable(monkeypatch):
    import asyncio

    from certd import scheduler
    from certd.errors import StoreError
    from certd.store.memory import MemoryStore
    from tests.stores import opened

    monkeypatch.setattr(scheduler, "LEASE_RENEW_EVERY", timedelta(seconds=0.02))
    now = [utcnow()]
    async with opened(MemoryStore()) as store:
        one, m1 = slow_instance(store, now, "h1:1:aaaa")
        renewals = []

        async def unreachable(*args):
            renewals.append(now[0])
            now[0] += timedelta(seconds=1)  # each failed try takes a while
            raise StoreError("memory: connection lost")

        monkeypatch.setattr(store, "extend_lease", unreachable)
        await asyncio.wait_for(one._shared_monitor_sweep(), 10)
        # given up before the others could take it over (ALIVE_WITHIN without a beat)
        assert m1.cancelled == 1 and 10 <= len(renewals) <= 20, len(renewals)


# --- events: at-least-once delivery across instances --------------------------------------

class _Killed(BaseException):
    """The process dies here (nothing after it runs)."""


class DiesWhileSending:
    async def notify(self, notification) -> None:
        raise _Killed


class Refusing(Sent):
    """A notifier that fails its first `failures` notices."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    async def notify(self, notification) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("webhook down")
        await super().notify(notification)


async def test_an_event_claimed_by_an_instance_that_died_is_sent_by_another(any_backend):
    import pytest

    from certd.monitor import events

    now = [utcnow()]
    async with any_backend() as a, any_backend() as b:
        sent = Sent()
        dying = EventForwarder(a, DiesWhileSending(), clock=lambda: now[0], owner="a")
        other = EventForwarder(b, sent, clock=lambda: now[0], owner="b")
        for f in (dying, other):
            await f.start()
        await a.add_event(Event("issue.failed", "lost?", Severity.ERROR, at=now[0]))
        with pytest.raises(_Killed):
            await dying.forward()  # claimed, then the process died before sending
        assert await other.forward() == 0  # claimed by a holder that may still be alive
        now[0] += events.CLAIM_FOR / 2
        assert await other.forward() == 0
        now[0] += events.CLAIM_FOR / 2 + timedelta(seconds=1)  # the claim expired undelivered
        assert await other.forward() == 1
        assert sent.messages == ["lost?"]
        now[0] += events.CLAIM_FOR * 2  # the delivery is recorded: nobody sends it again
        assert await other.forward() == 0
        restarted = EventForwarder(a, sent, clock=lambda: now[0], owner="a2")
        restarted.after = 0  # even one reading the whole log again
        assert await restarted.forward() == 0
        assert sent.messages == ["lost?"]
        # delivered by a live holder: never a second time, however long the others watch
        await b.add_event(Event("deploy.failed", "once", Severity.ERROR, at=now[0]))
        live = EventForwarder(a, sent, clock=lambda: now[0], owner="a3")
        live.after = other.after
        assert await live.forward() == 1
        for _ in range(5):
            now[0] += events.CLAIM_FOR
            assert await other.forward() == 0
        assert sent.messages == ["lost?", "once"]
        # an event whose holder died long ago (past RETRY_WITHIN) is no longer re-claimed
        await a.add_event(Event("issue.failed", "late", Severity.ERROR, at=now[0]))
        doomed = EventForwarder(a, DiesWhileSending(), clock=lambda: now[0], owner="a4")
        doomed.after = other.after
        with pytest.raises(_Killed):
            await doomed.forward()
        assert await other.forward() == 0
        now[0] += events.RETRY_WITHIN + timedelta(seconds=1)
        assert await other.forward() == 0 and not other._watched
        assert sent.messages == ["lost?", "once"]


async def test_an_event_the_notifiers_refused_is_tried_again_a_bounded_number_of_times():
    from certd.monitor import events
    from certd.store.memory import MemoryStore
    from tests.stores import opened

    now = [utcnow()]
    async with opened(MemoryStore()) as store:
        refusing = Refusing(failures=1)
        forwarder = EventForwarder(store, refusing, clock=lambda: now[0], owner="a")
        await forwarder.start()
        await store.add_event(Event("issue.failed", "flaky", Severity.ERROR, at=now[0]))
        assert await forwarder.forward() == 0  # refused: the claim is released
        assert await store.lease_holder(f"event:{(await store.events())[0].id}", now[0]) is None
        assert await forwarder.forward() == 1 and refusing.messages == ["flaky"]
        assert await forwarder.forward() == 0
        # always refused: MAX_TRIES, then given up
        never = Refusing(failures=100)
        forwarder.alerts = never
        await store.add_event(Event("issue.failed", "never", Severity.ERROR, at=now[0]))
        for _ in range(events.MAX_TRIES + 3):
            assert await forwarder.forward() == 0
        assert never.failures == 100 - events.MAX_TRIES
