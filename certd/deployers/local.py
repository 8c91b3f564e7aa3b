"""This machine as a node: a NodeFS over the local filesystem (blocking calls in threads),
and commands run without a shell."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
from dataclasses import dataclass

from certd.deployers.layout import Refused
from certd.text import one_line

OUTPUT_LIMIT = 8192


class LocalFS:
    """NodeFS for the local filesystem; every call runs in a worker thread."""

    async def mkdir(self, path: str, mode: int) -> None:
        await asyncio.to_thread(_mkdir, path, mode)

    async def write(self, path: str, data: bytes, mode: int) -> None:
        await asyncio.to_thread(_write, path, data, mode)

    async def rename(self, src: str, dst: str) -> None:
        await asyncio.to_thread(os.replace, src, dst)

    async def symlink(self, target: str, link: str) -> None:
        await asyncio.to_thread(os.symlink, target, link)

    async def readlink(self, path: str) -> str | None:
        try:
            return await asyncio.to_thread(os.readlink, path)
        except (FileNotFoundError, OSError):
            return None

    async def kind(self, path: str) -> str | None:
        return await asyncio.to_thread(_kind, path)

    async def listdir(self, path: str) -> list[str]:
        try:
            return await asyncio.to_thread(os.listdir, path)
        except FileNotFoundError:
            return []

    async def rmtree(self, path: str) -> None:
        await asyncio.to_thread(_rmtree, path)

    async def sync_dir(self, path: str) -> None:
        await asyncio.to_thread(_fsync_dir, path)


def _mkdir(path: str, mode: int) -> None:
    parent = os.path.dirname(path.rstrip("/"))
    if parent:  # the parents are the operator's: followed as they are
        os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    try:  # the last component is certd's: opened without following, chmodded through the fd
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if os.path.islink(path):
            raise Refused(f"{path} is a symlink; refusing to write keys through it") from None
        raise exc
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _write(path: str, data: bytes, mode: int) -> None:
    try:  # a new name only: a planted symlink (even dangling) is never followed
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        if os.path.islink(path):
            raise Refused(f"{path} is a symlink; refusing to write keys through it") from None
        raise
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _kind(path: str) -> str | None:
    if os.path.islink(path):
        return "link"
    if os.path.isdir(path):
        return "dir"
    return "file" if os.path.exists(path) else None


def _rmtree(path: str) -> None:
    kind = _kind(path)
    if kind == "dir":  # shutil's fd-based walk: links inside are unlinked, never followed
        shutil.rmtree(path, onerror=_vanished_ok)
    elif kind is not None:
        os.unlink(path)  # a link: the link itself


def _vanished_ok(function, path, exc_info) -> None:
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        """The command and its outcome in one line; the output's last line (the node's words:
        nginx -t's complaint) cleaned and bounded."""
        last = one_line((self.output.strip().splitlines() or [""])[-1], 300)
        if self.returncode is None:
            return f"{self.command}: {last}"
        return f"{self.command}: exit {self.returncode}" + (f": {last}" if last else "")


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
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument
        return CommandResult(command, None, f"cannot start: {exc}")
    try:
        out = await asyncio.wait_for(_bounded_output(proc), timeout)
    except asyncio.TimeoutError:
        _kill_group(proc)
        await proc.wait()
        return CommandResult(command, None, f"timed out after {timeout:g}s")
    except asyncio.CancelledError:
        _kill_group(proc)
        raise
    return CommandResult(command, proc.returncode, out.decode("utf-8", "replace"))


async def _bounded_output(proc: asyncio.subprocess.Process) -> bytes:
    """The first OUTPUT_LIMIT bytes of the command's output; the rest is read and dropped
    (a node's command must not fill certd's memory), then the exit is awaited."""
    kept = bytearray()
    while chunk := await proc.stdout.read(65536):
        kept += chunk[:OUTPUT_LIMIT - len(kept)]
    await proc.wait()
    return bytes(kept)
