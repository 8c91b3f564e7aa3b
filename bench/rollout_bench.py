"""From the start of `certd run` to "served on both nodes", for N two-name certificates in the
lab (pebble -> haproxy -> 2 nginx; the daemon issues and deploys them in batches). Prints
seconds, seconds per certificate, reloads per node (counted by a wrapper around nginx's own
reload command) and the daemon's peak RSS.

    .venv/bin/python bench/rollout_bench.py [-n 20 200 1000] [--storage sqlite|postgresql]
                                            [--instances 1 2]

`--storage postgresql` puts the store in a private PostgreSQL cluster (a new database per
run) and `--instances K...` runs K `certd run` instances on it (K > 1 only with PostgreSQL),
each node's `/.well-known/acme-challenge/` upstream naming every instance (round robin), as
in tests/test_instances_lab.py. Each run has its own pebble, so its orders and issued
certificates are counted from pebble's side (each certificate should be ordered once).

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

from bench import _store  # noqa: E402
from bench._proc import free_port, stop  # noqa: E402
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

DEPLOYED = "SELECT COUNT(*) FROM deployments WHERE status = 'deployed'"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(lab: Lab, root: Path, n: int, pg=None, instances: int = 1) -> None:
    names = [f"r{n}x{i:04d}" for i in range(n)]
    root.mkdir(parents=True)
    lab.set_sites({name: [f"{name}.test", f"www.{name}.test"] for name in names})
    counter = root / "reloads"
    pebble = lab.start_pebble()  # its own log: orders and issuances of this run alone
    storage, db = _store.storage_config(pg)
    configs = []
    for i in range(instances):
        data = lab_config_data(lab, root / f"state{i}",
                               [{"name": name, "domains": [f"{name}.test", f"www.{name}.test"],
                                 "frontends": ["web"]} for name in names], pebble)
        data.update(storage)
        data["frontends"]["web"]["reload"] = counted_reload(lab, counter)
        data["renewal"] = {"budget": {"orders_per_3h": 100000}}
        data["log_level"] = "info"
        if instances > 1:
            data["challenge"] = {"listen": f"127.0.0.1:{free_port()}"}
        configs.append((write_config(root / f"config{i}.yaml", data), data))
    lab.set_challenge_servers([d["challenge"]["listen"] for _, d in configs]
                              if instances > 1 else None)

    def deployed() -> int:
        if db is None:
            return deployed_rows(root / "state0" / "certd.db")
        return _store.count(db, DEPLOYED)

    load = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.perf_counter()
    daemons = [Daemon(path, root / f"certd{i}.log") for i, (path, _) in enumerate(configs)]
    peak = [0.0] * instances
    try:
        while deployed() < 2 * n:
            if not all(d.alive() for d in daemons) or time.perf_counter() - t0 > 600:
                print("\n".join(d.log_tail() for d in daemons))
                raise SystemExit(f"n={n}: {deployed()} of {2 * n} deployed")
            peak = [max(p, peak_rss_mb(d.proc.pid)) for p, d in zip(peak, daemons)]
            time.sleep(0.05 if db is None else 0.1)  # psql is a process per poll
        seconds = time.perf_counter() - t0
        peak = [max(p, peak_rss_mb(d.proc.pid)) for p, d in zip(peak, daemons)]
        time.sleep(2)  # anything a duplicate order would still do
    finally:
        for d in daemons:
            stop(d.proc)
        lab.set_challenge_servers(None)
        pebble.stop()
    missing = [(node.name, name) for node in lab.nodes for name in names
               if not served_serial(lab, node.name, f"www.{name}.test")]
    reloads = reloads_per_node(counter)
    ordered = [d.log().count(": ordering (") for d in daemons]
    print(f"n={n}, {instances} instance(s), {_store_name(db)}: served on both nodes "
          f"{seconds:.2f} s after start ({seconds / n:.4f} s per certificate); pebble: "
          f"{pebble.count_new_orders()} orders, {pebble.count_issued()} issued; orders by "
          f"instance {ordered}; reloads per node {reloads}; peak RSS "
          f"{', '.join(f'{p:.0f}' for p in peak)} MB; not served afterwards: {len(missing)}; "
          f"load average at start {' '.join(load)}, "
          f"at end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


def _store_name(db) -> str:
    return "sqlite" if db is None else "postgresql"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[20, 200, 1000])
    _store.add_argument(parser)
    parser.add_argument("--instances", type=int, nargs="+", default=[1],
                        help="`certd run` instances on the store, one run per value")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (n, instances)")
    args = parser.parse_args()
    if max(args.instances) > 1 and args.storage != "postgresql":
        parser.error("several instances share a store only with --storage postgresql")
    with tempfile.TemporaryDirectory(prefix="certd-rollout-") as tmp, \
            _store.cluster(args.storage) as pg, Lab.start(Path(tmp) / "lab") as lab:
        runs = 0
        for n in args.n:
            for _ in range(args.repeat):
                for instances in args.instances:
                    runs += 1
                    run(lab, Path(tmp) / f"run{runs}", n, pg, instances)


if __name__ == "__main__":
    main()
