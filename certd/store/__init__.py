"""Persistence: the Store Protocol, and the factory that picks its implementation from the
`storage:` URL.

BACKENDS is the registry, one entry per URL scheme: a constructor taking the Config and
returning an unopened store (the caller opens and closes it), or None for a scheme certd
knows but this version does not implement. Config's validator asks `storage_problem`, so a
scheme becomes valid in config files when its constructor is filled in here. Constructors
import their module when called: nothing is imported for a backend nobody uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from certd.errors import ConfigError
from certd.store.base import Store
from certd.store.sealing import KeyRing

if TYPE_CHECKING:
    from certd.config import Config

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
DEFAULT_DATABASE = "certd.db"  # under state_dir, when `storage` is unset


def keyring(config: Config) -> KeyRing | None:
    """The key-encryption keys of `storage_key_file` (None when unset): private keys are
    sealed with them in the store (certd/store/sealing.py). ConfigError for a file that cannot
    be read or holds no valid key, naming the line, never the key."""
    if config.storage_key_file is None:
        return None
    return KeyRing.load(config.storage_key_file)


def _sqlite(config: Config) -> Store:
    from certd.store.sqlite import SqliteStore

    return SqliteStore(config.database_path, keyring=keyring(config))


def _memory(config: Config) -> Store:
    from certd.store.memory import MemoryStore

    log.warning("storage memory://: nothing certd stores survives this process, and no other "
                "process (certd CLI commands, other instances) sees it: for tests only")
    return MemoryStore(keyring=keyring(config))


def _postgresql(config: Config) -> Store:
    from certd.store.postgres import PostgresStore

    keys = keyring(config)
    if keys is None:
        log.warning("storage postgresql://: private keys are stored unencrypted in the database "
                    "(and its WAL, replicas and dumps): set storage_key_file to seal them "
                    "(README, Keys at rest)")
    return PostgresStore(config.storage, password_file=config.storage_password_file,
                         keyring=keys)


BACKENDS: dict[str, Callable[[Config], Store] | None] = {
    "sqlite": _sqlite,
    "memory": _memory,
    "postgresql": _postgresql,
}


def storage_scheme(storage: str | None) -> str:
    """The scheme of a `storage:` URL ('sqlite' when unset: the default store)."""
    if storage is None:
        return "sqlite"
    scheme, sep, _ = storage.partition("://")
    return scheme.lower() if sep else ""


def storage_problem(storage: str) -> str | None:
    """Why `storage` is not a URL this certd can use (None if it is). Never repeats the URL,
    which may hold a password."""
    scheme = storage_scheme(storage)
    if scheme not in BACKENDS:
        return (f"unknown storage {scheme + '://' if scheme else 'URL'}: use sqlite:///PATH, "
                "postgresql://USER@HOST:PORT/DATABASE, or memory:// (nothing persists: tests "
                "only)")
    if BACKENDS[scheme] is None:
        return f"{scheme}:// is not supported in this version: use sqlite:///PATH"
    if scheme == "sqlite" and (not storage.startswith(SQLITE_PREFIX)
                               or storage == SQLITE_PREFIX):
        return "write the SQLite store as sqlite:///PATH (a file path after the three slashes)"
    if scheme == "memory" and storage.lower() != "memory://":
        return "memory:// takes nothing after it"
    if scheme == "postgresql":
        try:
            url = urlsplit(storage)
            url.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            url = None
        if url is None or url.path in ("", "/"):
            return "write the PostgreSQL store as postgresql://USER@HOST:PORT/DATABASE"
        if url.password is not None:
            return ("postgresql://: no password in the URL: put it in a file named by "
                    "storage_password_file (or $CREDENTIALS_DIRECTORY/NAME)")
    return None


def storage_takes_password(storage: str | None) -> bool:
    """Whether `storage_password_file` means anything for this store (PostgreSQL's)."""
    return storage_scheme(storage) == "postgresql"


def sqlite_path(storage: str | None, state_dir: Path) -> Path | None:
    """The SQLite file of a `storage:` URL (<state_dir>/certd.db when unset); None when the
    store is not SQLite."""
    if storage is None:
        return state_dir / DEFAULT_DATABASE
    if storage_scheme(storage) != "sqlite":
        return None
    return Path(storage[len(SQLITE_PREFIX):])


def describe_storage(config: Config) -> str:
    """The store for a log line or `certd check-config`: the file, or the URL without its
    password."""
    path = config.database_path
    if path is not None:
        return str(path)
    url = urlsplit(config.storage)
    if url.password is None:
        return config.storage
    return url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@", 1)).geturl()


def make_store(config: Config) -> Store:
    """The store `config.storage` names, not yet opened. ConfigError if this certd cannot
    build it (Config's validator refuses such URLs already; this is for a Config built
    around it)."""
    storage = config.storage
    problem = storage_problem(storage) if storage is not None else None
    if problem is not None:
        raise ConfigError("storage", [problem])
    return BACKENDS[storage_scheme(storage)](config)


__all__ = ["BACKENDS", "Store", "describe_storage", "keyring", "make_store", "sqlite_path",
           "storage_problem", "storage_scheme", "storage_takes_password"]
