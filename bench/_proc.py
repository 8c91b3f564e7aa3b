"""What every bench needs around the daemon it starts: a free port, its RSS, a clean stop
(by PID, never by name)."""

from __future__ import annotations

import signal
import socket
import subprocess
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
