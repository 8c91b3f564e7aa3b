"""The `certd run` instances sharing one store (issue 13, item 7): each writes a heartbeat row
(id, host, pid, started, last seen) every HEARTBEAT; an instance seen within ALIVE_WITHIN is
alive. Its id is the owner of its leases (certd.service.owner_id), so a lease whose holder's
heartbeat stopped can be taken over before it expires (certd.service.Certd._try_lease), from
any host. `certd status` and /metrics show the instances alive, the leases each holds and
the store's health (`view`)."""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime, timedelta

from certd.errors import StoreError
from certd.model import Instance
from certd.store.base import Store

log = logging.getLogger(__name__)

HEARTBEAT = timedelta(seconds=5)
ALIVE_WITHIN = timedelta(seconds=20)  # four heartbeats missed: gone
FORGET_AFTER = timedelta(days=1)  # rows of instances killed long ago are dropped


def this_instance(owner: str, started_at: datetime, now: datetime) -> Instance:
    """This process's row: `owner` is host:pid:random (certd.service.owner_id)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return Instance(owner, host or socket.gethostname(),
                    int(pid) if pid.isdigit() else os.getpid(), started_at, now)


async def beat(store: Store, instance: Instance, now: datetime) -> None:
    await store.heartbeat(Instance(instance.id, instance.host, instance.pid,
                                   instance.started_at, now), now - FORGET_AFTER)


def alive(instance: Instance, now: datetime) -> bool:
    return instance.last_seen_at >= now - ALIVE_WITHIN


async def stopped(store: Store, owner: str, now: datetime) -> bool:
    """True if `owner` is an instance whose heartbeat stopped (its row is stale). False when
    it is alive, or has no row (a CLI process, which does not beat: its leases expire)."""
    for instance in await store.instances():
        if instance.id == owner:
            return not alive(instance, now)
    return False


async def view(store: Store, now: datetime) -> dict:
    """{"store": {"ok", "seconds" | "error"}, "instances": [...alive first, with the leases
    each holds...], "alive": N}: for `certd status` and /metrics. Never raises for the
    store: an unreachable one is what it reports."""
    started = time.perf_counter()
    try:
        rows = await store.instances()
        leases = await store.leases(now)
    except StoreError as exc:
        return {"store": {"ok": False, "error": str(exc)}, "instances": [], "alive": 0}
    health = {"ok": True, "seconds": round(time.perf_counter() - started, 4)}
    held: dict[str, list[str]] = {}
    for name, owner, _until in leases:
        held.setdefault(owner, []).append(name)
    out = [{"id": i.id, "host": i.host, "pid": i.pid,
            "started_at": i.started_at.isoformat(), "last_seen_at": i.last_seen_at.isoformat(),
            "alive": alive(i, now),
            "leases": [n for n in held.get(i.id, []) if not n.startswith("event:")]}
           for i in rows]
    out.sort(key=lambda i: (not i["alive"], i["id"]))
    return {"store": health, "instances": out, "alive": sum(i["alive"] for i in out)}
