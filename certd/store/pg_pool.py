"""The PostgreSQL store's connections: its two pools, the password file, units of work, and
what a failure says (certd/store/postgres.py has the Store methods, pg_schema.py the schema).

- The main pool serves every call; a pool of its own (READER_POOL_SIZE) serves the challenge
  lookup, so it never queues behind this process's writes. Connections are made when a call
  needs one; after a server restart the pools replace the dead ones: a call during the outage
  is a StoreError, the next one after it works. A SELECT that finds its connection lost (a
  restart or a terminated backend not noticed yet) is tried once more on a new one.
- The password is read from its file at each new connection (a rotated password needs no
  restart) and is never part of a message: the store names itself
  `postgresql[USER@HOST:PORT/DATABASE]`, never with the URL's password or query.
- Every call is one statement in autocommit unless a unit of work (`transaction()`) is open
  in the calling task: then it runs on that unit's connection.
- An API worker process (certd/workers.py) has a smaller main pool (API_WORKER_POOL_SIZE) and
  neither the reader pool nor the challenge cache: it answers no challenges.
- Each session names its process: `application_name` is `certd:PID` (the daemon's, or an
  API worker's), so pg_stat_activity tells which instance holds which connections.
- A statement waiting for another session's lock fails after LOCK_TIMEOUT (as SQLite's busy
  timeout); the server ends a transaction left idle after IDLE_IN_TRANSACTION (a dead or
  partitioned client holds no row lock for long).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg

from certd.errors import StoreError
from certd.store.pg_schema import SchemaTooNew, migrate

log = logging.getLogger(__name__)

POOL_SIZE = 10  # the main pool's most connections
READER_POOL_SIZE = 2  # get_key_authorization's own
# An API worker process (certd/workers.py, `api.workers` > 1) serves /api/ only: one event
# loop on one core, no challenge lookups. It opens no reader pool and no challenge cache
# (no LISTEN connection), and its main pool is smaller: with the daemon's sizes each worker
# kept 12 connections after a burst, so 2 instances x 4 workers held over 100 (PostgreSQL's
# default max_connections)
API_WORKER_POOL_SIZE = 4
_api_worker = False  # set in a worker by `api_worker_process()`, before its store opens


def api_worker_process() -> None:
    """This process is an API worker: its PostgreSQL stores use the API worker's connections
    (API_WORKER_POOL_SIZE, no reader pool, no challenge cache)."""
    global _api_worker
    _api_worker = True
CONNECT_TIMEOUT = 5.0  # a new connection, TLS and login included
LOCK_TIMEOUT = "5s"  # a statement waiting for another session's row or table lock fails
COMMAND_TIMEOUT = 60.0  # any one statement (the sweep's bulk reads included)
ACQUIRE_TIMEOUT = 10.0  # waiting for a free connection of the main pool
READ_TIMEOUT = 1.0  # a challenge lookup, connecting included
IDLE_IN_TRANSACTION = "60s"  # the server ends a unit of work left idle this long
CLOSE_TIMEOUT = 5.0

def display_name(url: str) -> str:
    """`user@host:port/database` of a postgresql:// URL: never its password or query."""
    parts = urlsplit(url)
    user = unquote(parts.username) + "@" if parts.username else ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    host = parts.hostname or ""
    return f"{user}{host}{port}{parts.path or '/'}"


def _count(status: str) -> int:
    """The row count of a command tag ('UPDATE 3', 'INSERT 0 1', 'DELETE 0')."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pools' reset: certd sets no session state (no SET, no session advisory lock, no
    LISTEN on a pool connection), so asyncpg's RESET ALL round trip on every release is
    skipped; an open transaction is still rolled back by asyncpg itself."""


@dataclass
class _Unit:
    """An open unit of work: its connection, and a lock so that tasks started inside it
    (which inherit it) take turns on that one connection."""

    conn: asyncpg.Connection
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    after_commit: list[Callable[[], None]] = field(default_factory=list)


