"""The daemon's one-line status for `systemctl status certd` (sd_notify STATUS=):
`12 certificates, 1 due, 0 failing; last sweep 10:02:03Z`.

Due and failing are counted after each renewal sweep, from one read of the store (the read
the sweep itself makes: Store.overview, in aiosqlite's thread) and the sweep's own decision
rules, so they say what `certd status` would; the certificate count (in memory) is refreshed
every POLL_SECONDS. A line is sent only when it changes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from certd.model import CertStatus, DeployStatus
from certd.sdnotify import Notifier
from certd.sweep import Sweeper

log = logging.getLogger(__name__)

POLL_SECONDS = 2


@dataclass(frozen=True)
class Counts:
    due: int  # certificates a sweep would order now (missing, due, expired, to resume)
    failing: int  # the last order failed (backing off), or a node refused the current one


async def count(sweeper: Sweeper) -> Counts:
    overview = await sweeper.store.overview()
    decision = await sweeper.decide(overview)
    names = {s.name for s in sweeper.certd.specs()}
    failed = {name for name, (_, state, _) in overview.items()
              if name in names and state is not None and state.status is CertStatus.FAILED}
    # issued but not yet deployed everywhere: failing if a node refused the current serial
    # (usually a handful: the others are deployed)
    undeployed = [name for name, (cert, state, _) in overview.items()
                  if name in names and cert is not None and state is not None
                  and state.status is CertStatus.ISSUED]
    if undeployed:
        details = await sweeper.store.details(undeployed)
        failed |= {name for name in undeployed
                   if any(d.serial == overview[name][0].serial
                          and d.status is DeployStatus.FAILED
                          for d in details[name].deployments)}
    return Counts(len(decision.due), len(failed))


def status_line(certificates: int, counts: Counts | None, last_sweep: datetime | None) -> str:
    total = f"{certificates} certificate{'' if certificates == 1 else 's'}"
    if counts is None:
        return f"{total}; first sweep running"
    when = last_sweep.strftime("%H:%M:%SZ") if last_sweep else "-"
    return f"{total}, {counts.due} due, {counts.failing} failing; last sweep {when}"


async def report(notify: Notifier, sweeper: Sweeper) -> None:
    """STATUS= lines until cancelled. Never raises: a failed count keeps the last one."""
    if not notify.enabled:
        return
    counted_for: object = None
    counts: Counts | None = None
    sent = ""
    while True:
        last = sweeper.last
        if last is not None and last is not counted_for:
            counted_for = last
            try:
                counts = await count(sweeper)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a status line never ends the daemon
                log.debug("status: cannot count: %s", exc)
        line = status_line(len(sweeper.certd.specs()), counts,
                           last.finished_at if last is not None else None)
        if line != sent:
            notify.status(line)
            sent = line
        await asyncio.sleep(POLL_SECONDS)
