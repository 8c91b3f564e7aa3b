"""What certd forgets, and when (issue 10): events after `events.retention`, a superseded
certificate's private key `retention.previous_keys` after its successor was issued, a finished
order's copy of its key at once. Run daily by the scheduler (and at daemon start).

Why a superseded key is not needed: certd only ever deploys a name's current certificate
(rollout, deploy sync, `certd deploy`, `acme.reuse_key` all read `current_certificate`); a
rollback on a node goes back to the previous set the node itself keeps in its versioned
layout, never to the store. A node still recorded as holding an older serial (it was down)
keeps serving its own copy until deploy sync gives it the current one, so wiping the store's
copy takes nothing from it. The grace period only covers an operator's change of mind in
the first days. A removed alias's keys are destroyed at once by `Certd.remove_alias`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from certd.config import Config
from certd.store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionResult:
    events: int  # events deleted
    keys: int  # certificate and order rows whose key was wiped


async def apply(store: Store, config: Config, now: datetime) -> RetentionResult:
    events = await store.purge_events(now - config.events.retention)
    keys = await store.wipe_keys(superseded_before=now - config.retention.previous_keys)
    await store.purge_leases(now)  # expired: the forwarder's event claims, dead holders'
    if events or keys:
        log.info("retention: %d events older than %s deleted, %d private keys wiped",
                 events, config.events.retention, keys)
    return RetentionResult(events, keys)
