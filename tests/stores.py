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
closes it on the way out; `keyring=` opens it with private keys sealed under that key file
(certd/store/sealing.py). The Opener's `at_rest()` returns what the store holds at rest, as
bytes to search (the SQLite file and its WAL, PostgreSQL's tables as text, the memory tables).
The backend removes the store itself when the test ends. Adding a backend is one entry in
BACKENDS; the `+sealed` entries run the whole suite again with a key file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from certd.model import Challenge
from certd.store.base import Store
from certd.store.memory import MemoryData, MemoryStore
from certd.store.sealing import KeyRing
from certd.store.sqlite import SqliteStore

Opener = Callable[..., AbstractAsyncContextManager[Store]]
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


def _opener(open_: Opener, at_rest: Callable[[], Awaitable[bytes]]) -> Opener:
    open_.at_rest = at_rest  # type: ignore[attr-defined]
    return open_


@contextlib.asynccontextmanager
async def sqlite_backend(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """Handles on one file: as several processes sharing it."""
    path = request.getfixturevalue("tmp_path") / "state" / "certd.db"

    async def at_rest() -> bytes:
        return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal"))
                        if p.exists())

    yield _opener(lambda keyring=None: opened(SqliteStore(path, keyring=keyring)), at_rest)


@contextlib.asynccontextmanager
async def memory_backend(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """Handles on one MemoryData: as several processes sharing a database."""
    data = MemoryData()

    async def at_rest() -> bytes:
        records = [*data.accounts.values(), *data.orders.values(),
                   *(c for history in data.certificates.values() for c in history)]
        return repr([dataclasses.asdict(r) for r in records]).encode()

    yield _opener(lambda keyring=None: opened(MemoryStore(data, keyring=keyring)), at_rest)


@contextlib.asynccontextmanager
async def postgresql_backend(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """Handles on one fresh database of the session's PostgreSQL cluster (tests/lab/postgres.py),
    each with its own pools: as several certd instances sharing it."""
    from certd.store.postgres import PostgresStore

    db = request.getfixturevalue("postgres_database")

    async def at_rest() -> bytes:
        sql = "; ".join(f"SELECT t::text FROM {table} t"
                        for table in ("accounts", "certificates", "orders"))
        return (await asyncio.to_thread(db.psql, sql)).encode()

    yield _opener(lambda keyring=None: opened(PostgresStore(
        db.url, password_file=db.password_file, keyring=keyring)), at_rest)


# the key file of the `+sealed` backends: a retired key after the sealing one
TEST_KEYRING = KeyRing.parse(
    f"k2 {base64.b64encode(bytes(range(32))).decode()}\n"
    f"k1 {base64.b64encode(bytes(range(32, 64))).decode()}\n")


def sealed(backend: Backend) -> Backend:
    """`backend` whose handles seal private keys under TEST_KEYRING unless told otherwise."""

    @contextlib.asynccontextmanager
    async def with_keys(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
        async with backend(request) as opener:
            yield _opener(lambda keyring=TEST_KEYRING: opener(keyring=keyring),
                          opener.at_rest)

    return with_keys


BACKENDS: dict[str, Backend] = {
    "sqlite": sqlite_backend,
    "memory": memory_backend,
    "postgresql": postgresql_backend,
    "sqlite+sealed": sealed(sqlite_backend),
    "memory+sealed": sealed(memory_backend),
    "postgresql+sealed": sealed(postgresql_backend),
}
# backends that start a server: their tests carry the `lab` marker (-m "not lab" skips them)
SERVER_BACKENDS = frozenset({"postgresql", "postgresql+sealed"})


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
