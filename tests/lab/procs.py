"""Process and port helpers for the test lab.

Every server the lab runs is a :class:`ManagedProcess`: started in its own session
(so its PID is also its process-group id), with stdout and stderr appended to one
log file, waited for by polling a TCP port, and stopped by PID -- SIGTERM to the
group, then SIGKILL after a short grace.  Nothing is ever signalled by name.

One helper per job, for the lab and the tests alike:

* :func:`stop_process` stops a process a test started (``Popen``, own session) and
  reaps it; :func:`stop_pids` ends processes someone else reaps (sshd's sessions);
  :func:`stop_all` stops several things and raises the first error afterwards;
* :func:`running`, :func:`children`, :func:`descendants`, :func:`live_group_members`
  and :func:`start_time` read ``/proc`` (a zombie counts as gone);
* :func:`log_tail` / :func:`log_tails` give the end of log files for failure reports;
* :class:`StopOnExit` is the ``with`` support of everything that has a ``stop()``.
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
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = [
    "LabError",
    "ManagedProcess",
    "StopOnExit",
    "children",
    "descendants",
    "free_port",
    "live_group_members",
    "log_tail",
    "log_tails",
    "running",
    "start_time",
    "stop_all",
    "stop_pids",
    "stop_process",
    "tcp_open",
    "wait_until",
]

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


# ----------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state is [0], ppid [1],
    pgrp [2], start time [19]), or None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    """True if ``pid`` exists and is neither a zombie nor dead (``Z``/``X``)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks, to tell a reused PID apart (None: gone)."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _scan() -> Iterable[tuple[int, list[str]]]:
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        pid = int(stat_path.parent.name)
        fields = _stat_fields(pid)
        if fields is not None:
            yield pid, fields


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (via /proc, the children of each of its threads: a child
    forked by another thread than the main one, as chromedriver's browser, is listed only
    there; falls back to a scan of /proc/*/stat on a kernel without CONFIG_PROC_CHILDREN)."""
    try:
        found: list[int] = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
        return found
    except OSError:
        pass
    return [child for child, fields in _scan() if int(fields[1]) == pid]


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, parents before children."""
    result: list[int] = []
    pending = children(pid)
    while pending:
        child = pending.pop(0)
        result.append(child)
        pending.extend(children(child))
    return result


def live_group_members(pgid: int) -> list[int]:
    """PIDs of the processes in group ``pgid`` that are not zombies."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []  # nobody in the group, not even a zombie
    except PermissionError:  # pragma: no cover - someone else's group: look anyway
        pass
    return [
        pid for pid, fields in _scan() if int(fields[2]) == pgid and fields[0] not in ("Z", "X")
    ]


# ---------------------------------------------------------------------------- stopping


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # pragma: no cover - group vanished and pid reused
        pass


def _exited(popen: subprocess.Popen[Any]) -> bool:
    """True once the leader has exited, *without* reaping it: while it is an unreaped
    zombie its PID (= the group id) cannot be reused, so the group is safe to signal."""
    if popen.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped elsewhere
        popen.poll()
        return True


def _wait(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    pause = 0.001
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    return True


def stop_process(
    popen: subprocess.Popen[Any] | None,
    grace: float = 3.0,
    *,
    whole_group: bool = True,
    term: bool = True,
) -> int | None:
    """Stop a process the test started in its own session (``start_new_session=True``), by
    PID, and reap it; return its exit status (None for ``None``).  Idempotent.

    SIGTERM to its process group (``whole_group=False``: to the leader alone, which then
    shuts down its own children, e.g. ``certd run``), up to ``grace`` seconds for the
    leader to exit; then SIGKILL to the group -- also after a clean exit, so helpers left
    behind (nginx workers, a command still running) die too -- while the leader, not yet
    reaped, still holds the group id; wait until no live member is left; reap the leader.
    ``term=False``: SIGKILL straight away.  Raises :class:`LabError` if something in the
    group survives SIGKILL for 5 seconds.
    """
    if popen is None:
        return None
    pgid = popen.pid
    if term and not _exited(popen):
        if whole_group:
            _signal_group(pgid, signal.SIGTERM)
        else:
            # os.kill, not popen.send_signal: that polls, and a reaped leader frees the group id
            os.kill(pgid, signal.SIGTERM)  # unreaped: the PID is still this child's
        _wait(lambda: _exited(popen), grace)
    _signal_group(pgid, signal.SIGKILL)
    patience = 5.0
    if not _wait(lambda: _exited(popen), patience):  # pragma: no cover - unkillable
        raise LabError(f"pid {pgid} did not die after SIGKILL")
    if not _wait(lambda: not live_group_members(pgid), patience):  # pragma: no cover
        raise LabError(f"process group {pgid} still has {live_group_members(pgid)} after SIGKILL")
    return popen.wait()


def stop_pids(pids: Sequence[int], grace: float = 2.0) -> None:
    """End the processes ``pids`` that are *not* this process's children (parents listed
    before children), leaves first.

    Each one gets SIGTERM, then SIGKILL if it still runs after ``grace`` seconds, and
    is waited for until its parent (still alive, since it is ended later) has reaped
    it: a process orphaned to this machine's PID 1 stays a zombie.  A PID is only
    signalled while it keeps the start time seen first, so a PID reused by an
    unrelated process in between is left alone.
    """
    identity = {pid: start_time(pid) for pid in pids}

    def same(pid: int) -> bool:
        return identity[pid] is not None and start_time(pid) == identity[pid]

    for pid in reversed(list(pids)):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not (same(pid) and running(pid)):
                break
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            if _wait(lambda pid=pid: not (same(pid) and running(pid)), grace):
                break
        _wait(lambda pid=pid: not same(pid), 0.5)  # reaped by its parent


S = TypeVar("S")


def stop_all(items: Iterable[S], stop: Callable[[S], object] = lambda item: item.stop()) -> None:
    """``stop(item)`` for every item (by default ``item.stop()``), in the order given, even
    when one fails; then raise the first error, if any."""
    errors: list[Exception] = []
    for item in items:
        try:
            stop(item)
        except Exception as exc:  # keep stopping the others
            errors.append(exc)
    if errors:
        raise errors[0]


class StopOnExit:
    """``with thing:`` gives ``thing`` and calls ``thing.stop()`` on the way out, whatever
    happened inside."""

    def stop(self) -> None:  # pragma: no cover - every user defines its own
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ------------------------------------------------------------------------------- logs


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of the file at ``path`` ("" if it does not exist)."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def log_tails(paths: Iterable[Path], lines: int = 30) -> str:
    """``--- <path> ---`` and its last ``lines`` lines for every file in ``paths`` that
    exists, for a failing test's report."""
    return "\n".join(
        f"--- {path} ---\n" + log_tail(path, lines) for path in paths if Path(path).exists()
    )


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
        return log_tail(self.log_path, lines)

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
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, reap (see
        :func:`stop_process`). Idempotent."""
        try:
            stop_process(self.popen, grace)
        except LabError as exc:  # pragma: no cover - unkillable process
            raise self.fail(str(exc)) from None

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} alive={self.alive()}>"