class PgConnections:
    """The connections of one PostgreSQL store (see the module's docstring); the Store
    methods are its subclass's (certd/store/postgres.py)."""

    def __init__(self, url: str, *, password_file: Path | None = None,
                 pool_size: int = POOL_SIZE):
        scheme = url.partition("://")[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise ValueError("a PostgreSQL store needs a postgresql:// URL")
        self.url = url
        self.name = display_name(url)
        self.password_file = Path(password_file) if password_file is not None else None
        # an API worker's store: a smaller pool; no reader pool nor challenge cache
        self.api_worker = _api_worker
        self.pool_size = min(pool_size, API_WORKER_POOL_SIZE) if _api_worker else pool_size
        self._pool: asyncpg.Pool | None = None
        self._reader: asyncpg.Pool | None = None
        self._unit: contextvars.ContextVar[_Unit | None] = contextvars.ContextVar(
            f"postgres-unit-{id(self)}", default=None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def _error(self, exc: BaseException, what: str = "") -> StoreError:
        return StoreError(f"postgresql[{self.name}]: {what}{_reason(exc)}",
                          unavailable=isinstance(exc, _UNAVAILABLE))

    # -------------------------------------------------------------------- lifecycle

    async def _password(self) -> str:
        """The password file's first line, read at each new connection."""
        assert self.password_file is not None
        try:
            text = await asyncio.to_thread(self.password_file.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StoreError(f"postgresql[{self.name}]: password file {self.password_file}: "
                             f"cannot be read: {reason}") from None
        password = text.splitlines()[0] if text.strip() else ""
        if not password:
            raise StoreError(f"postgresql[{self.name}]: password file {self.password_file} "
                             "is empty")
        return password

    def _connect_args(self, *, command_timeout: float, connect_timeout: float) -> dict:
        args: dict = {
            "dsn": self.url,
            "timeout": connect_timeout,
            "command_timeout": command_timeout,
            "server_settings": {
                # which process a session is (pg_stat_activity): `certd:PID`
                "application_name": f"certd:{os.getpid()}",
                "lock_timeout": LOCK_TIMEOUT,
                "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION,
            },
        }
        if self.password_file is not None:
            args["password"] = self._password
        return args

    async def _new_connection(self) -> asyncpg.Connection:
        """A connection of its own, outside the pools (the challenge cache's LISTEN)."""
        return await asyncpg.connect(**self._connect_args(command_timeout=COMMAND_TIMEOUT,
                                                          connect_timeout=CONNECT_TIMEOUT))

    async def open(self) -> None:
        try:
            # min_size=0: connections are made when a call needs one (asyncpg's background
            # refill of a floor would log a traceback a second through an outage; the calls
            # themselves say the store is down)
            self._pool = await asyncpg.create_pool(
                min_size=0, max_size=self.pool_size, reset=_keep_session,
                **self._connect_args(command_timeout=COMMAND_TIMEOUT,
                                     connect_timeout=CONNECT_TIMEOUT))
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                if await conn.fetchval("SELECT current_setting('transaction_read_only')") == "on":
                    raise StoreError(f"postgresql[{self.name}]: open: the database is "
                                     "read-only (a standby, or default_transaction_read_only)")
                await migrate(conn)
            if self.api_worker:  # no challenge lookups here: `_lookup` uses the main pool
                return
            # the reader keeps its connections however long they idle: the first challenge
            # lookup after a quiet hour should not pay for a login
            self._reader = await asyncpg.create_pool(
                min_size=0, max_size=READER_POOL_SIZE, max_inactive_connection_lifetime=0,
                reset=_keep_session,
                **self._connect_args(command_timeout=READ_TIMEOUT,
                                     connect_timeout=CONNECT_TIMEOUT))
            async with self._reader.acquire(timeout=ACQUIRE_TIMEOUT):
                pass  # one connection made now
        except SchemaTooNew as exc:
            await self.close()
            raise StoreError(f"postgresql[{self.name}]: {exc}") from None
        except StoreError:
            await self.close()
            raise
        except FAILURES as exc:
            await self.close()
            raise self._error(exc, "open: ") from exc
        except BaseException:  # a cancellation: never leave a pool behind
            await self.close()
            raise

    async def close(self) -> None:
        pools = [p for p in (self._reader, self._pool) if p is not None]
        self._reader = self._pool = None
        for pool in pools:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except (Exception, asyncio.CancelledError):  # a dead server, a stuck release
                pool.terminate()

    def _main(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"postgresql[{self.name}]: store is not open", unavailable=True)
        return self._pool

    # -------------------------------------------------------------- units of work

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """A unit of work: this task's calls inside run on one connection in one
        transaction, committed together or not at all. Nested: part of the outer. Other
        tasks keep using the pool (PostgreSQL isolates them)."""
        if self._unit.get() is not None:
            yield
            return
        pool = self._main()
        try:
            conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT)
        except FAILURES as exc:
            raise self._error(exc, "begin: ") from exc
        try:
            tx = conn.transaction()
            try:
                await tx.start()
            except FAILURES as exc:
                raise self._error(exc, "begin: ") from exc
            unit = _Unit(conn)
            token = self._unit.set(unit)
            try:
                yield
            except BaseException:
                with contextlib.suppress(Exception):  # a dead connection rolls back itself
                    await tx.rollback()
                raise
            finally:
                self._unit.reset(token)
            try:
                await tx.commit()
            except FAILURES as exc:
                raise self._error(exc, "commit: ") from exc
            for done in unit.after_commit:
                done()
        finally:
            try:
                await pool.release(conn)
            except Exception as exc:  # the connection is dropped; the pool makes another
                log.debug("postgresql[%s]: release: %s", self.name, exc)

    def _after_commit(self, done: Callable[[], None]) -> None:
        """`done()` once what this task wrote is committed: at once outside a unit of work,
        at its commit inside one (never, if it rolls back)."""
        unit = self._unit.get()
        if unit is None:
            done()
        else:
            unit.after_commit.append(done)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        unit = self._unit.get()
        if unit is not None:
            async with unit.turn:
                yield unit.conn
            return
        async with self._main().acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            yield conn

    async def _exec(self, sql: str, *args: object) -> int:
        try:
            async with self._connection() as conn:
                return _count(await conn.execute(sql, *args))
        except FAILURES as exc:
            raise self._error(exc) from exc

    async def _all(self, sql: str, *args: object) -> list[asyncpg.Record]:
        # A SELECT outside a unit of work is tried once more, on a new connection, when the
        # one it got turns out to be lost (a server restart or a terminated backend this
        # process had not noticed yet): a read is safe to repeat. Writes are not repeated.
        again = sql.startswith("SELECT") and self._unit.get() is None
        while True:
            try:
                async with self._connection() as conn:
                    return await conn.fetch(sql, *args)
            except _LOST as exc:
                if not again:
                    raise self._error(exc) from exc
                again = False
                log.info("postgresql[%s]: connection lost (%s): reading again", self.name, exc)
            except FAILURES as exc:
                raise self._error(exc) from exc

    async def _one(self, sql: str, *args: object) -> asyncpg.Record | None:
        rows = await self._all(sql, *args)
        return rows[0] if rows else None

    async def _many(self, sql: str, rows: list[tuple]) -> None:
        """One statement for many rows (atomic: asyncpg wraps it in a transaction)."""
        if not rows:
            return
        try:
            async with self._connection() as conn:
                await conn.executemany(sql, rows)
        except FAILURES as exc:
            raise self._error(exc) from exc

    async def _lookup(self, what: str, sql: str, *args: object) -> asyncpg.Record | None:
        """One row from the reader pool (get_key_authorization's): never queued behind
        this process's writes, bounded by READ_TIMEOUT, connecting included; once more on a
        lost connection, as `_all`."""
        reader = self._reader if not self.api_worker else self._pool
        if reader is None:
            raise StoreError(f"postgresql[{self.name}]: store is not open", unavailable=True)
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                for again in (True, False):
                    try:
                        return await reader.fetchrow(sql, *args)
                    except _LOST:
                        if not again:
                            raise
        except FAILURES as exc:
            raise self._error(exc, f"{what}: ") from exc


# what a call can fail with: the server's errors, the driver's, the network's (refused,
# reset, timed out: TimeoutError is an OSError)
FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
             OSError)


# a connection that was already gone when a statement was sent on it
# (asyncpg's InternalClientError included: a connection whose server ended it while idle
# may fail its next statement with "cannot switch to state ...")
_LOST = (asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError, asyncpg.InterfaceError,
         asyncpg.InternalClientError, ConnectionResetError, BrokenPipeError)


# the server cannot be reached or serve anyone now (StoreError.unavailable): the network,
# no answer in time (a pool's acquire included), a lost connection, a server starting, stopping
# or full, a read-only server (a standby after a failover). Not a row lock held past
# LOCK_TIMEOUT: that is one row's writer, the other rows may be free
_UNAVAILABLE = (*_LOST, OSError, TimeoutError, asyncpg.PostgresConnectionError,
                asyncpg.OperatorInterventionError, asyncpg.InsufficientResourcesError,
                asyncpg.ReadOnlySQLTransactionError)


def _reason(exc: BaseException) -> str:
    """What went wrong, in the server's or the network's words, with what it means for an
    operator when they are terse. Never the URL."""
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return f"{exc} (another session held a lock for over {LOCK_TIMEOUT})"
    if isinstance(exc, asyncpg.InvalidPasswordError
                  | asyncpg.InvalidAuthorizationSpecificationError):
        return f"{exc} (check storage_password_file)"
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return f"{exc} (the server is starting or stopping)"
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError | ConnectionResetError):
        return f"{exc} (the connection was lost: the server restarted, or the network)"
    if isinstance(exc, TimeoutError):
        return "no answer in time (the server or the network is down or overloaded)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server up, on that address and port?)"
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__
