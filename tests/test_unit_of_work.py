"""Store.transaction(): the writes that follow an issuance commit together or not at all
(issue 13, item 0). The kill -9 inside it is tests/test_renewal_lab.py's issue:stored point."""

from __future__ import annotations

import asyncio

import pytest

from certd.model import CertificateState, CertStatus, Event


@pytest.fixture
async def store(any_store):
    return any_store  # every backend (tests/stores.py)


async def test_an_error_inside_leaves_none_of_its_writes(store):
    with pytest.raises(RuntimeError):
        async with store.transaction():
            await store.put_state(CertificateState("a", CertStatus.ISSUED))
            await store.add_event(Event("issue.ok", "a issued", certificate="a"))
            raise RuntimeError("between two writes")
    assert await store.get_state("a") is None
    assert await store.events(certificate="a") == []
    async with store.transaction():  # and the store is usable after
        await store.put_state(CertificateState("a", CertStatus.ISSUED))
        async with store.transaction():  # nested: part of the outer
            await store.add_event(Event("issue.ok", "a issued", certificate="a"))
    assert (await store.get_state("a")).status is CertStatus.ISSUED
    assert len(await store.events(certificate="a")) == 1


async def test_other_tasks_are_not_part_of_it(store):
    inside, release = asyncio.Event(), asyncio.Event()

    async def unit():
        with pytest.raises(RuntimeError):
            async with store.transaction():
                await store.put_state(CertificateState("rolled", CertStatus.ISSUED))
                inside.set()
                await release.wait()
                raise RuntimeError("rolled back")

    async def other():
        await inside.wait()
        await store.add_event(Event("other", "written meanwhile", certificate="kept"))

    task = asyncio.create_task(unit())
    writer = asyncio.create_task(other())
    await inside.wait()
    await asyncio.sleep(0.05)  # the other write waits (SQLite) or runs beside (PostgreSQL)
    release.set()
    await asyncio.gather(task, writer)
    assert await store.get_state("rolled") is None
    assert [e.kind for e in await store.events(certificate="kept")] == ["other"]


class _Log:
    """An event log whose ids commit out of order (what several PostgreSQL writers do)."""

    def __init__(self):
        self.events: dict[int, Event] = {}

    def commit(self, id: int, at, severity="error") -> None:
        from certd.model import Severity
        self.events[id] = Event("issue.failed", f"event {id}", Severity(severity), at=at, id=id)

    async def last_event_id(self) -> int:
        return max(self.events, default=0)

    async def events_since(self, after: int, limit: int = 1000) -> list[Event]:
        return [self.events[i] for i in sorted(self.events) if i > after][:limit]

    async def acquire_lease(self, name, owner, until, now) -> bool:  # the forwarder's claims
        return self.__dict__.setdefault("leases", {}).setdefault(name, owner) == owner


class _Alerts:
    def __init__(self):
        self.sent: list[str] = []

    async def notify(self, notification) -> None:
        self.sent.append(notification.message)


async def test_the_event_cursor_survives_ids_committed_out_of_order():
    from datetime import timedelta

    from certd.model import utcnow
    from certd.monitor.events import SETTLE, EventForwarder

    now = [utcnow()]
    log, alerts = _Log(), _Alerts()
    forwarder = EventForwarder(log, alerts, clock=lambda: now[0])
    await forwarder.start()
    log.commit(1, now[0])
    log.commit(3, now[0])  # 2 is written but not committed yet
    assert await forwarder.forward() == 2
    log.commit(2, now[0])  # ... now it is: sent once, late
    log.commit(4, now[0], severity="info")  # below min_severity: handled, not sent
    assert await forwarder.forward() == 1
    assert await forwarder.forward() == 0  # nothing twice
    assert alerts.sent == ["event 1", "event 3", "event 2"]
    # once settled, the floor moves past everything and forgets what it sent
    now[0] += SETTLE + timedelta(seconds=1)
    assert await forwarder.forward() == 0
    assert forwarder.after == 4 and forwarder._seen == set()
    log.commit(6, now[0])  # 5 never commits (a rolled-back unit): 6 is still sent
    assert await forwarder.forward() == 1 and alerts.sent[-1] == "event 6"
