"""`certd reload`: make the running daemon re-read its config (SIGHUP, what `systemctl reload
certd` sends), then wait for its verdict in the event log and print it."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from certd import pidfile
from certd.config import Config
from certd.errors import CertdError
from certd.store import make_store

OUTCOMES = ("config.reloaded", "config.reload_failed")
WAIT_SECONDS = 30.0
POLL_SECONDS = 0.2


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("reload", help="make the running daemon re-read its config (SIGHUP) "
                       "and print whether it took it")
    c.set_defaults(func=cmd_reload)


def cmd_reload(cfg: Config, args: argparse.Namespace) -> int:
    pid = pidfile.running_daemon(cfg.state_dir)
    if pid is None:
        raise CertdError(f"no running daemon found for {cfg.state_dir} (no live pid in "
                         f"{pidfile.path_for(cfg.state_dir)}); under systemd: "
                         "systemctl reload certd")
    ok, message = asyncio.run(_signal_and_wait(cfg, pid))
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


async def _signal_and_wait(cfg: Config, pid: int) -> tuple[bool, str]:
    store = make_store(cfg)
    await store.open()
    try:
        after = await store.last_event_id()
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            raise CertdError(f"the daemon (pid {pid}) is gone") from None
        except PermissionError:
            raise CertdError(f"not allowed to signal the daemon (pid {pid}): run as its user "
                             "or root") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while loop.time() < deadline:
            for event in await store.events_since(after):
                after = max(after, event.id or after)
                if event.kind in OUTCOMES:
                    return event.kind == "config.reloaded", event.message
            await asyncio.sleep(POLL_SECONDS)
        raise CertdError(f"sent SIGHUP to pid {pid}, but no reload outcome was recorded "
                         f"within {WAIT_SECONDS:g}s: see the daemon's log")
    finally:
        await store.close()
