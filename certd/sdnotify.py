"""systemd's notify protocol (sd_notify(3)), by hand: one datagram per message on the unix
socket named by $NOTIFY_SOCKET (a path, or `@name` for the abstract namespace), no systemd
library. With NOTIFY_SOCKET unset (not under systemd, or not Type=notify) every call is a
no-op. Nothing here ever raises into the daemon: a failed send is logged once, at debug.

The watchdog pings (WATCHDOG=1) come from a task on the daemon's own event loop, every
WATCHDOG_USEC / 2: a loop that is blocked or wedged stops them, and systemd restarts the
service after WatchdogSec=.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping

log = logging.getLogger(__name__)

ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
MAX_STATUS = 1024  # characters of one STATUS= line


class Notifier:
    """Sends sd_notify messages to `address` (None: a no-op). `watchdog_usec`: the watchdog
    interval systemd asked for (None: no watchdog)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None):
        self.address = address
        self.watchdog_usec = watchdog_usec if address else None
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *,
                     unset: bool = True) -> Notifier:
        """The notifier systemd set up for this process. `unset` removes the variables from
        os.environ, so that commands certd runs (a deployer's check or reload) do not take
        the daemon's socket or watchdog for theirs."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec = _watchdog_usec(env)
        if unset and environ is None:
            for name in ENV_VARS:
                os.environ.pop(name, None)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    # the messages -----------------------------------------------------------------------
    def ready(self, status: str | None = None) -> None:
        """Startup finished (or a reload did): READY=1."""
        self.send("READY=1", *([_status(status)] if status else []))

    def reloading(self) -> None:
        """A reload begins; end it with ready() (RELOADING=1 with MONOTONIC_USEC, which
        systemd 253+ uses to order it against the reload request)."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def status(self, text: str) -> None:
        """One line for `systemctl status` (STATUS=)."""
        self.send(_status(text))

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog_ping(self) -> None:
        self.send("WATCHDOG=1")

    def send(self, *fields: str) -> bool:
        """One datagram of `fields`, newline-separated; True if it was sent."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX,
                                             socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode(), sockaddr(self.address))
            return True
        except (OSError, ValueError) as exc:
            if not self._failed:
                self._failed = True
                log.debug("sd_notify: cannot send to %s: %s (further failures not logged)",
                          self.address, exc)
            return False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # the watchdog -----------------------------------------------------------------------
    async def watchdog(self) -> None:
        """WATCHDOG=1 every watchdog_usec / 2 until cancelled (returns at once without one)."""
        if not self.watchdog_usec:
            return
        interval = self.watchdog_usec / 2 / 1_000_000
        while True:
            self.watchdog_ping()
            await asyncio.sleep(interval)

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[Notifier]:
        """The watchdog task for the life of the block; the socket closed after it."""
        task = asyncio.create_task(self.watchdog(), name="sd_notify watchdog")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.close()


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC if it is meant for this process (WATCHDOG_PID absent or ours)."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def sockaddr(address: str) -> str | bytes:
    """`@name` is in the abstract namespace (a leading NUL byte on the wire)."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    if not address.startswith("/"):
        raise ValueError("not a unix socket path or @abstract name")  # e.g. vsock:, unsupported
    return address


def _status(text: str) -> str:
    """STATUS= takes one line: newlines would start other fields."""
    line = " ".join(text.split())
    return "STATUS=" + line[:MAX_STATUS]
