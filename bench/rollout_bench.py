"""From the start of `certd run` to "served on both nodes", for N two-name certificates in the
lab (pebble -> haproxy -> 2 nginx; the daemon issues and deploys them in batches). Prints
seconds, seconds per certificate, reloads per node (counted by a wrapper around nginx's own
reload command) and the daemon's peak RSS.

    .venv/bin/python bench/rollout_bench.py [-n 20 200 1000]

"Served" is the store's record of a verified deployment (written after a TLS handshake saw
the new serial on that node); every name is checked again by a handshake afterwards (not
timed). Not a test: no assertion. Targets (issue 11): 20 within 3 s; 1,000 within 60 s with at
most 10 reloads per node; RSS under 300 MB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._proc import stop  # noqa: E402
from tests.certd_lab import (  # noqa: E402
    Daemon,
    counted_reload,
    deployed_rows,
    lab_config_data,
    reloads_per_node,
    served_serial,
    write_config,
)
from tests.lab import Lab  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(lab: Lab, root: Path, n: int) -> None:
    names = [f"r{n}x{i:04d}" for i in range(n)]
    root.mkdir(parents=True)
    lab.set_sites({name: [f"{name}.test", f"www.{name}.test"] for name in names})
    counter = root / "reloads"
    data = lab_config_data(lab, root / "state",
                           [{"name": name, "domains": [f"{name}.test", f"www.{name}.test"],
                             "frontends": ["web"]} for name in names])
    data["frontends"]["web"]["reload"] = counted_reload(lab, counter)
    data["renewal"] = {"budget": {"orders_per_3h": 100000}}
    data["log_level"] = "info"
    config = write_config(root / "config.yaml", data)
    database = root / "state" / "certd.db"
    t0 = time.perf_counter()
    daemon = Daemon(config, root / "certd.log")
    peak = 0.0
    try:
        while deployed_rows(database) < 2 * n:
            if not daemon.alive() or time.perf_counter() - t0 > 600:
                print(daemon.log_tail())
                raise SystemExit(f"n={n}: {deployed_rows(database)} of {2 * n} deployed")
            peak = max(peak, peak_rss_mb(daemon.proc.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        peak = max(peak, peak_rss_mb(daemon.proc.pid))
    finally:
        stop(daemon.proc)
    missing = [(node.name, name) for node in lab.nodes for name in names
               if not served_serial(lab, node.name, f"www.{name}.test")]
    reloads = reloads_per_node(counter)
    print(f"n={n}: served on both nodes {seconds:.2f} s after start "
          f"({seconds / n:.4f} s per certificate); reloads per node {reloads}; "
          f"peak RSS {peak:.0f} MB; not served afterwards: {len(missing)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[20, 200, 1000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="certd-rollout-") as tmp:
        with Lab.start(Path(tmp) / "lab") as lab:
            for n in args.n:
                run(lab, Path(tmp) / f"run{n}", n)


if __name__ == "__main__":
    main()
