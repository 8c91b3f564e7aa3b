"""A store that becomes unavailable during a sweep stops it: the certificates in flight end,
the rest are not tried (each would fail to take its lease the same way), one StoreError says
so and the scheduler sweeps again later. A StoreError of one call (not the store's
unavailability) stays that certificate's failure, and the sweep goes on."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sqlite3
from collections import Counter

import pytest

from certd import config as configuration
from certd.app import open_certd
from certd.errors import StoreError
from certd.sweep import Sweeper
from tests.certd_api import file_frontend, unreachable_acme

DUE = 50


def sweep_config(tmp_path, *, max_concurrent: int = 10) -> configuration.Config:
    return configuration.parse({
        "state_dir": str(tmp_path / "state"),
        "acme": unreachable_acme(),
        "renewal": {"max_concurrent": max_concurrent},
        "frontends": {"web": file_frontend(tmp_path)},
        "certificates": [{"name": f"c{i:02d}", "domains": [f"c{i:02d}.example.org"],
                          "frontends": ["web"]} for i in range(DUE)],
    })


class GoesDown:
    """Every coroutine method of `store` counted; from the first `trigger` call on, each one
    raises StoreError(error) instead of reaching the store."""

    def __init__(self, store, trigger: str, error: StoreError):
        self.down = False
        self.calls: Counter = Counter()  # method -> calls made while down
        self.error = error
        for name, method in inspect.getmembers(store, inspect.iscoroutinefunction):
            if not name.startswith("_") and name not in ("open", "close"):
                setattr(store, name, self._wrap(name, method, name == trigger))

    def _wrap(self, name, method, trigger: bool):
        async def call(*args, **kwargs):
            if trigger:
                self.down = True
            if self.down:
                self.calls[name] += 1
                raise self.error
            return await method(*args, **kwargs)
        return call


async def test_an_unavailable_store_stops_the_sweep_at_the_first_lease(tmp_path, caplog):
    cfg = sweep_config(tmp_path)
    caplog.set_level(logging.INFO)
    async with open_certd(cfg) as certd:
        down = GoesDown(certd.store, "acquire_lease",
                        StoreError("sqlite[x]: disk I/O error", unavailable=True))
        with pytest.raises(StoreError) as stopped:
            await Sweeper(certd).sweep()
    assert stopped.value.unavailable
    assert "disk I/O error" in str(stopped.value) and "sweep stopped" in str(stopped.value)
    # the certificates already in flight (max_concurrent) end; none of the other 40 tried
    leases = down.calls["acquire_lease"]
    assert 1 <= leases <= cfg.renewal.max_concurrent, down.calls
    assert sum(down.calls.values()) <= 3 * cfg.renewal.max_concurrent, down.calls
    # said once, by the error the scheduler logs: no line per certificate
    per_certificate = [r for r in caplog.records
                       if r.levelno >= logging.WARNING and r.name == "certd.sweep"]
    assert per_certificate == []


async def test_a_store_error_of_one_call_does_not_stop_the_sweep(tmp_path, caplog):
    cfg = sweep_config(tmp_path, max_concurrent=4)
    async with open_certd(cfg) as certd:
        store = certd.store
        real = store.acquire_lease
        refused = []

        async def acquire_lease(lease, *args):
            if lease == "issue:c07":
                refused.append(lease)
                raise StoreError("sqlite[x]: CHECK constraint failed")  # not unavailable
            return await real(lease, *args)

        store.acquire_lease = acquire_lease
        result = await Sweeper(certd).sweep()
    assert refused == ["issue:c07"]
    assert result.due == DUE  # every due certificate was tried (the CA is unreachable)
    assert any("c07" in r.getMessage() and "CHECK constraint" in r.getMessage()
               for r in caplog.records if r.name == "certd.sweep")


async def test_a_sqlite_store_locked_by_another_process_stops_the_sweep(tmp_path):
    """Real SQLite: another connection (as another process would) holds the write lock from
    just after the sweep read what is due; the first lease waits the busy timeout and fails
    (SQLITE_BUSY), the sweep stops instead of waiting that long for each of the 50."""
    cfg = sweep_config(tmp_path, max_concurrent=2)
    async with open_certd(cfg) as certd:
        store = certd.store
        holder = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
        real = store.unfinished_orders
        taken = []

        async def unfinished_orders():
            out = await real()
            if not taken:  # the sweep's decide(): from now on the file is locked
                await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")
                taken.append(True)
            return out

        store.unfinished_orders = unfinished_orders
        leases = Counter()
        real_acquire = store.acquire_lease

        async def acquire_lease(lease, *args):
            leases[lease] += 1
            return await real_acquire(lease, *args)

        store.acquire_lease = acquire_lease
        try:
            with pytest.raises(StoreError) as stopped:
                await Sweeper(certd).sweep()
        finally:
            await asyncio.to_thread(holder.execute, "ROLLBACK")
            holder.close()
    assert stopped.value.unavailable and "database is locked" in str(stopped.value)
    assert 1 <= sum(leases.values()) <= cfg.renewal.max_concurrent, leases
