"""Rendered reads of the API, cached in each process against the store's change stamp.

A page of 100 domain objects costs ~1.5 ms of CPU to read and render; the same page asked
500 times a second is the same bytes until something it shows changes. Each API process
(the daemon, each `api.workers` worker; several `certd run` instances) keeps the encoded JSON
of the reads it served, and serves them again while both hold:

- the store's change stamp (Store.change_stamp) is the one it was rendered under. The stamp
  is bumped in the transaction of every write to what the views show (aliases, certificates,
  their state, ARI windows, deployments: triggers in the SQL stores), by any process, so a
  write anywhere is seen by every process's next read. The stamp is read *before* the data:
  a write that commits in between makes the cached copy newer than its stamp (harmless: the
  next read sees a new stamp and renders again), never older;
- it is at most MAX_AGE old. Nothing the domain views show is computed from the clock today
  (`renewal_at` comes from the certificate and its ARI window, `status` from the stored
  state), so the age only bounds what a write the stamp cannot see would leave stale: a
  store file replaced under a running process (a restore), a hand edit with the triggers
  dropped, or a time-dependent field added to a view later. Two seconds is short next to
  anything a client polls for (an issuance takes seconds, a renewal is days away) and long
  next to the interval between reads of one page at hundreds of requests a second;
- the config is the same object (a SIGHUP reload replaces it; views show its frontends).

Keys are the endpoint and its normalised query (limit, status, cursor; the domain), never
the token: every token that may read these routes (scope `read` and up, certd/api/scopes.py)
gets the same answer, and the authenticate middleware has run before a handler looks here.
The cache is bounded (MAX_ENTRIES, MAX_BYTES, least recently used first out; a body over a
quarter of MAX_BYTES is not kept), and a key with an over-long part (a hostile cursor) is
not cached at all, so query strings cannot grow it. Errors (404, 400) are never cached.

Each read costs one query for the stamp (SQLite: on the store's read-only connection, never
queued behind a write; PostgreSQL: one row by its key). Keeping the stamp in memory through
LISTEN/NOTIFY, as the challenge cache does, would save that query but make a process's own
write visible to its next read only once the notification is back; not done.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

MAX_AGE = 2.0  # seconds
MAX_ENTRIES = 1024
MAX_BYTES = 32 << 20  # what the bodies of every entry may add up to
MAX_KEY_PART = 300  # characters; a longer string in a key is not cached (a domain is <= 253)


@dataclass(frozen=True)
class _Entry:
    stamp: int
    config: object
    born: float
    body: bytes


class RenderCache:
    """key -> encoded body, valid under one change stamp and config, for MAX_AGE seconds."""

    def __init__(self, *, max_age: float = MAX_AGE, max_entries: int = MAX_ENTRIES,
                 max_bytes: int = MAX_BYTES, clock: Callable[[], float] = time.monotonic):
        self.max_age = max_age
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self.size = 0  # bytes of every body held
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def cacheable(key: tuple) -> bool:
        return all(not isinstance(part, str) or len(part) <= MAX_KEY_PART for part in key)

    def get(self, key: tuple, stamp: int, config: object) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if (entry.stamp != stamp or entry.config is not config
                or self.clock() - entry.born > self.max_age):
            self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.body

    def put(self, key: tuple, stamp: int, config: object, body: bytes) -> None:
        if not self.cacheable(key) or len(body) > self.max_bytes // 4:
            return
        self._drop(key)
        self._entries[key] = _Entry(stamp, config, self.clock(), body)
        self.size += len(body)
        while len(self._entries) > self.max_entries or self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= len(entry.body)


_CACHES: weakref.WeakKeyDictionary[object, RenderCache] = weakref.WeakKeyDictionary()


def cache_of(owner: object) -> RenderCache:
    """The render cache of `owner` (a Certd: one per process, as each process has one)."""
    cache = _CACHES.get(owner)
    if cache is None:
        cache = _CACHES[owner] = RenderCache()
    return cache
