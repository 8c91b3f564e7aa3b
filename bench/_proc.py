"""What every bench needs around the daemon it starts: a free port, its RSS, a clean stop
(by PID, never by name)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(daemon: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
    if daemon.poll() is not None:
        return
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(grace)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(10)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its live descendants (API workers, a postmaster's
    backends), from /proc: what the work cost, whatever else shares the cores."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(c) for c in _children(pid))


QUIET = 15.0  # seconds without a new "sweep done" in any log: the instances are at rest


def settle(logs: list[Path], timeout: float = 180) -> float:
    """Until no log has shown a new "sweep done" for QUIET seconds (a follow-up sweep, e.g.
    sweep.BUSY_RECHECK after work found under another instance's lease, would otherwise run
    during the measurement); the seconds waited."""
    t0 = last = time.monotonic()
    counts = [p.read_text().count("sweep done") for p in logs]
    while time.monotonic() - last < QUIET and time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        now = [p.read_text().count("sweep done") for p in logs]
        if now != counts:
            counts, last = now, time.monotonic()
    return time.monotonic() - t0
