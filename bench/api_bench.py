"""A store with N API aliases (custom domains): start `certd run` on it with W API worker
processes (`api.workers`), wait for its first sweep (every alias is due and fails fast at an
unreachable CA), then, for GET /api/v1/domains?limit=100 and GET /api/v1/domains/<random
alias>: an open-loop load at a fixed rate (R requests/s for D seconds, each request sent at
its scheduled time whatever the others do, its latency counted from that time: p50/p99), then
the saturation throughput with C closed-loop clients (wrk, or aiohttp); then a burst of P
new-domain POSTs (202/s). Repeated for each W given.

    .venv/bin/python bench/api_bench.py [-n 10000] [--workers 1 2] [--rate 500] [-c 50]
                                        [-d 10] [--posts 500] [--storage sqlite|postgresql]
                                        [--instances K]

`--storage postgresql` puts the aliases in a private PostgreSQL cluster (a new database per
W) and `--instances K` (only with PostgreSQL) starts K `certd run` on it, each with W workers
and its own API port: every request (the open loop, the aliohttp generators, the POSTs) goes
to the instances' ports in turn (round robin), and the saturation runs K wrk processes at
once, one per instance, with the clients split between them (the rate is their sum, p50/p99
the worse of the K: wrk's histograms cannot be merged).

wrk (Debian package `wrk`) is closed-loop, so it only measures the saturation; the fixed
rate comes from an aiohttp generator in this file (wrk2 is not packaged). Not a test: no
assertion. Target: read p99 under 50 ms at an offered load of 500 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _store
from bench._proc import QUIET, cpu_seconds, free_port, rss_mb, settle, stop
from certd.model import Alias, utcnow
from certd.store.sqlite import SqliteStore

TOKEN = "bench-" + "0123456789abcdef" * 2
SUFFIXES = ["example.com", "example.org", "example.net", "shop.example.co.uk"]


def alias_domain(i: int) -> str:
    return f"d{i:05d}.{SUFFIXES[i % len(SUFFIXES)]}"


def config_data(root: Path, api_port: int, workers: int = 1) -> dict:
    return {
        "state_dir": str(root / "state"),
        "log_level": "info",
        # nothing listens here: every order (sweep or POST) fails at once and backs off
        "acme": {"directory": f"https://127.0.0.1:{free_port()}/dir", "timeout": "2s"},
        "challenge": {"listen": f"127.0.0.1:{free_port()}"},
        "api": {"listen": f"127.0.0.1:{api_port}", "tokens_file": str(root / "api-tokens"),
                "workers": workers},
        # the first sweep still runs at start; later ones would not come during the bench
        # and a long backoff, so the failed aliases' retry wake-up does not come either
        "renewal": {"sweep_interval": "24h", "max_concurrent": 50, "backoff": ["6h"]},
        "domains": {"default_frontends": ["web"], "per_token_per_hour": 1_000_000,
                    "preflight": False, "allow_special_use": ["example"]},  # example.com/.org
        "frontends": {"web": {
            "nodes": [{"name": "fe1", "address": "127.0.0.2"},
                      {"name": "fe2", "address": "127.0.0.3"}],
            "deployer": {"type": "file", "path": str(root / "nodes/{node}/{certificate}")}}},
    }


async def populate(where: Path | dict, n: int) -> None:
    """N aliases in the store a config dict names, or in the SQLite file at a Path."""
    store = SqliteStore(where) if isinstance(where, Path) else _store.open_store(where)
    await store.open()
    now = utcnow()
    try:
        async with store.transaction():
            for i in range(n):
                await store.add_alias(Alias(alias_domain(i), ("web",), "bench",
                                            now - timedelta(minutes=n - i)))
    finally:
        await store.close()


def wait_for(log_path: Path, text: str, timeout: float, daemon: subprocess.Popen) -> float:
    t0 = time.monotonic()
    while text not in log_path.read_text():
        if daemon.poll() is not None:
            raise SystemExit(f"certd exited ({daemon.returncode}) before {text!r}:\n"
                             + log_path.read_text()[-3000:])
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"no {text!r} in the log after {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - t0


# --- wrk ---------------------------------------------------------------------------------

WRK_LUA = """
local paths = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
wrk.headers["Authorization"] = "Bearer %(token)s"
math.randomseed(os.time())
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
done = function(summary, latency, requests)
  local out = io.open("%(out)s", "w")
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
                 + summary.errors.status + summary.errors.timeout
  out:write(string.format(
    '{"requests": %%d, "seconds": %%f, "p50_us": %%f, "p99_us": %%f, "max_us": %%f, '
    .. '"errors": %%d, "non2xx": %%d}',
    summary.requests, summary.duration / 1e6, latency:percentile(50),
    latency:percentile(99), latency.max, errors, summary.errors.status))
  out:close()
