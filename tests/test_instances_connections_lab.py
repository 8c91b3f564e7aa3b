"""How many PostgreSQL connections one `certd run` instance opens with N API workers (issue
13, item 5): each worker is a process with its own store (pools and challenge cache), so the
count grows with the workers. Measured from pg_stat_activity (`application_name` is
`certd:PID`, certd/store/pg_pool.py) once started and at the peak of a burst of API reads,
and held to a budget per process: the daemon's pools and LISTEN connection, and
API_WORKER_POOL_SIZE per worker (which answers no challenges: no reader pool, no cache).
Measured on 2 shared cores (once started / peak, all processes): 1 worker 5 / 12; 2 workers
7 / 13 (3 / 12 per worker before the cap: 11 / 29); 4 workers 9 / 21 (was 17 / 53)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from certd.store.pg_pool import API_WORKER_POOL_SIZE, POOL_SIZE, READER_POOL_SIZE
from tests.certd_api import api_config_data
from tests.lab.procs import wait_until
from tests.test_api_workers import _get, _start

pytestmark = pytest.mark.lab

BURST = 4.0  # seconds of reads from 32 clients at once


def _sessions(db) -> Counter:
    """certd's sessions on the test's database, per process (application_name)."""
    out = db.psql("SELECT application_name, count(*) FROM pg_stat_activity WHERE "
                  f"datname = '{db.name}' AND application_name LIKE 'certd:%' GROUP BY 1")
    # psql -A: 'name|count' lines
    return Counter({name: int(n) for name, n in (line.rsplit("|", 1)
                                                 for line in out.splitlines() if line)})


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_connections_of_an_instance_with_n_api_workers(postgres_database, tmp_path, workers):
    db = postgres_database
    data = api_config_data(tmp_path, storage=db.url,
                           storage_password_file=str(db.password_file),
                           renewal={"sweep_interval": "24h"})
    daemon, base = _start(tmp_path, data, workers)
    try:
        seen: set[int] = set()

        def every_worker_answers() -> bool:  # up, its store open
            _, body = _get(base, "/healthz", timeout=60)
            seen.add(body["pid"])
            return len(seen) >= workers

        if workers > 1:
            wait_until(every_worker_answers, 120, what=f"{workers} API workers to answer")
        time.sleep(2)  # the first sweep, monitor, heartbeat
        started = _sessions(db)
        peak: Counter = Counter()
        stop = time.monotonic() + BURST

        def client(i: int) -> int:
            n = 0
            paths = ["/api/v1/domains?limit=100", "/api/v1/certificates", "/healthz",
                     "/api/v1/events", "/api/v1/overview"]
            while time.monotonic() < stop:
                status, _ = _get(base, paths[(i + n) % len(paths)], timeout=60)
                assert status == 200, paths[(i + n) % len(paths)]
                n += 1
            return n

        with ThreadPoolExecutor(32) as pool:
            requests = pool.map(client, range(32))
            while time.monotonic() < stop:
                now = _sessions(db)
                if sum(now.values()) > sum(peak.values()):
                    peak = now
                time.sleep(0.05)
            total = sum(requests)
        after = _sessions(db)
        print(f"api.workers {workers}: {len(started)} processes, {sum(started.values())} "
              f"connections once started {sorted(started.values())}; peak under "
              f"{total} reads {sum(peak.values())} {sorted(peak.values())}; after "
              f"{sum(after.values())}")
        assert daemon.alive(), daemon.log_tail()
        # the daemon: its pools and the challenge cache's LISTEN; each worker: its small pool
        main = f"certd:{daemon.proc.pid}"
        assert max(peak[main], after[main]) <= POOL_SIZE + READER_POOL_SIZE + 1
        for name, count in (peak + after).items():
            if name != main:
                assert max(peak[name], after[name]) <= API_WORKER_POOL_SIZE, (name, count)
        assert len(started) == (workers + 1 if workers > 1 else 1)  # every store open
    finally:
        daemon.stop()


async def test_an_api_workers_store_has_a_small_pool_and_no_challenge_cache(
        postgres_database, monkeypatch):
    from datetime import timedelta

    from certd.model import Challenge, utcnow
    from certd.store import pg_pool
    from certd.store.postgres import PostgresStore
    from tests.stores import opened

    db = postgres_database
    token = "k0S7dR6pU5Z0aLr4xM2nQ9wE3tY8uI1oP6aS5dF4gH7"
    async with opened(PostgresStore(db.url, password_file=db.password_file)) as daemon:
        assert daemon.challenges is not None and daemon.pool_size == POOL_SIZE
        await daemon.put_challenge(Challenge(token, token + ".thumb", "x", "u",
                                             utcnow() + timedelta(hours=1)))
    monkeypatch.setattr(pg_pool, "_api_worker", True)
    async with opened(PostgresStore(db.url, password_file=db.password_file)) as worker:
        assert worker.challenges is None and worker._reader is None
        assert worker.pool_size == API_WORKER_POOL_SIZE
        # a lookup (none is expected in a worker) still answers, from the main pool
        assert await worker.get_key_authorization(token, utcnow()) == token + ".thumb"
        # no reader pool, no LISTEN connection: the main pool's connections only
        import asyncio
        import os

        mine = f"certd:{os.getpid()}"
        for _ in range(50):  # the daemon store's sessions end as it closed them
            if _sessions(db)[mine] <= API_WORKER_POOL_SIZE:
                break
            await asyncio.sleep(0.1)
        assert _sessions(db)[mine] == 1
