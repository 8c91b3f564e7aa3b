"""Reload-free deploys for HAProxy through its runtime API (the `stats socket ... level admin`).

The files are still written first (the versioned layout: what the next restart loads); then
each certificate is handed to the running process under the path HAProxy knows it by,
`<path>/combined.pem` (the stable symlink, never a version directory), so that the
configuration (`crt-list` entries or `crt` lines) and the runtime name the same file:

    known:  set ssl cert F <<  + PEM + empty line;  commit ssl cert F
    new:    new ssl cert F;  set ...;  commit ...;  add ssl crt-list LIST F
            (and F appended to LIST on disk, so a restart serves it too)

The socket is on this machine (file deployer) or on the node, reached through the SSH
deployer's connection (a `direct-streamlocal` channel, `ssh -L`'s unix-socket form).

HAProxy 2.6 keeps one transaction open at a time and `set` accepts what `commit` later
refuses (a key that does not match): a refused commit is aborted, a store certd created for
it is deleted again. Answers are never trusted: success is recognised by the exact texts
HAProxy 2.6 prints, anything else is a failure reported cleaned (printable ASCII, bounded).
"""

from __future__ import annotations

import asyncio
import posixpath
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from certd.config import render
from certd.deployers.layout import NodeFS
from certd.text import one_line

ANSWER_LIMIT = 256 * 1024  # bytes read of one answer (`show ssl cert` with thousands of certs)
READ_LIMIT = 4 * 1024 * 1024  # a combined.pem or a crt-list read back from the node
SHOWN_LIMIT = 200  # characters of an answer quoted in a message
COMBINED = "combined.pem"

Reader = Callable[[str], Awaitable[bytes | None]]  # a file on the node, None if absent


class ChannelError(OSError):
    """The runtime API could not be reached or did not answer in time or in bounds."""


class RuntimeChannel(Protocol):
    """One command to HAProxy's runtime API, one answer (its non-interactive mode: HAProxy
    answers, then closes the connection).

    - `send` writes `command` (newline-terminated, payload included) and returns the answer,
      decoded as UTF-8 with replacement, read until HAProxy closes the connection. Raises
      ChannelError if the API cannot be reached, the answer takes longer than `timeout`
      seconds in all, or exceeds the implementation's size cap.
    - Not idempotent (the commands are not); safe for concurrent use (each call has its own
      connection) but HAProxy allows one certificate transaction at a time: callers serialise.
    - Nothing to close: no connection outlives a call.
    """

    async def send(self, command: str, timeout: float) -> str: ...


Opener = Callable[[str], Awaitable[tuple[Any, Any]]]  # socket path -> (reader, writer)


class UnixSocketChannel:
    """The runtime API on a unix socket: this machine's (`asyncio.open_unix_connection`, the
    default) or a node's, reached through the deployer's SSH connection (an SSH
    `direct-streamlocal` channel: sshd connects to the socket as the login user, nothing to
    install on the node). `where` names it in messages."""

    def __init__(self, path: str, limit: int = ANSWER_LIMIT, *, open: Opener | None = None,
                 where: str | None = None):
        self.path = path
        self.limit = limit
        self.open = open or asyncio.open_unix_connection
        self.where = where or path

    async def send(self, command: str, timeout: float) -> str:
        try:
            return await asyncio.wait_for(self._exchange(command), timeout)
        except TimeoutError:
            raise ChannelError(f"{self.where}: no answer within {timeout:g}s") from None
        except ChannelError:
            raise
        except OSError as exc:
            raise ChannelError(f"{self.where}: {exc.strerror or exc}") from None

    async def _exchange(self, command: str) -> str:
        reader, writer = await self.open(self.path)
        try:
            writer.write(command.encode("utf-8"))
            await writer.drain()
            answer = bytearray()
            while chunk := await reader.read(65536):
                answer += chunk
                if len(answer) > self.limit:
                    raise ChannelError(f"{self.where}: answer longer than {self.limit} bytes")
            return answer.decode("utf-8", "replace")
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1)
            except (OSError, TimeoutError):
                pass


def clean(answer: str, limit: int = SHOWN_LIMIT) -> str:
    """HAProxy's answer for a message: printable ASCII only, lines joined, bounded."""
    return one_line(answer, limit, sep=" / ", replace="?", ascii_only=True) or "(empty answer)"


def _payload(pem: str) -> str:
    """The PEM for `set ssl cert F <<`: no empty line inside (one ends the payload), no
    control characters; the empty line that ends it is added by the caller."""
    lines = [line.strip() for line in pem.splitlines()]
    if any(not line.isascii() or not line.isprintable() for line in lines):
        raise ValueError("the PEM holds characters a runtime API payload cannot carry")
    return "\n".join(line for line in lines if line)