end
"""


def wrk_run(root: Path, bases: list[str], paths: list[str], clients: int, seconds: int
            ) -> dict:
    """`clients` connections for `seconds`, split over one wrk per base, all at once."""
    tag = f"{len(paths)}"
    paths_file, script = root / f"paths{tag}.txt", root / f"load{tag}.lua"
    outs = [root / f"wrk{tag}-{i}.json" for i in range(len(bases))]
    paths_file.write_text("\n".join(paths) + "\n")
    runs = []
    for i, (base, out) in enumerate(zip(bases, outs)):
        share = clients // len(bases) + (i < clients % len(bases))
        script_i = script.with_name(f"{script.stem}-{i}.lua")
        script_i.write_text(WRK_LUA % {"paths": paths_file, "token": TOKEN, "out": out})
        runs.append(subprocess.Popen(
            ["wrk", "-t", str(min(4 // len(bases) or 1, share)), "-c", str(share),
             "-d", f"{seconds}s", "--timeout", "10s", "-s", str(script_i), base],
            stdout=subprocess.DEVNULL))
    for run in runs:
        if run.wait() != 0:
            raise SystemExit(f"wrk exited {run.returncode}")
    rs = [json.loads(out.read_text()) for out in outs]
    return {"requests": sum(r["requests"] for r in rs),
            "rps": sum(r["requests"] / r["seconds"] for r in rs),
            "p50_ms": max(r["p50_us"] for r in rs) / 1000,
            "p99_ms": max(r["p99_us"] for r in rs) / 1000,
            "max_ms": max(r["max_us"] for r in rs) / 1000,
            "errors": sum(r["errors"] for r in rs)}


# --- aiohttp (fallback for the GETs, and the POST burst) -----------------------------------

def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(p / 100 * len(values))) - 1))]


async def aiohttp_gets(bases: list[str], paths: list[str], clients: int, seconds: float,
                       max_requests: int = 200_000) -> dict:
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    rng = random.Random(1)
    deadline = time.perf_counter() + seconds
    turn = iter(range(1 << 62))
    async with aiohttp.ClientSession(headers=headers,
                                     connector=aiohttp.TCPConnector(limit=clients)) as http:
        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline and len(latencies) < max_requests:
                t0 = time.perf_counter()
                base = bases[next(turn) % len(bases)]
                async with http.get(base + rng.choice(paths)) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"requests": len(latencies), "rps": len(latencies) / wall,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "max_ms": max(latencies) * 1000,
            "errors": errors}


async def post_burst(bases: list[str], n: int, clients: int, first: int) -> dict:
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    todo = iter(range(first, first + n))
    async with aiohttp.ClientSession(headers=headers,
                                     connector=aiohttp.TCPConnector(limit=clients)) as http:
        async def client() -> None:
            for i in todo:
                t0 = time.perf_counter()
                async with http.post(bases[i % len(bases)] + "/api/v1/domains",
                                     json={"domain": f"new{i}.example.com"}) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"statuses": statuses, "accepted_per_s": statuses.get(202, 0) / wall, "wall": wall,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000}


async def open_loop(bases: list[str], paths: list[str], rate: float, seconds: float,
                    connections: int = 256, warmup: float = 2.0) -> dict:
    """`rate` requests/s for `seconds`, each sent at its scheduled time on a pool of up to
    `connections` kept-alive connections (a late answer never delays the next request);
    latency from the scheduled time to the end of the body, so a queue shows (no coordinated
    omission). The first `warmup` seconds at the same rate are not counted (connections
    opened, each process's page cache of the store warm)."""
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    rng = random.Random(3)
    n = int(rate * seconds)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=connections)) as http:
        async def one(at: float, path: str) -> None:
            nonlocal errors
            try:
                async with http.get(path) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
            except (TimeoutError, aiohttp.ClientError):
                errors += 1
            latencies.append(time.perf_counter() - at)

        async def fire(count: int) -> float:
            """`count` requests at `rate`, all answered; the seconds spent sending them."""
            tasks = []
            t0 = time.perf_counter() + 0.05
            for i in range(count):
                at = t0 + i / rate
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                base = bases[i % len(bases)]  # the instances in turn
                tasks.append(asyncio.create_task(one(at, base + rng.choice(paths))))
            sent = time.perf_counter() - t0
            await asyncio.gather(*tasks)
            return sent

        await fire(int(rate * warmup))
        latencies.clear()
        errors = 0
        sent = await fire(n)
    return {"requests": n, "rps": n / sent, "p50_ms": statistics.median(latencies) * 1000,
            "p90_ms": percentile(latencies, 90) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "max_ms": max(latencies) * 1000,
            "errors": errors}


