"""Can this process keep its state where the config says? `certd check-config` and `certd run`
ask before anything else, so an unwritable state_dir is one clear line, not a traceback on
the first write (or an OK from check-config and a daemon that cannot start)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def problems(state_dir: Path, database: Path | None) -> list[str]:
    """One line per problem ('state_dir /var/lib/certd: not writable: Read-only file
    system'); empty when certd can create, write and fsync files where it keeps its state
    and read and write an existing SQLite database (`database`; None for a store that is
    not a file, whose reachability is its own open's business)."""
    out = []
    directories = {state_dir: "state_dir"}
    if database is not None:
        directories.setdefault(database.parent, "database directory")
    for directory, what in directories.items():
        problem = _directory(directory)
        if problem:
            out.append(f"{what} {directory}: {problem}")
    if not out and database is not None:
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            problem = _file(path)
            if problem:
                out.append(f"database {path}: {problem}")
    return out


def _directory(directory: Path) -> str | None:
    if not directory.exists():
        # certd creates it: what matters is the nearest directory that exists
        parent = directory.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return f"cannot be created: {parent} is not a directory"
        if not os.access(parent, os.W_OK | os.X_OK):  # EROFS too, even for root
            return f"cannot be created: {parent} is not writable"
        return None
    if not directory.is_dir():
        return "not a directory"
    probe = directory / f".certd-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        return f"not writable: cannot create a file: {exc.strerror or exc}"
    try:
        try:
            os.write(fd, b"certd\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"not writable: cannot write a file: {exc.strerror or exc}"
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
    return None


def _file(path: Path) -> str | None:
    if not os.path.lexists(path):
        return None
    if not path.is_file():
        return "not a regular file"
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        return f"cannot be opened for reading and writing: {exc.strerror or exc}"
    return None
