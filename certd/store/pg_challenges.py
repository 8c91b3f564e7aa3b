"""Challenge answers across instances (issue 13, item 2): each PostgreSQL store keeps the
key authorizations in memory, fresh through LISTEN/NOTIFY, so the challenge responder answers
a token another instance published without a database query per request.

- A trigger on `challenges` (pg_schema.py, migration 2) notifies CHANNEL at each commit that
  puts or deletes a row, with the token, and for a put its key authorization and expiry (key
  authorizations are public: they are what the responder serves).
- One connection of its own LISTENs. When it is established, the cache is filled with every
  unexpired challenge (after LISTEN, so nothing committed in between is missed); then each
  notification updates it.
- A lookup is answered from the cache while the listener is live. A token the cache does not
  have is looked up in the database (and remembered). This instance's own writes invalidate
  their token at once (after the commit, for a unit of work), so it reads what it wrote.
- The listener lost (a server restart, a terminated backend, a failed health check): lookups
  query the database again, and answer from what the cache holds only when that query fails
  — the responder keeps answering through a database outage. The listener reconnects in the
  background (RECONNECT_MIN doubling up to RECONNECT_MAX) and refills the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "certd_challenges"
RECONNECT_MIN, RECONNECT_MAX = 0.2, 10.0  # seconds between attempts to listen again
WATCH_INTERVAL = 10.0  # a silent connection (a partition) is found by a query this often
WATCH_TIMEOUT = 5.0
MAX_ENTRIES = 100_000  # past this (after dropping expired ones) the cache starts over


class ChallengeCache:
    """token -> (key authorization, expiry) for one store instance."""

    def __init__(self, name: str, connect: Callable[[], Awaitable[asyncpg.Connection]]):
        self.name = name
        self._connect = connect
        self._entries: dict[str, tuple[str, datetime]] = {}
        self.live = False  # listening: the cache follows every commit
        self.changes = 0  # notifications and invalidations applied: a lookup's result is
        # remembered only if none came while it ran (it could be older than they are)
        self._refilling: set[str] | None = None  # tokens changed while a refill runs
        self._task: asyncio.Task | None = None
        self._connection: asyncpg.Connection | None = None
        self._established = asyncio.Event()
        self._lost = asyncio.Event()

    # ------------------------------------------------------------------------- lookups

    def answer(self, token: str, now: datetime, *, live_only: bool = True
               ) -> tuple[bool, str | None]:
        """(whether the cache knows `token`, its key authorization if unexpired). Only
        while live, unless `live_only` is False (the fallback during an outage)."""
        if live_only and not self.live:
            return False, None
        entry = self._entries.get(token)
        if entry is None:
            return False, None
        key_authorization, expires_at = entry
        return True, key_authorization if expires_at > now else None

    def remember(self, token: str, key_authorization: str, expires_at: datetime,
                 seen: int) -> None:
        """A lookup's result, unless a change came while it ran (`seen`: `changes` before)."""
        if self.live and self.changes == seen:
            self._put(token, key_authorization, expires_at)

    def invalidate(self, token: str) -> None:
        """This instance wrote `token`: forget it, so the next lookup reads the database."""
        self.changes += 1
        self._entries.pop(token, None)
        if self._refilling is not None:
            self._refilling.add(token)

    def _put(self, token: str, key_authorization: str, expires_at: datetime) -> None:
        if len(self._entries) >= MAX_ENTRIES and token not in self._entries:
            now = datetime.now(timezone.utc)
            self._entries = {t: e for t, e in self._entries.items() if e[1] > now}
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
        self._entries[token] = (key_authorization, expires_at)

    def _on_notify(self, connection: object, pid: int, channel: str, payload: str) -> None:
        try:
            note = json.loads(payload)
            token = note["token"]
        except (ValueError, KeyError, TypeError):
            log.warning("postgresql[%s]: challenge cache: unreadable notification", self.name)
            return
        self.changes += 1
        if self._refilling is not None:
            self._refilling.add(token)
        if "key_authorization" in note:
            expires_at = datetime.fromtimestamp(float(note["expires_at"]), timezone.utc)
            self._put(token, note["key_authorization"], expires_at)
        else:
            self._entries.pop(token, None)

    # ------------------------------------------------------------------------ listener

    async def start(self) -> None:
        """Listen and fill the cache (errors raise: the store's open fails), then keep
        listening in the background."""
        await self._establish()
        self._task = asyncio.create_task(self._keep_listening(), name=f"{CHANNEL}:{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._drop_connection()

    async def wait_live(self) -> None:
        """Until the listener is (again) established."""
        await self._established.wait()

    async def _establish(self) -> None:
        conn = await self._connect()
        try:
            conn.add_termination_listener(self._on_lost)
            await conn.add_listener(CHANNEL, self._on_notify)
            # LISTEN first, then read what is there: a commit in between is in both, and
            # the notification (newer) wins over the row read before it
            self._refilling = set()
            rows = await conn.fetch("SELECT token, key_authorization, expires_at FROM "
                                    "challenges WHERE expires_at > now()")
            changed, self._refilling = self._refilling, None
            fresh = {r["token"]: (r["key_authorization"], r["expires_at"]) for r in rows
                     if r["token"] not in changed}
            for token in changed & self._entries.keys():
                fresh[token] = self._entries[token]
            self._entries = fresh
            self.changes += 1  # a lookup that began before this refill is older than it
        except BaseException:
            self._refilling = None
            conn.terminate()
            raise
        self._connection = conn
        self._lost.clear()
        self.live = True
        self._established.set()

    def _on_lost(self, connection: object) -> None:
        if connection is self._connection:
            self.live = False
            self._established.clear()
            self._lost.set()

    def _drop_connection(self) -> None:
        self.live = False
        self._established.clear()
        self._lost.set()
        conn, self._connection = self._connection, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _keep_listening(self) -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                if self.live and self._connection is not None:
                    try:
                        await asyncio.wait_for(self._lost.wait(), WATCH_INTERVAL)
                    except TimeoutError:  # quiet for a while: is the connection still there?
                        await self._connection.execute("SELECT 1", timeout=WATCH_TIMEOUT)
                        continue
                self._drop_connection()
                await self._establish()
                log.info("postgresql[%s]: challenge cache: listening again", self.name)
                delay = RECONNECT_MIN
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # down: lookups go to the database; try again later
                if delay == RECONNECT_MIN:
                    log.warning("postgresql[%s]: challenge cache: not listening (%s); "
                                "lookups query the database", self.name, exc)
                self._drop_connection()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
