"""`<state_dir>/certd.pid`: which process is the daemon on this state directory, so that
`certd reload` can signal it. Written by `certd run` once it starts, removed when it stops;
a file left by a killed daemon is recognised as stale (no such process, or a process that is
not `certd run`), never trusted to signal someone else."""

from __future__ import annotations

import os
from pathlib import Path

NAME = "certd.pid"


def path_for(state_dir: Path) -> Path:
    return state_dir / NAME


def write(state_dir: Path) -> Path:
    path = path_for(state_dir)
    tmp = path.with_name(f".{NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)
    return path


def remove(state_dir: Path) -> None:
    """Remove the file if it names this process (a newer daemon's file is left alone)."""
    path = path_for(state_dir)
    if read(path) == os.getpid():
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def read(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace")[:32].strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 2**22 else None


def running_daemon(state_dir: Path) -> int | None:
    """The PID of the `certd run` process the pid file names, or None (no file, no such
    process, or a process that is not a certd daemon: a stale file after a crash)."""
    pid = read(path_for(state_dir))
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read(4096).split(b"\0")
    except OSError:
        return None
    words = [os.path.basename(a.decode("utf-8", "replace")) for a in argv if a]
    # `/usr/local/bin/certd run` or `python -m certd -c FILE run`
    return pid if "certd" in words and "run" in words else None
