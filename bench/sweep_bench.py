"""A store with N certificates of mixed lifetimes (90 d, 45 d, 6 d, 160 h; some failing, some
with ARI windows): time one renewal sweep's decision (what is due, in what order), then start
`certd run` on it and read the daemon's resident memory at rest.

    .venv/bin/python bench/sweep_bench.py [-n 10000]

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

from bench._proc import free_port, rss_mb  # noqa: E402
from certd import config as configuration, keys  # noqa: E402
from certd.app import open_certd  # noqa: E402
from certd.model import (  # noqa: E402
    AriState, CertificateState, CertStatus, IssuedCertificate, utcnow)
from certd.store.sqlite import SqliteStore  # noqa: E402
from certd.sweep import Sweeper  # noqa: E402

LIFETIMES = [timedelta(days=90), timedelta(days=45), timedelta(days=6), timedelta(hours=160)]


def config_data(root: Path, n: int) -> dict:
    return {
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


async def populate(db: Path, n: int, rng: random.Random) -> int:
    key = keys.generate_key("ec-p256")
    leaf = keys.self_signed(key, "bench.example.org")
    cert_pem, key_pem = keys.cert_to_pem(leaf), keys.key_to_pem(key)
    now = utcnow()
    store = SqliteStore(db)
    await store.open()
    due = 0
    try:
        await store.db.execute("BEGIN")
        for i in range(n):
            name = f"c{i}"
            lifetime = rng.choice(LIFETIMES)
            age = lifetime * rng.uniform(0.0, 0.72)  # a few past their renewal time
            not_before = now - age
            due += age > lifetime * 2 / 3
            await store.add_certificate(IssuedCertificate(
                name=name, serial=f"{i:032x}", domains=(f"c{i}.example.org",
                                                       f"www.c{i}.example.org"),
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
        await store.db.execute("COMMIT")
    finally:
        await store.close()
    return due


async def decision_times(cfg, repeats: int) -> tuple[list[float], int, float]:
    async with open_certd(cfg) as certd:
        sweeper = Sweeper(certd)
        times, due = [], 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            decision = await sweeper.decide()
            times.append(time.perf_counter() - t0)
            due = len(decision.due)
        t0 = time.perf_counter()
        await certd.store.overview()
        overview_only = time.perf_counter() - t0
    return times, due, overview_only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(42)
    with tempfile.TemporaryDirectory(prefix="certd-sweep-") as tmp:
        root = Path(tmp)
        data = config_data(root, args.n)
        t0 = time.perf_counter()
        cfg = configuration.parse(data)
        parse_s = time.perf_counter() - t0
        (root / "state").mkdir(mode=0o700)
        due_expected = asyncio.run(populate(cfg.database_path, args.n, rng))
        times, due, overview_s = asyncio.run(decision_times(cfg, args.repeats))
        print(f"store: {args.n} certificates ({due_expected} past their lifetime renewal "
              f"time, ~2 % backing off, half with ARI windows)")
        print(f"config parse: {parse_s:.2f} s")
        print(f"sweep decision: median {statistics.median(times):.3f} s, max {max(times):.3f} s "
              f"over {args.repeats} runs ({due} due); of which store.overview() {overview_s:.3f} s")

        config_path = root / "config.yaml"
        config_path.write_text(yaml.safe_dump({**data, "log_level": "info"}))
        log_path = root / "certd.log"
        with open(log_path, "w") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "certd", "-c", str(config_path), "run"],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 300 and "sweep done" not in log_path.read_text():
                time.sleep(0.2)
            first_sweep = time.monotonic() - t0
            time.sleep(2)
            print(f"first sweep of the daemon (start, {due} due failing at an unreachable CA): "
                  f"{first_sweep:.1f} s")
            print(f"daemon RSS at rest after the first sweep: {rss_mb(daemon.pid):.0f} MB")
            t0 = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
            print(f"SIGTERM to exit: {time.monotonic() - t0:.2f} s (exit {daemon.returncode})")
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)


if __name__ == "__main__":
    main()
