"""A store with N aliases and N certificates with their keys (the populate of
bench/api_bench.py and of bench/sweep_bench.py): time `certd backup` plain and encrypted, and
`certd restore` of each, in process (certd/store/backup.py); report the sizes.

    .venv/bin/python bench/backup_bench.py [-n 10000]

Not a test: no assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import api_bench, sweep_bench  # noqa: E402
from certd.store import backup  # noqa: E402

PASSPHRASE = b"bench passphrase, not a real one"


def paths(root: Path) -> backup.StatePaths:
    return backup.StatePaths(root, root / "certd.db", root / "api-tokens")


async def run(root: Path, n: int) -> None:
    origin = paths(root / "origin")
    origin.state_dir.mkdir(mode=0o700)
    t0 = time.perf_counter()
    await api_bench.populate(origin.database, n)
    await sweep_bench.populate(origin.database, n, random.Random(42))
    origin.tokens_file.write_text(f"bench {api_bench.TOKEN}\n")
    print(f"store: {n} aliases, {n} certificates with keys; "
          f"{origin.database.stat().st_size / 1e6:.1f} MB, made in "
          f"{time.perf_counter() - t0:.1f} s")
    for name, passphrase in (("plain", None), ("encrypted", PASSPHRASE)):
        target = root / f"{name}.backup"
        t0 = time.perf_counter()
        done = await backup.backup(origin, target, passphrase=passphrase)
        took = time.perf_counter() - t0
        t0 = time.perf_counter()
        await backup.restore(target, paths(root / f"restored-{name}"), passphrase=passphrase)
        print(f"{name}: backup {took:.2f} s, {done.size / 1e6:.1f} MB; "
              f"restore {time.perf_counter() - t0:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="certd-backup-") as tmp:
        asyncio.run(run(Path(tmp), args.n))


if __name__ == "__main__":
    main()
