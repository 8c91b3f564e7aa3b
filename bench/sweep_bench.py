"""A store with N certificates of mixed lifetimes (90 d, 45 d, 6 d, 160 h; some failing, some
with ARI windows): time one renewal sweep's decision (what is due, in what order), then start
`certd run` on it and read the daemon's resident memory at rest.

    .venv/bin/python bench/sweep_bench.py [-n 10000] [--storage sqlite|postgresql]
                                          [--managed config|aliases] [--instances K]

The names are the config's `certificates:` (the default with SQLite: two domains each), or
API aliases in the store (`--managed aliases`, the default with PostgreSQL: one domain each,
the certificate named after it, as `POST /api/v1/domains` makes them). With aliases the
decision also reads them (`load_aliases`, as every sweep does). `--instances K` (default 1,
2 with PostgreSQL) starts K `certd run` on the same store (only with PostgreSQL: instances
share a store only there) and reads each one's RSS after its first sweep. With aliases the
monitor is off (it would probe every name on both nodes: bench/monitor_bench.py measures it).

Not a test: no assertion. Targets: decision under 1 s, RSS under 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _store  # noqa: E402
from bench._proc import QUIET, free_port, rss_mb, settle  # noqa: E402
from certd import config as configuration  # noqa: E402
from certd import keys
from certd.app import open_certd  # noqa: E402
from certd.model import (  # noqa: E402
    Alias,
    AriState,
    CertificateState,
    CertStatus,
    IssuedCertificate,
    utcnow,
)
from certd.sweep import Sweeper  # noqa: E402

LIFETIMES = [timedelta(days=90), timedelta(days=45), timedelta(days=6), timedelta(hours=160)]


def managed(n: int, aliases: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(certificate name, its domains) of every managed name."""
    if aliases:
        return [(f"a{i:06d}.example.org", (f"a{i:06d}.example.org",)) for i in range(n)]
    return [(f"c{i}", (f"c{i}.example.org", f"www.c{i}.example.org")) for i in range(n)]


def config_data(root: Path, n: int, aliases: bool = False, storage: dict | None = None
                ) -> dict:
    if aliases:
        return {**config_data(root, 0), **(storage or {}),
                "domains": {"default_frontends": ["web"], "preflight": False,
                            "allow_special_use": ["example"]},
                "monitor": {"enabled": False},
                # one process per instance: its RSS is the daemon's
                "api": {"listen": f"127.0.0.1:{free_port()}", "workers": 1}}
    return {**(storage or {}),
        "state_dir": str(root / "state"),
        "log_level": "warning",
        # nothing listens here: a due certificate fails at once and backs off
        "acme": {"directory": f"https://127.0.0.1:{free_port()}/dir", "timeout": "2s"},
        "challenge": {"listen": f"127.0.0.1:{free_port()}"},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "frontends": {"web": {
            "nodes": [{"name": "fe1", "address": "127.0.0.2"},
                      {"name": "fe2", "address": "127.0.0.3"}],
            "deployer": {"type": "file", "path": str(root / "nodes/{node}/{certificate}")}}},
        "certificates": [{"name": f"c{i}", "domains": [f"c{i}.example.org",
                                                      f"www.c{i}.example.org"],
                          "frontends": ["web"]} for i in range(n)],
    }


async def populate(data: dict, n: int, rng: random.Random, aliases: bool = False) -> int:
    key = keys.generate_key("ec-p256")
    leaf = keys.self_signed(key, "bench.example.org")
    cert_pem, key_pem = keys.cert_to_pem(leaf), keys.key_to_pem(key)
    now = utcnow()
    store = _store.open_store(data)
    await store.open()
    due = 0
    try:
        async with store.transaction():
            for i, (name, domains) in enumerate(managed(n, aliases)):
                lifetime = rng.choice(LIFETIMES)
                age = lifetime * rng.uniform(0.0, 0.72)  # a few past their renewal time
                not_before = now - age
                due += age > lifetime * 2 / 3
                if aliases:
                    await store.add_alias(Alias(name, ("web",), "bench", not_before))
                await store.add_certificate(IssuedCertificate(
                    name=name, serial=f"{i:032x}", domains=domains,
                    not_before=not_before, not_after=not_before + lifetime,
                    cert_pem=cert_pem, chain_pem="", key_pem=key_pem, issued_at=not_before))
                failing = rng.random() < 0.02
                await store.put_state(CertificateState(
                    name, CertStatus.FAILED if failing else CertStatus.DEPLOYED,
                    "acme: unreachable" if failing else None, 2 if failing else 0,
                    now + timedelta(minutes=10) if failing else None))
                if rng.random() < 0.5:  # half have an ARI window, checked recently
                    start = not_before + lifetime * 0.6
                    await store.put_ari(AriState(
                        name, f"{i:032x}", start, start + timedelta(days=2),
                        start + timedelta(days=1), now + timedelta(hours=rng.uniform(1, 6))))
    finally:
        await store.close()
    return due


async def decision_times(cfg, repeats: int) -> tuple[list[float], int, float, float]:
    """Each run: the aliases read (as every sweep starts) and the decision (the store's
    overview read, then what is due, in what order)."""
    async with open_certd(cfg) as certd:
        sweeper = Sweeper(certd)
        times, due = [], 0
        cpu0 = time.process_time()
        for _ in range(repeats):
            t0 = time.perf_counter()
            await certd.load_aliases()
            decision = await sweeper.decide()
            times.append(time.perf_counter() - t0)
            due = len(decision.due)
        print(f"  (this process's CPU per decision: {(time.process_time() - cpu0) / repeats:.3f}"
              " s)")
        t0 = time.perf_counter()
        await certd.store.overview()
        overview_only = time.perf_counter() - t0
        t0 = time.perf_counter()
        await certd.load_aliases()
        aliases_only = time.perf_counter() - t0
    return times, due, overview_only, aliases_only