@dataclass(frozen=True)
class Loaded:
    """What `show ssl cert` says: the certificate files the process holds, and the file an
    open transaction is about (None if none)."""

    files: frozenset[str]
    transaction: str | None


def parse_show_ssl_cert(answer: str) -> Loaded:
    files, transaction, section = set(), None, ""
    for line in answer.splitlines():
        line = line.strip()
        if line.startswith("#"):
            section = line
        elif line and section == "# transaction":
            transaction = line.lstrip("*")
        elif line and section == "# filename":
            files.add(line)
    return Loaded(frozenset(files), transaction)


def parse_show_crt_list(answer: str) -> set[str]:
    """The certificate files of one crt-list (each entry's first word; options follow)."""
    return {line.split()[0] for line in answer.splitlines()
            if line.strip() and not line.lstrip().startswith("#")}


class RuntimeRefused(Exception):
    """HAProxy refused a command for one certificate: the message quotes its answer."""


class HAProxyRuntime:
    """One node's running HAProxy: certificates pushed, one at a time, through a channel."""

    def __init__(self, channel: RuntimeChannel, *, crt_list: str | None, timeout: float,
                 fs: NodeFS, read: Reader, lock: asyncio.Lock | None = None):
        self.channel = channel
        self.lock = lock or asyncio.Lock()  # one transaction at a time: share it per socket
        self.crt_list = crt_list
        self.timeout = timeout
        self.fs = fs  # where the crt-list file is rewritten
        self.read = read

    @staticmethod
    def file_of(path: str) -> str:
        """The name HAProxy knows the certificate by: combined.pem under the stable link."""
        return posixpath.join(path.rstrip("/"), COMBINED)

    async def _send(self, command: str) -> str:
        return await self.channel.send(command, self.timeout)

    async def loaded(self) -> Loaded:
        return parse_show_ssl_cert(await self._send("show ssl cert\n"))

    async def listed(self) -> set[str]:
        if not self.crt_list:
            return set()
        return parse_show_crt_list(await self._send(f"show ssl crt-list {self.crt_list}\n"))

    async def push(self, entries: list[tuple[str, str]]) -> dict[str, str]:
        async with self.lock:
            return await self._push(entries)

    async def _push(self, entries: list[tuple[str, str]]) -> dict[str, str]:
        """Hand each (file, PEM) to the process, in order. Returns {file: why} for those it
        refused or that could not be pushed (the process keeps what it had for them); the
        others are served from now on, and listed in the crt-list file on disk.
        Raises ChannelError only if the API cannot be asked what it holds."""
        state = await self.loaded()
        listed = await self.listed()
        failed: dict[str, str] = {}
        names = {f for f, _ in entries}
        if state.transaction in names:  # certd's own, left by an interrupted push
            await self._send(f"abort ssl cert {state.transaction}\n")
        elif state.transaction:
            why = (f"haproxy has a transaction open on {clean(state.transaction)} "
                   "(not certd's): not touching it")
            return {f: why for f in names}
        added: list[str] = []
        for file, pem in entries:
            try:
                if await self._one(file, pem, file in state.files, file in listed):
                    added.append(file)
            except RuntimeRefused as exc:
                failed[file] = str(exc)
            except ChannelError as exc:
                failed[file] = f"runtime api: {exc}"
                await self._quietly(f"abort ssl cert {file}\n")
        try:
            await self.list_on_disk([f for f, _ in entries if f not in failed])
        except OSError as exc:
            for file in added:
                failed[file] = f"served, but {self.crt_list} not updated for restarts: {exc}"
        return failed

    async def _one(self, file: str, pem: str, known: bool, listed: bool) -> bool:
        """set + commit (new first, add to the crt-list after, if the process does not know
        the file yet). True if the file was added to the crt-list."""
        try:
            payload = _payload(pem)
        except ValueError as exc:
            raise RuntimeRefused(str(exc)) from None
        created = False
        if not known:
            if not self.crt_list:
                raise RuntimeRefused(f"haproxy does not load {file} and no runtime_crt_list "
                                     "is configured to add it to")
            answer = await self._send(f"new ssl cert {file}\n")
            if not answer.startswith(f"New empty certificate store '{file}'!"):
                raise RuntimeRefused(f"new ssl cert {file}: {clean(answer)}")
            created = True
        answer = await self._send(f"set ssl cert {file} <<\n{payload}\n\n")
        if answer.splitlines()[:1] not in ([f"Transaction created for certificate {file}!"],
                                           [f"Transaction updated for certificate {file}!"]):
            if created:
                await self._quietly(f"del ssl cert {file}\n")
            raise RuntimeRefused(f"set ssl cert {file}: {clean(answer)}")
        answer = await self._send(f"commit ssl cert {file}\n")
        if "Success!" not in answer.splitlines() or "Can't" in answer:
            await self._quietly(f"abort ssl cert {file}\n")
            if created:
                await self._quietly(f"del ssl cert {file}\n")
            raise RuntimeRefused(f"commit ssl cert {file}: {clean(answer)}")
        if self.crt_list and not listed:
            answer = await self._send(f"add ssl crt-list {self.crt_list} {file}\n")
            if "Success!" not in answer.splitlines():
                if created:
                    await self._quietly(f"del ssl cert {file}\n")
                raise RuntimeRefused(f"add ssl crt-list {self.crt_list} {file}: "
                                     f"{clean(answer)}")
            return True
        return False

    async def _quietly(self, command: str) -> None:
        """A cleanup command: its answer and failure are not the news."""
        try:
            await self._send(command)
        except ChannelError:
            pass

    async def restore(self, paths: list[str]) -> dict[str, str]:
        """After the files were put back: hand the process what each `<path>/combined.pem`
        now holds (read from the node). Returns {file: why} for those not restored."""
        entries, failed = [], {}
        for path in paths:
            file = self.file_of(path)
            data = await self.read(file)
            if data is None:
                failed[file] = f"{file} is missing"
            else:
                entries.append((file, data.decode("ascii", "replace")))
        if entries:
            try:
                failed.update(await self.push(entries))
            except ChannelError as exc:
                failed.update({f: f"runtime api: {exc}" for f, _ in entries})
        return failed

    async def list_on_disk(self, files: list[str]) -> None:
        """Make the crt-list file name every file in `files` (appended, once), so a restart
        loads what the process now serves. Rewritten through a temp name and a rename."""
        if not self.crt_list or not files:
            return
        data = await self.read(self.crt_list)
        text = data.decode("utf-8", "replace") if data is not None else ""
        have = parse_show_crt_list(text)
        missing = [f for f in dict.fromkeys(files) if f not in have]
        if not missing:
            return
        if text and not text.endswith("\n"):
            text += "\n"
        text += "".join(f"{f}\n" for f in missing)
        tmp = f"{self.crt_list}.tmp-{secrets.token_hex(4)}"
        await self.fs.write(tmp, text.encode("utf-8"), 0o644)
        await self.fs.rename(tmp, self.crt_list)
        await self.fs.sync_dir(posixpath.dirname(self.crt_list) or ".")

    async def forget(self, path: str) -> str | None:
        """After the files were removed: drop `<path>/combined.pem` from the crt-list file (a
        restart must not look for it) and from the process. Returns why not, or None."""
        file = self.file_of(path)
        async with self.lock:
            problems = []
            if self.crt_list:
                try:
                    await self._unlist_on_disk(file)
                except OSError as exc:
                    problems.append(f"{self.crt_list}: {exc}")
            try:
                loaded = await self.loaded()
                if file in loaded.files:
                    if self.crt_list and file in await self.listed():
                        answer = await self._send(f"del ssl crt-list {self.crt_list} {file}\n")
                        if "deleted" not in answer:
                            problems.append(f"del ssl crt-list: {clean(answer)}")
                    answer = await self._send(f"del ssl cert {file}\n")
                    if "deleted" not in answer:
                        problems.append(f"del ssl cert: {clean(answer)}")
            except ChannelError as exc:
                problems.append(f"runtime api: {exc}")
            return "; ".join(problems) or None

    async def _unlist_on_disk(self, file: str) -> None:
        data = await self.read(self.crt_list)
        if data is None:
            return
        lines = data.decode("utf-8", "replace").splitlines(keepends=True)
        kept = [line for line in lines if not (line.split() and line.split()[0] == file)]
        if len(kept) == len(lines):
            return
        tmp = f"{self.crt_list}.tmp-{secrets.token_hex(4)}"
        await self.fs.write(tmp, "".join(kept).encode("utf-8"), 0o644)
        await self.fs.rename(tmp, self.crt_list)
        await self.fs.sync_dir(posixpath.dirname(self.crt_list) or ".")


def node_runtime(options, target, *, channel: Callable[[str], RuntimeChannel], fs: NodeFS,
                 read: Reader, locks: dict[tuple[str, str], asyncio.Lock]
                 ) -> HAProxyRuntime | None:
    """The runtime API of `target`'s node, from a deployer's `runtime_*` options (templates
    rendered for the target), or None if the group does not use one. `channel` reaches the
    socket; `locks` is the deployer's, one per (node address, socket): one transaction at a
    time per HAProxy."""
    if not options.runtime_api:
        return None
    values = {"node": target.node, "address": target.address,
              "certificate": target.certificate}
    socket = render(options.runtime_api, **values)
    crt_list = render(options.runtime_crt_list, **values) if options.runtime_crt_list else None
    return HAProxyRuntime(channel(socket), crt_list=crt_list,
                          timeout=options.runtime_timeout.total_seconds(), fs=fs, read=read,
                          lock=locks.setdefault((target.address, socket), asyncio.Lock()))
