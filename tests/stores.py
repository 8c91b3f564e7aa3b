"""The one way the unit tests open a store.

- `opened_store` (a SqliteStore, or a subclass that counts or breaks things, optionally
  seeded with challenges) and the plain `store` fixture conftest exports
  (tmp_path/state/certd.db). A module that needs another path, class or seeded challenges
  overrides `store` with `opened_store`.
- BACKENDS, the registry of every Store implementation the contract suite
  (tests/test_store_contract.py) runs against, and its fixtures `any_backend` / `any_store`,
  parametrised over it (test ids `[sqlite]`, `[memory]`, ...).

A backend is a function of the test's `request` (for the fixtures it needs: tmp_path, a
database server) that sets up one empty store and yields an Opener; each call of the Opener
opens one more handle on that same store (a connection, as another process would hold), and
closes it on the way out. The backend removes the store itself when the test ends. Adding a
backend is one entry in BACKENDS.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from certd.model import Challenge
from certd.store.base import Store
from certd.store.memory import MemoryData, MemoryStore
from certd.store.sqlite import SqliteStore

Opener = Callable[[], AbstractAsyncContextManager[Store]]
Backend = Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[Opener]]


@contextlib.asynccontextmanager
async def opened(store: Store, challenges: Iterable[Challenge] = ()) -> AsyncIterator[Store]:
    """`store` opened, `challenges` put, closed on the way out."""
    await store.open()
    try:
        for challenge in challenges:
            await store.put_challenge(challenge)
        yield store
    finally:
        await store.close()


def opened_store(path: Path, cls: type[SqliteStore] = SqliteStore,
                 challenges: Iterable[Challenge] = ()
                 ) -> AbstractAsyncContextManager[SqliteStore]:
    """`cls(path)` opened, `challenges` put, closed on the way out."""
    return opened(cls(path), challenges)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with opened_store(tmp_path / "state" / "certd.db") as s:
        yield s


@contextlib.asynccontextmanager
async def sqlite_backend(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """Handles on one file: as several processes sharing it."""
    path = request.getfixturevalue("tmp_path") / "state" / "certd.db"
    yield lambda: opened_store(path)


@contextlib.asynccontextmanager
async def memory_backend(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """Handles on one MemoryData: as several processes sharing a database."""
    data = MemoryData()
    yield lambda: opened(MemoryStore(data))


@contextlib.asynccontextmanager
async def postgresql_backend(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """Handles on one fresh database of the session's PostgreSQL cluster (tests/lab/postgres.py),
    each with its own pools: as several certd instances sharing it."""
    from certd.store.postgres import PostgresStore

    db = request.getfixturevalue("postgres_database")
    yield lambda: opened(PostgresStore(db.url, password_file=db.password_file))


BACKENDS: dict[str, Backend] = {
    "sqlite": sqlite_backend,
    "memory": memory_backend,
    "postgresql": postgresql_backend,
}
# backends that start a server: their tests carry the `lab` marker (-m "not lab" skips them)
SERVER_BACKENDS = frozenset({"postgresql"})


@pytest.fixture(params=[pytest.param(name, marks=[pytest.mark.lab] if name in SERVER_BACKENDS
                                     else []) for name in BACKENDS])
async def any_backend(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """An Opener on an empty store of each backend in turn."""
    async with BACKENDS[request.param](request) as opener:
        yield opener


@pytest.fixture
async def any_store(any_backend: Opener) -> AsyncIterator[Store]:
    """An open, empty store of each backend in turn."""
    async with any_backend() as s:
        yield s
