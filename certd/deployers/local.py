"""Local side of the file deployer: versioned directories switched by one symlink rename, and
commands run without a shell.

Layout under the configured path P (say /srv/fe1/certs/portal):

    P -> .portal.d/<serial>            a relative symlink, replaced atomically
    .portal.d/<serial>/*.pem           the five files, each fsynced
    .portal.d/<previous serial>/*.pem  kept for rollback; older versions are pruned

A crash at any point leaves P pointing at a complete set: the new directory is filled under a
temporary name, fsynced, renamed, and only then does the symlink move.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from certd import failpoints
from certd.deployers.base import PemFile

OUTPUT_LIMIT = 8192


def _versions_dir(path: Path) -> Path:
    return path.parent / f".{path.name}.d"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
        os.write(fd, data.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def current_version(path: Path) -> str | None:
    """The version directory name P points at, or None (no symlink yet)."""
    if not path.is_symlink():
        return None
    return Path(os.readlink(path)).name


def place(path: Path, version: str, files: list[PemFile]) -> str | None:
    """Write `files` as version `version` of P and point P at it. Returns the version P
    pointed at before (for rollback), or None. Blocking: run it in a thread."""
    versions = _versions_dir(path)
    versions.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(versions, 0o711)  # nodes' servers traverse it; files keep their own modes
    for stale in versions.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = versions / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir(mode=0o711)
    for i, f in enumerate(files):
        _write(tmp / f.name, f.content, f.mode)
        if i == 1:
            failpoints.hit("deploy:writing")
    _fsync_dir(tmp)
    final = versions / version
    previous = current_version(path)
    if previous == version and final.is_dir():
        # The live set again (a redeploy of the same certificate): swap file by file, each
        # rename atomic, so P never points at a missing directory; and prune nothing, so
        # the set before it stays for rollback.
        for f in files:
            os.replace(tmp / f.name, final / f.name)
        _fsync_dir(final)
        shutil.rmtree(tmp, ignore_errors=True)
        return previous
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(versions)
    if path.exists() and not path.is_symlink():
        previous = _adopt_legacy(path, versions)
    switch(path, version)
    _prune(versions, keep={version, previous})
    return previous


def switch(path: Path, version: str) -> None:
    """Point P at an existing version, atomically."""
    target = Path(_versions_dir(path).name) / version
    link = path.parent / f".{path.name}.link-{os.getpid()}"
    if link.is_symlink():
        link.unlink()
    os.symlink(target, link)
    os.replace(link, path)
    _fsync_dir(path.parent)


def remove(path: Path) -> None:
    """Remove P and every version (the REST issue's DELETE)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    shutil.rmtree(_versions_dir(path), ignore_errors=True)


def _adopt_legacy(path: Path, versions: Path) -> str:
    """A plain directory at P (files placed by hand or by another tool) becomes the version
    'legacy', so the first deploy can still roll back to it."""
    shutil.rmtree(versions / "legacy", ignore_errors=True)
    os.rename(path, versions / "legacy")
    return "legacy"


def _prune(versions: Path, keep: set[str | None]) -> None:
    """Keep the current and the previous version only."""
    for entry in versions.iterdir():
        if not entry.name.startswith(".") and entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and anything it started
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class CommandResult:
    command: str
    returncode: int | None  # None: timed out or could not start
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        last = self.output.strip().splitlines()[-1:] or [""]
        if self.returncode is None:
            return f"{self.command}: {last[0]}"
        return f"{self.command}: exit {self.returncode}" + (f": {last[0]}" if last[0] else "")


async def run_command(command: str, timeout: float) -> CommandResult:
    """Run without a shell (the words are split first, so placeholders cannot inject)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return CommandResult(command, None, f"cannot parse command: {exc}")
    if not argv:
        return CommandResult(command, None, "empty command")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    except OSError as exc:
        return CommandResult(command, None, f"cannot start: {exc}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        _kill_group(proc)
        await proc.wait()
        return CommandResult(command, None, f"timed out after {timeout:g}s")
    except asyncio.CancelledError:
        _kill_group(proc)
        raise
    text = out[:OUTPUT_LIMIT].decode("utf-8", "replace")
    return CommandResult(command, proc.returncode, text)
