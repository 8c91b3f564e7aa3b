"""Process and port helpers for the test lab.

Every server the lab runs is a :class:`ManagedProcess`: started in its own session
(so its PID is also its process-group id), with stdout and stderr appended to one
log file, waited for by polling a TCP port, and stopped by PID -- SIGTERM to the
group, then SIGKILL after a short grace.  Nothing is ever signalled by name.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = ["LabError", "ManagedProcess", "free_port", "tcp_open", "wait_until"]

T = TypeVar("T")


class LabError(RuntimeError):
    """A lab component failed to start, answer or stop."""


# Ports handed out by this process, so two calls never return the same port
# even before either is bound.
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(hosts: Iterable[str] = ("127.0.0.1",), *, udp: bool = False) -> int:
    """Return a port that is free on every address in ``hosts`` (TCP, and UDP if asked).

    Ports are picked at random *below* the ephemeral range, so an outgoing
    connection cannot grab the port between this check and the server's bind,
    and never twice in one test process.
    """
    hosts = list(hosts)
    low_ephemeral, _ = _ephemeral_range()
    low, high = 10000, max(10001, low_ephemeral - 1)
    for _ in range(500):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        if all(_bindable(h, port, socket.SOCK_STREAM) for h in hosts) and (
            not udp or all(_bindable(h, port, socket.SOCK_DGRAM) for h in hosts)
        ):
            _handed_out.add(port)
            return port
    raise LabError(f"no free port on {hosts}")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll ``predicate()`` until it returns a truthy value; return that value.

    Raises :class:`LabError` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def tcp_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ManagedProcess:
    """One long-running server process owned by the lab.

    Args:
        name: short label used in messages (``"pebble"``, ``"nginx-fe1"``).
        argv: command line; the program is looked up on ``PATH``.
        log_path: file receiving stdout and stderr (appended).
        env: extra environment variables layered over ``os.environ``.
        cwd: working directory.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env or {})
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the started process (also its process-group id), or None."""
        return self.popen.pid if self.popen else None

    def start(self) -> "ManagedProcess":
        """Start the process in a new session with output going to ``log_path`` (again after
        a stop: the log is appended to)."""
        if self.alive():
            raise LabError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"### {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def fail(self, message: str) -> LabError:
        """A :class:`LabError` carrying ``message`` and the tail of this process's log."""
        return LabError(f"{self.name}: {message}\n--- {self.log_path} ---\n{self.log_tail()}")

    def wait_tcp(self, endpoints: Iterable[tuple[str, int]], timeout: float = 10.0) -> None:
        """Wait until every ``(host, port)`` accepts connections.

        Raises :class:`LabError` with the log tail if the process exits or the
        ports do not open within ``timeout`` seconds.
        """
        pending = list(endpoints)
        deadline = time.monotonic() + timeout
        while pending:
            if not self.alive():
                code = self.popen.returncode if self.popen else None
                raise self.fail(f"exited with status {code} before listening on {pending}")
            pending = [ep for ep in pending if not tcp_open(*ep)]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise self.fail(f"not listening on {pending} after {timeout:.1f}s")
            time.sleep(0.02)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds. Idempotent."""
        popen = self.popen
        if popen is None:
            return
        if popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # Also reap helpers left in the group (e.g. nginx workers) if the leader died first.
        self._signal_group(signal.SIGKILL)
        try:
            popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable process
            raise self.fail(f"pid {popen.pid} did not die after SIGKILL")

    def _signal_group(self, sig: int) -> None:
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover - group vanished and pid reused
            pass

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} alive={self.alive()}>"