def show(what: str, r: dict) -> None:
    p90 = f", p90 {r['p90_ms']:.1f} ms" if "p90_ms" in r else ""
    print(f"{what}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms{p90}, "
          f"p99 {r['p99_ms']:.1f} ms, "
          f"max {r['max_ms']:.1f} ms ({r['requests']} requests, {r['errors']} errors)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10000, help="aliases in the store")
    parser.add_argument("-c", "--clients", type=int, default=50,
                        help="closed-loop clients for the saturation run")
    parser.add_argument("-d", "--seconds", type=int, default=10, help="per run and endpoint")
    parser.add_argument("--rate", type=float, default=500, help="open-loop requests/s")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="api.workers values to measure, one daemon each")
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--no-wrk", action="store_true", help="use the aiohttp generator")
    _store.add_argument(parser)
    parser.add_argument("--instances", type=int, default=1,
                        help="`certd run` instances on the store (> 1: PostgreSQL only)")
    args = parser.parse_args()
    if args.instances > 1 and args.storage != "postgresql":
        parser.error("several instances share a store only with --storage postgresql")
    if shutil.which("wrk") is None and not args.no_wrk:
        print("wrk not found (it is Debian's `wrk`, hand-installed on the bench machine, not "
              "in scripts/test): the saturation runs use the aiohttp generator instead")
    with _store.cluster(args.storage) as pg:
        for workers in args.workers:
            run(args, workers, pg)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(args: argparse.Namespace, workers: int, pg=None) -> None:
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    k = args.instances
    print(f"--- {args.storage}, {k} instance(s) x api.workers: {workers}")
    with tempfile.TemporaryDirectory(prefix="certd-api-") as tmp:
        root = Path(tmp)
        storage, _ = _store.storage_config(pg)
        ports = [free_port() for _ in range(k)]
        datas = []
        for i, port in enumerate(ports):
            data = {**config_data(root, port, workers), **storage}
            if k > 1:
                data["state_dir"] = str(root / f"state{i}")
            datas.append(data)
            Path(data["state_dir"]).mkdir(mode=0o700, exist_ok=True)
        (root / "api-tokens").write_text(f"bench {TOKEN}\n")
        (root / "api-tokens").chmod(0o600)
        t0 = time.perf_counter()
        asyncio.run(populate(datas[0], args.n))
        print(f"store: {args.n} aliases added in {time.perf_counter() - t0:.1f} s")
        daemons: list[tuple[subprocess.Popen, Path]] = []
        try:
            for i, data in enumerate(datas):
                config_path = root / f"config{i}.yaml"
                config_path.write_text(yaml.safe_dump(data))
                log_path = root / f"certd{i}.log"
                with open(log_path, "w") as log:
                    daemons.append((subprocess.Popen(
                        [sys.executable, "-m", "certd", "-c", str(config_path), "run"],
                        stdout=log, stderr=subprocess.STDOUT), log_path))
            t0 = time.monotonic()
            for i, (daemon, log_path) in enumerate(daemons):
                wait_for(log_path, "api listening", 120, daemon)
            print(f"api listening after {time.monotonic() - t0:.1f} s")
            for i, (daemon, log_path) in enumerate(daemons):
                wait_for(log_path, "sweep done", 900, daemon)
                line = next(l for l in log_path.read_text().splitlines() if "sweep done" in l)
                print(f"instance {i}: first sweep done {time.monotonic() - t0:.1f} s after "
                      f"start: {line.split('sweep done')[1]}")
            settled = settle([log_path for _, log_path in daemons])
            print(f"waited {settled:.1f} s until no sweep had run for {QUIET:.0f} s (with "
                  "several instances, one sweeps again 10 s after finding work under another's "
                  "lease)")
            for i, (daemon, _) in enumerate(daemons):
                children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children"
                                ).read_text().split()
                workers_rss = [rss_mb(int(c)) for c in children]
                print(f"instance {i}: RSS after the first sweep: {rss_mb(daemon.pid):.0f} MB"
                      + (f", API workers {', '.join(f'{r:.0f}' for r in workers_rss)} MB"
                         if workers_rss else ""))
            time.sleep(1)
            bases = [f"http://127.0.0.1:{port}" for port in ports]
            rng = random.Random(7)
            one = [f"/api/v1/domains/{alias_domain(rng.randrange(args.n))}"
                   for _ in range(2000)]
            # listing pages: the first and cursors spread over the store
            domains = sorted(alias_domain(i) for i in range(args.n))
            pages = ["/api/v1/domains?limit=100"] + [
                f"/api/v1/domains?limit=100&cursor={domains[i]}"
                for i in range(99, args.n - 100, 100)]
            gen = "wrk" if use_wrk else "aiohttp"
            if k > 1:
                gen += f", {k} at once, one per instance"
            swept = [log_path.read_text().count("sweep done") for _, log_path in daemons]
            pids = [daemon.pid for daemon, _ in daemons]

            def cpu() -> tuple[float, float]:
                return (sum(cpu_seconds(pid) for pid in pids),
                        cpu_seconds(pg.pid) if pg is not None and pg.pid else 0.0)

            def per_request(before: tuple[float, float], requests: int) -> str:
                after = cpu()
                return (f"   CPU per request: certd {(after[0] - before[0]) / requests * 1000:.2f}"
                        f" ms" + (f", postgres {(after[1] - before[1]) / requests * 1000:.2f} ms"
                                  if pg is not None else ""))

            for what, paths in (("GET /api/v1/domains?limit=100", pages),
                                ("GET /api/v1/domains/<domain>", one)):
                load, before = loadavg(), cpu()
                r = asyncio.run(open_loop(bases, paths, args.rate, args.seconds))
                show(f"{what} open loop {args.rate:.0f}/s (load {load})", r)
                print(per_request(before, r["requests"] + int(args.rate * 2)))  # + warm-up
                load, before = loadavg(), cpu()
                if use_wrk:
                    r = wrk_run(root, bases, paths, args.clients, args.seconds)
                else:
                    r = asyncio.run(aiohttp_gets(bases, paths, args.clients, args.seconds))
                show(f"{what} saturation ({args.clients} clients, {gen}; load {load})", r)
                print(per_request(before, r["requests"]))
            load, before = loadavg(), cpu()
            r = asyncio.run(post_burst(bases, args.posts, args.clients, args.n))
            print(f"POST /api/v1/domains x{args.posts}: {r['accepted_per_s']:.0f} accepted/s "
                  f"({r['statuses']} in {r['wall']:.2f} s), p50 {r['p50_ms']:.1f} ms, "
                  f"p99 {r['p99_ms']:.1f} ms (load {load})")
            print(per_request(before, args.posts) + " (the POST's store writes; the orders "
                  "it queues fail at the unreachable CA in the main process)")
            for i, (_, log_path) in enumerate(daemons):
                text = log_path.read_text()
                sweeps = text.count("sweep done") - swept[i]
                if sweeps > 0:
                    print(f"note: instance {i}: {sweeps} more sweep(s) ran during the "
                          "measurement")
                errors = [l for l in text.splitlines() if "Traceback" in l
                          or " failed" in l and "api:" in l]
                if errors:
                    print(f"instance {i} log: {len(errors)} API error lines, first: "
                          f"{errors[0]}")
        finally:
            for daemon, _ in daemons:
                stop(daemon)


if __name__ == "__main__":
    main()
