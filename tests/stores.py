"""The one way the unit tests open a store: `opened_store` (a SqliteStore, or a subclass that
counts or breaks things, optionally seeded with challenges) and the plain `store` fixture
conftest exports (tmp_path/state/certd.db). A module that needs another path, class or seeded
challenges overrides `store` with `opened_store`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from certd.model import Challenge
from certd.store.sqlite import SqliteStore


@contextlib.asynccontextmanager
async def opened_store(path: Path, cls: type[SqliteStore] = SqliteStore,
                       challenges: Iterable[Challenge] = ()) -> AsyncIterator[SqliteStore]:
    """`cls(path)` opened, `challenges` put, closed on the way out."""
    s = cls(path)
    await s.open()
    try:
        for challenge in challenges:
            await s.put_challenge(challenge)
        yield s
    finally:
        await s.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with opened_store(tmp_path / "state" / "certd.db") as s:
        yield s
