"""Issue N two-name certificates through the lab (pebble -> haproxy -> 2 nginx -> certd) with
K in flight; print p50/p95 seconds per certificate (order to PEM) and certificates per second.

    .venv/bin/python bench/issue_bench.py [-n 50] [-k 10] [--key-type ec-p256]

Needs the lab's Debian packages (bash scripts/test installs them). Not a test: no assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certd.app import challenge_listener, open_certd  # noqa: E402
from tests.certd_lab import lab_config  # noqa: E402
from tests.lab import Lab  # noqa: E402


async def bench(lab: Lab, state: Path, n: int, in_flight: int, key_type: str) -> None:
    certs = [{"name": f"bench{i}", "domains": [f"bench{i}.test", f"www.bench{i}.test"],
              "frontends": ["web"], "key_type": key_type} for i in range(n)]
    cfg = lab_config(lab, state, certs)
    durations: list[float] = []
    failures: list[str] = []
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        await certd.issuer.ensure_account()  # account registration is not per certificate
        gate = asyncio.Semaphore(in_flight)

        async def one(spec) -> None:
            async with gate:
                t0 = time.perf_counter()
                try:
                    await certd.issuer.issue(spec)
                except Exception as exc:  # report, do not stop the run
                    failures.append(f"{spec.name}: {exc}")
                    return
                durations.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(spec) for spec in certd.specs()))
        wall = time.perf_counter() - t0
    durations.sort()
    p95 = durations[max(0, int(round(0.95 * len(durations))) - 1)] if durations else float("nan")
    print(f"certificates: {len(durations)} issued, {len(failures)} failed, {in_flight} in flight,"
          f" key {key_type}")
    if durations:
        print(f"per certificate (order to PEM): p50 {statistics.median(durations):.3f} s, "
              f"p95 {p95:.3f} s, max {durations[-1]:.3f} s")
    print(f"throughput: {len(durations) / wall:.1f} certificates/s ({wall:.2f} s wall)")
    for failure in failures[:5]:
        print("  failed:", failure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="certificates (default 50)")
    parser.add_argument("-k", "--in-flight", type=int, default=10, help="concurrent orders")
    parser.add_argument("--key-type", default="ec-p256")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="certd-bench-") as tmp:
        with Lab.start(Path(tmp) / "lab") as lab:
            asyncio.run(bench(lab, Path(tmp) / "state", args.n, args.in_flight, args.key_type))


if __name__ == "__main__":
    main()