def child_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    _store.add_argument(parser)
    parser.add_argument("--managed", choices=("config", "aliases"),
                        help="what the names are (default: aliases with PostgreSQL, else "
                             "the config's certificates)")
    parser.add_argument("--instances", type=int,
                        help="`certd run` instances on the store (default: 2 with PostgreSQL)")
    args = parser.parse_args()
    postgres = args.storage == "postgresql"
    aliases = (args.managed or ("aliases" if postgres else "config")) == "aliases"
    instances = args.instances or (2 if postgres else 1)
    if instances > 1 and not postgres:
        parser.error("several instances share a store only with --storage postgresql")
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}")
    rng = random.Random(42)
    with tempfile.TemporaryDirectory(prefix="certd-sweep-") as tmp, \
            _store.cluster(args.storage) as pg:
        root = Path(tmp)
        storage, _ = _store.storage_config(pg)
        data = config_data(root, args.n, aliases, storage)
        t0 = time.perf_counter()
        cfg = configuration.parse(data)
        parse_s = time.perf_counter() - t0
        (root / "state").mkdir(mode=0o700)
        t0 = time.perf_counter()
        due_expected = asyncio.run(populate(data, args.n, rng, aliases))
        print(f"store ({args.storage}): {args.n} {'aliases' if aliases else 'certificates'} "
              f"({due_expected} past their lifetime renewal time, ~2 % backing off, half with "
              f"ARI windows), written in {time.perf_counter() - t0:.0f} s")
        times, due, overview_s, aliases_s = asyncio.run(decision_times(cfg, args.repeats))
        print(f"config parse: {parse_s:.2f} s")
        print(f"sweep decision: median {statistics.median(times):.3f} s, max {max(times):.3f} s "
              f"over {args.repeats} runs ({due} due); of which store.overview() {overview_s:.3f} s"
              + (f", load_aliases() {aliases_s:.3f} s" if aliases else ""))
        print(f"load average: {Path('/proc/loadavg').read_text().strip()}")
        def again() -> None:
            times, due, overview_s, aliases_s = asyncio.run(decision_times(cfg, args.repeats))
            print(f"sweep decision with the {instances} instance(s) running (at rest: no "
                  f"sweep for {QUIET:.0f} s): median {statistics.median(times):.3f} s, max "
                  f"{max(times):.3f} s ({due} due); of which store.overview() {overview_s:.3f} s"
                  + (f", load_aliases() {aliases_s:.3f} s" if aliases else ""))
            print(f"load average: {Path('/proc/loadavg').read_text().strip()}")

        run_daemons(root, data, instances, due, again)


def run_daemons(root: Path, data: dict, instances: int, due: int, meanwhile) -> None:
    """`instances` x `certd run` on the store; each one's first sweep and RSS after it, then
    `meanwhile()` while they run."""
    daemons: list[tuple[subprocess.Popen, Path]] = []
    try:
        for i in range(instances):
            own = {**data, "log_level": "info", "state_dir": str(root / f"state{i}"),
                   "challenge": {"listen": f"127.0.0.1:{free_port()}"},
                   "api": {**data["api"], "listen": f"127.0.0.1:{free_port()}"}}
            if instances == 1:
                own["state_dir"] = data["state_dir"]  # the SQLite store is in it
            config_path = root / f"config{i}.yaml"
            config_path.write_text(yaml.safe_dump(own))
            log_path = root / f"certd{i}.log"
            with open(log_path, "w") as log:
                daemons.append((subprocess.Popen(
                    [sys.executable, "-m", "certd", "-c", str(config_path), "run"],
                    stdout=log, stderr=subprocess.STDOUT), log_path))
        t0 = time.monotonic()
        swept: dict[int, float] = {}
        while len(swept) < instances and time.monotonic() - t0 < 900:
            for i, (daemon, log_path) in enumerate(daemons):
                if i not in swept and "sweep done" in log_path.read_text():
                    swept[i] = time.monotonic() - t0
                if daemon.poll() is not None:
                    raise SystemExit(f"instance {i} exited ({daemon.returncode}):\n"
                                     + log_path.read_text()[-3000:])
            time.sleep(0.2)
        settled = settle([log_path for _, log_path in daemons])
        print(f"waited {settled:.1f} s until no sweep had run for {QUIET:.0f} s (with several "
              "instances, one sweeps again 10 s after finding work under another's lease)")
        load = Path("/proc/loadavg").read_text().strip()
        for i, (daemon, log_path) in enumerate(daemons):
            line = next((l for l in log_path.read_text().splitlines() if "sweep done" in l), "")
            workers = [rss_mb(c) for c in child_pids(daemon.pid)]
            print(f"instance {i}: first sweep (start, {due} due in all, failing at an "
                  f"unreachable CA) {swept.get(i, float('nan')):.1f} s:"
                  f"{line.split('sweep done')[1] if line else ' (none)'}")
            ordered = log_path.read_text().count(": ordering (")
            print(f"instance {i}: orders attempted (log lines): {ordered}")
            print(f"instance {i}: RSS at rest after its first sweep: {rss_mb(daemon.pid):.0f} MB"
                  + (f" (+ API workers {', '.join(f'{r:.0f}' for r in workers)} MB)"
                     if workers else ""))
        print(f"load average: {load}")
        meanwhile()
        for i, (daemon, _) in enumerate(daemons):
            t0 = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
            print(f"instance {i}: SIGTERM to exit: {time.monotonic() - t0:.2f} s "
                  f"(exit {daemon.returncode})")
    finally:
        for daemon, _ in daemons:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)


if __name__ == "__main__":
    main()
