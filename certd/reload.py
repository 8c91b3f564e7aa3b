"""SIGHUP: the running daemon re-reads its config (and its API tokens file) and applies it
without a restart. The listeners stay up; orders and deploy batches in flight finish with
what they started with.

All or nothing: the new config, the tokens file and the monitor's trust store are read
first; if any is invalid, or the new config changes what only a restart can change (where
the store is, the CA account, the listeners), nothing is applied, the old config stays in
force and the reason is logged and recorded (`config.reload_failed`, severity error, so it
reaches the notifiers). Otherwise certificates, frontends, nodes, deployers, renewal and
monitor settings, notifiers and intervals apply at once, a sweep runs to issue what is new,
and `config.reloaded` records what changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from certd import logs
from certd.api.tokens import Tokens
from certd.config import Config
from certd.errors import ConfigError
from certd.model import Event, Severity
from certd.monitor.alerts import AlertBook
from certd.monitor.events import EventForwarder
from certd.monitor.runner import Monitor
from certd.scheduler import Scheduler
from certd.service import Certd

log = logging.getLogger(__name__)

# sections a running daemon cannot take over: the store, the CA account, the listeners, the
# challenge rules (their solvers and TSIG secrets are built at start)
RESTART_ONLY = ("state_dir", "storage", "storage_password_file", "storage_key_file", "acme",
                "challenge", "challenges", "api")
DRAIN_SECONDS = 10  # a replaced notifier set's queued notices get this long to go out


@dataclass
class Running:
    """What `run_daemon` built, which a reload reconfigures in place."""

    certd: Certd
    monitor: Monitor
    scheduler: Scheduler
    forwarder: EventForwarder
    tokens: Tokens
    load_config: Callable[[], Config]  # blocking: run in a thread
    load_tokens: Callable[[Config], Tokens]  # blocking
    load_trust: Callable[[Config], Any]  # blocking
    build_alerts: Callable[[Config], AlertBook]
    on_result: Callable[[bool, str], Awaitable[None] | None] | None = None  # e.g. sd STATUS=


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The settings `new` changes that only a restart can apply, as dotted names."""
    out: list[str] = []
    for field in RESTART_ONLY:
        a, b = getattr(old, field), getattr(new, field)
        if a == b:
            continue
        if isinstance(a, BaseModel):
            out += [f"{field}.{k}" for k in type(a).model_fields if getattr(a, k) != getattr(b, k)]
        else:
            out.append(field)
    return out


def _summary(old: Config, new: Config) -> str:
    before = {c.name: c for c in old.certificates}
    after = {c.name: c for c in new.certificates}
    parts = []
    for what, names in (("added", [n for n in after if n not in before]),
                        ("removed", [n for n in before if n not in after]),
                        ("changed", [n for n in after if n in before and after[n] != before[n]])):
        if names:
            shown = ", ".join(sorted(names)[:10]) + (" ..." if len(names) > 10 else "")
            parts.append(f"{len(names)} certificate(s) {what} ({shown})")
    groups = [g for g in set(old.frontends) | set(new.frontends)
              if old.frontends.get(g) != new.frontends.get(g)]
    if groups:
        parts.append(f"frontend(s) {', '.join(sorted(groups))} changed")
    others = [f for f in type(new).model_fields
              if f not in ("certificates", "frontends") and getattr(old, f) != getattr(new, f)]
    if others:
        parts.append(f"{', '.join(others)} changed")
    return "; ".join(parts) or "no change"


async def reload(running: Running) -> bool:
    """Re-read and apply; True if the new config is now in force."""
    certd = running.certd
    old = certd.config
    try:
        new = await asyncio.to_thread(running.load_config)
        problems = restart_only_changes(old, new)
        if problems:
            raise ConfigError("reload", [f"{p}: changing it needs a restart"
                                         for p in problems])
        tokens = await asyncio.to_thread(running.load_tokens, new)
        trust = await asyncio.to_thread(running.load_trust, new)
    except ConfigError as exc:
        shown = "; ".join(exc.problems[:20])
        message = f"config reload refused, the running config is kept: {exc.source}: {shown}"
        log.error("%s", message, extra={"event": "config.reload_failed", "error": shown})
        await _record(running, False, Event("config.reload_failed", message, Severity.ERROR))
        return False

    summary = _summary(old, new)
    await certd.reconfigure(new)
    running.tokens.replace(tokens)
    running.monitor.reconfigure(new.monitor, trust)
    if new.alerts != old.alerts:
        retired = running.monitor.alerts
        fresh = running.build_alerts(new)
        running.monitor.alerts = running.forwarder.alerts = fresh
        task = asyncio.get_running_loop().create_task(_retire(retired))
        _background.add(task)
        task.add_done_callback(_background.discard)
    running.scheduler.reconfigure(new.renewal, running.monitor if new.monitor.enabled else None)
    logs.apply_levels(new.log_level, new.log_levels)  # the format stays: a handler swap
    message = f"config reloaded: {summary}"
    log.info("%s", message, extra={"event": "config.reloaded"})
    await _record(running, True, Event("config.reloaded", message, Severity.INFO))
    return True


_background: set[asyncio.Task] = set()


async def _retire(alerts: AlertBook) -> None:
    await alerts.drain(DRAIN_SECONDS)
    await alerts.close()


async def _record(running: Running, ok: bool, event: Event) -> None:
    try:
        await running.certd.store.add_event(event)
    except Exception:  # noqa: BLE001 - the log line above already says it
        log.exception("reload: cannot record the outcome")
    if running.on_result is not None:
        result = running.on_result(ok, event.message)
        if result is not None:
            await result
