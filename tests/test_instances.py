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
