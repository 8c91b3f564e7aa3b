"""One monitor sweep over N names x K nodes: a throwaway CA issues N leaf certificates (a few
with 20 days left), written in certd's deployed layout and recorded as deployed to K nodes;
one nginx serves them on K loopback addresses (127.0.0.20...), choosing the certificate by
SNI. `certd run` starts on it and its first monitor sweep (default concurrency) is timed from
its own log line; the daemon's peak RSS and CPU time are read from /proc.

    .venv/bin/python bench/monitor_bench.py [-n 1000] [--nodes 10] [--repeat 1] [--check]
                                            [--concurrency C] [--py-spy] [--setup-only]

--repeat R starts the daemon R times on the same store (later runs see the alerts the first
one recorded: no new notices); --check also times `certd check --json`; --py-spy samples the
first sweep and prints where the time went. Before certd starts, the bench times bare Python
TLS handshakes and certd's own probe() and checks.evaluate() against the same nginx: the floor
under a probe.
Not a test: no assertion. Target: 10,000 probes in under 60 s, daemon RSS under 250 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _fleet  # noqa: E402
from bench._proc import free_port, stop  # noqa: E402
from certd.model import utcnow  # noqa: E402

SWEPT = re.compile(r"monitor: swept (\d+) probes \((\d+) findings\) in ([\d.]+) s")
TICK = os.sysconf("SC_CLK_TCK")


def config_data(root: Path, names: list[str], addrs: list[str], tls_port: int,
                ca: Path, concurrency: int | None = None) -> dict:
    free = free_port
    return {
        "state_dir": str(root / "state"),
        "log_level": "info",
        # nothing listens here; nothing is due either (the 20-days-left ones renew at 10 d)
        "acme": {"directory": f"https://127.0.0.1:{free()}/dir", "timeout": "2s",
                 "ari": False},
        "challenge": {"listen": f"127.0.0.1:{free()}"},
        "api": {"listen": f"127.0.0.1:{free()}"},
        "renewal": {"before_expiry": "10d", "deploy_sync_interval": "7d"},
        # the rest: defaults (concurrency too, unless --concurrency says otherwise)
        "monitor": {"interval": "24h", "ca_bundle": str(ca),
                    **({"concurrency": concurrency} if concurrency else {})},
        "alerts": {"notifiers": [{"type": "log"}]},
        "frontends": {"web": {
            "tls_port": tls_port,
            "nodes": [{"name": f"fe{i:02d}", "address": a} for i, a in enumerate(addrs)],
            # one nginx serves every node's address from one directory: all nodes share it
            "deployer": {"type": "file", "path": str(root / "certs/{certificate}")}}},
        "certificates": [{"name": n, "domains": [n], "frontends": ["web"]} for n in names],
    }


class Watch:
    """Poll a process's VmRSS (and keep VmHWM, utime+stime) until stopped."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_rss_mb = 0.0
        self.hwm_mb = 0.0
        self.cpu_samples: list[tuple[float, float]] = []  # (monotonic, utime + stime)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            status = self.status()
            self.peak_rss_mb = max(self.peak_rss_mb, status.get("VmRSS", 0.0))
            self.hwm_mb = max(self.hwm_mb, status.get("VmHWM", 0.0))
            self.cpu_samples.append((time.monotonic(), self.cpu_s()))

    def cpu_at(self, when: float) -> float:
        """CPU time at the last sample taken before `when` (0 before the first)."""
        return max((cpu for t, cpu in self.cpu_samples if t <= when), default=0.0)

    def status(self) -> dict[str, float]:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return {}
        return {k: int(v.split()[0]) / 1024 for k, _, v in
                (line.partition(":") for line in text.splitlines()) if k in ("VmRSS", "VmHWM")}

    def cpu_s(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def wait_line(log_path: Path, pattern: re.Pattern | str, timeout: float,
              daemon: subprocess.Popen) -> re.Match | str:
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text()
        found = (pattern.search(text) if isinstance(pattern, re.Pattern)
                 else (pattern if pattern in text else None))
        if found:
            return found
        if daemon.poll() is not None:
            raise SystemExit(f"certd exited ({daemon.returncode}) before {pattern!r}:\n"
                             + text[-3000:])
        if time.monotonic() > deadline:
            raise SystemExit(f"no {pattern!r} in the log after {timeout:.0f} s:\n" + text[-3000:])
        time.sleep(0.05)


def start_py_spy(pid: int, out: Path) -> subprocess.Popen:
    """Sample the daemon (not pausing it) until interrupted; raw collapsed stacks to `out`."""
    return subprocess.Popen(["py-spy", "record", "--nonblocking", "-r", "50", "-f", "raw",
                             "-o", str(out), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(spy: subprocess.Popen) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(10)


def py_spy_summary(raw: Path, top: int = 12) -> None:
    """Where the samples went: by innermost function (self), and by monitor, ssl and
    cryptography frame anywhere on the stack (inclusive)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            if any(part in frame for part in ("certd/monitor/", "ssl", "cryptography/")):
                inclusive[frame] = inclusive.get(frame, 0) + n
    if not total:
        print("py-spy: no samples")
        return
    print(f"py-spy: {total} samples of the daemon's threads during the sweep")
    for title, table in (("self", own), ("inclusive (monitor, ssl, cryptography frames)",
                                          inclusive)):
        print(f"  by {title}:")
        for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {n / total:6.1%}  {frame[:110]}")


def run_daemon(root: Path, config_path: Path, run: int, timeout: float, linger: float,
               profile: Path | None = None) -> dict:
    log_path = root / f"certd-{run}.log"
    t_start = time.monotonic()
    with open(log_path, "w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "certd", "-c", str(config_path), "run"],
                                  stdout=log, stderr=subprocess.STDOUT)
    watch = Watch(daemon.pid)
    try:
        wait_line(log_path, "sweep done", 300, daemon)
        renewal_done = time.monotonic() - t_start
        rss_before = watch.status().get("VmRSS", float("nan"))
        spy = start_py_spy(daemon.pid, profile) if profile else None
        try:
            m = wait_line(log_path, SWEPT, timeout, daemon)
        finally:
            if spy is not None:
                stop_py_spy(spy)
        t_seen = time.monotonic()
        seen = t_seen - t_start
        cpu_after = watch.cpu_s()
        status = watch.status()
        # the sweep began `sweep_s` before its line: CPU from the sample just before that
        cpu_before = watch.cpu_at(t_seen - float(m.group(3)))
        time.sleep(linger)  # notices go out after the sweep's line: let the queue drain
        lines = log_path.read_text().splitlines()
        return {
            "run": run, "probes": int(m.group(1)), "findings": int(m.group(2)),
            "sweep_s": float(m.group(3)), "seen_after_s": seen, "renewal_done_s": renewal_done,
            "cpu_sweep_s": cpu_after - cpu_before, "cpu_total_s": cpu_after,
            "rss_before_mb": rss_before, "rss_after_mb": status.get("VmRSS", float("nan")),
            "peak_rss_mb": max(watch.peak_rss_mb, status.get("VmHWM", 0.0)),
            "notices": sum(" certd.alerts: " in line for line in lines),
            "dropped": sum("queue full, dropped" in line for line in lines),
            "warning_lines": sum(" WARNING " in line for line in lines),
            "error_lines": sum(" ERROR " in line or "Traceback" in line for line in lines),
            "log": str(log_path),
        }
    finally:
        watch.stop()
        stop(daemon)


def run_check(config_path: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "certd", "-c", str(config_path), "check",
                           "--json"], capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    try:
        doc = json.loads(proc.stdout)
        items = doc.get("findings", doc) if isinstance(doc, dict) else doc
        count = len(items) if isinstance(items, list) else None
    except ValueError:
        count = None
    return {"wall_s": wall, "exit": proc.returncode, "json_items": count,
            "stderr_tail": proc.stderr.strip().splitlines()[-3:]}


def floor(addrs: list[str], names: list[str], port: int, samples: int) -> None:
    """Bare handshakes from Python (asyncio, CERT_NONE) against the same nginx."""
    rng = random.Random(3)
    targets = [(rng.choice(addrs), rng.choice(names)) for _ in range(samples)]
    for in_flight in (1, 50):
        wall, failed = asyncio.run(_fleet.handshakes(targets, port, in_flight))
        print(f"  {samples} handshakes, {in_flight:>2} in flight: {wall:6.2f} s, "
              f"{samples / wall:6.0f}/s, {wall / samples * 1000 * in_flight:5.2f} ms each"
              + (f", {failed} FAILED" if failed else ""))


def probe_floor(pki: _fleet.Pki, addrs: list[str], port: int, samples: int, ca: Path) -> None:
    """certd's own probe() (50 in flight, without and with the legacy-protocol handshakes)
    and checks.evaluate() on its results, in this process: what one probe costs certd."""
    try:
        from certd.config import MonitorConfig
        from certd.model import ProbeTarget
        from certd.monitor import checks, probe
    except ImportError as exc:
        print(f"  certd probe: skipped ({exc})")
        return
    rng = random.Random(5)
    serials = {c.name: c.serial for c in pki.leaves}
    targets = [ProbeTarget(name, address, port, f"web/{address}", name, "web")
               for name, address in ((rng.choice(list(serials)), rng.choice(addrs))
                                     for _ in range(samples))]

    async def sweep(protocols: bool) -> list:
        gate = asyncio.Semaphore(50)

        async def one(target):
            async with gate:
                return await probe.probe(target, timeout=10, protocols=protocols)
        return await asyncio.gather(*(one(t) for t in targets))

    for protocols in (False, True):
        c0, t0 = time.process_time(), time.perf_counter()
        results = asyncio.run(sweep(protocols))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        errors = sum(r.error is not None for r in results)
        print(f"  {samples} certd probe(protocols={protocols}), 50 in flight: {wall:6.2f} s, "
              f"{samples / wall:6.0f}/s, client CPU {cpu / samples * 1000:.2f} ms per probe"
              + (f", {errors} FAILED" if errors else ""))
    trust = checks.load_trust_store(ca)
    thresholds = checks.Thresholds.from_config(MonitorConfig())
    now = utcnow()
    deployed = now.replace(year=now.year - 1)
    c0 = time.process_time()
    found = sum(len(checks.evaluate(r, expected=checks.Expected(serials[r.target.domain],
                                                                  deployed),
                                    thresholds=thresholds, trust=trust, now=now))
                for r in results)
    cpu = time.process_time() - c0
    print(f"  checks.evaluate: {cpu / samples * 1000:.2f} ms CPU per probe "
          f"({found} findings in {samples} probes)")


def smoke(addrs: list[str], names: list[str], port: int) -> None:
    """One name on two addresses must come back with its own certificate."""
    from cryptography import x509

    ctx = _fleet.client_context()
    for address in addrs[:1] + addrs[-1:]:
        der = asyncio.run(_fleet.handshake(ctx, address, port, names[0]))
        served = x509.load_der_x509_certificate(der)
        san = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if san.get_values_for_type(x509.DNSName) != [names[0]]:
            raise SystemExit(f"nginx on {address} served {san} for {names[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="names (certificates)")
    parser.add_argument("--nodes", type=int, default=10, help="node addresses (max 100)")
    parser.add_argument("--short", type=int, default=None,
                        help="certificates with 20 days left (default: n / 25)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="monitor.concurrency (default: certd's default)")
    parser.add_argument("--repeat", type=int, default=1, help="daemon starts on one store")
    parser.add_argument("--check", action="store_true", help="also time `certd check --json`")
    parser.add_argument("--floor", type=int, default=1000, metavar="N",
                        help="bare Python handshakes to time first (0: skip)")
    parser.add_argument("--timeout", type=float, default=900, help="per monitor sweep, s")
    parser.add_argument("--linger", type=float, default=5,
                        help="seconds the daemon keeps running after the sweep's line")
    parser.add_argument("--py-spy", action="store_true",
                        help="sample the first run's sweep with py-spy, print a summary")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--setup-only", action="store_true",
                        help="build the fleet, time the floor, do not start certd")
    args = parser.parse_args()
    short = args.n // 25 if args.short is None else args.short
    tmp = tempfile.mkdtemp(prefix="certd-monitor-")
    root = Path(tmp)
    addrs = _fleet.addresses(args.nodes)
    nginx = None
    try:
        t0 = time.perf_counter()
        pki = _fleet.make_pki(args.n, short, utcnow())
        t_pki = time.perf_counter() - t0
        names = [c.name for c in pki.leaves]
        t0 = time.perf_counter()
        _fleet.write_layout(root / "certs", pki.leaves)
        t_layout = time.perf_counter() - t0
        ca = root / "bench-ca.pem"
        ca.write_text(pki.root_pem)
        nodes = [f"fe{i:02d}" for i in range(args.nodes)]
        t0 = time.perf_counter()
        asyncio.run(_fleet.populate(root / "state" / "certd.db", pki.leaves, "web", nodes))
        t_store = time.perf_counter() - t0
        port = free_port(addrs[0])
        nginx = _fleet.Nginx(root / "nginx", root / "certs", addrs, port)
        t0 = time.perf_counter()
        nginx.start()
        smoke(addrs, names, port)
        t_nginx = time.perf_counter() - t0
        config_path = root / "config.yaml"
        config_path.write_text(yaml.safe_dump(config_data(root, names, addrs, port, ca,
                                                        args.concurrency)))
        print(f"fleet: {args.n} names ({short} with 20 days left) x {args.nodes} nodes = "
              f"{args.n * args.nodes} probes; nginx on {addrs[0]}..{addrs[-1]}:{port}")
        print(f"setup: PKI {t_pki:.1f} s, layout {t_layout:.1f} s, store {t_store:.1f} s, "
              f"nginx up + smoke {t_nginx:.1f} s")
        if args.floor:
            print("floor (bare Python handshakes, same nginx):")
            floor(addrs, names, port, args.floor)
            probe_floor(pki, addrs, port, args.floor, ca)

        if args.setup_only:
            return
        raw = root / "py-spy.txt" if args.py_spy else None
        runs = [run_daemon(root, config_path, i + 1, args.timeout, args.linger,
                           raw if i == 0 else None)
                for i in range(args.repeat)]
        print()
        print(f"{'run':>3} {'probes':>7} {'finds':>6} {'sweep s':>8} {'probes/s':>9} "
              f"{'cpu s':>6} {'rss before':>10} {'rss after':>9} {'peak rss':>8} {'notices':>7}")
        for r in runs:
            print(f"{r['run']:>3} {r['probes']:>7} {r['findings']:>6} {r['sweep_s']:>8.1f} "
                  f"{r['probes'] / max(r['sweep_s'], 1e-9):>9.0f} {r['cpu_sweep_s']:>6.1f} "
                  f"{r['rss_before_mb']:>8.0f}MB {r['rss_after_mb']:>7.0f}MB "
                  f"{r['peak_rss_mb']:>6.0f}MB {r['notices']:>7}")
        print("(rss before: when the renewal sweep was done; notices: lines of the log "
              f"notifier within {args.linger:g} s of the sweep's line)")
        if any(r["dropped"] for r in runs):
            print(f"alerts: queue-full drop lines: {[r['dropped'] for r in runs]}")
        print(f"(load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}: "
              "other work on this machine skews the figures)")
        first = runs[0]
        print(f"(first run: renewal sweep done {first['renewal_done_s']:.1f} s after start, "
              f"monitor line seen at {first['seen_after_s']:.1f} s, daemon CPU "
              f"{first['cpu_total_s']:.1f} s in all; target: < 60 s, < 250 MB)")
        if raw is not None:
            if raw.exists():
                py_spy_summary(raw)
            else:
                print("py-spy: no output (is py-spy installed, are we allowed to ptrace?)")
        if args.check:
            r = run_check(config_path, args.timeout)
            print(f"certd check --json: {r['wall_s']:.1f} s, exit {r['exit']}, "
                  f"{r['json_items']} JSON items; stderr tail: {r['stderr_tail']}")
        errors = [line for r in runs for line in Path(r["log"]).read_text().splitlines()
                  if " ERROR " in line or "Traceback" in line]
        if errors:
            print(f"log: {len(errors)} error lines, first: {errors[0][:200]}")
        if args.keep:
            print(f"kept: {root}")
    finally:
        if nginx is not None:
            nginx.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
