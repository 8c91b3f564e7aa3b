"""Persistence: the Store Protocol and its implementations."""

from certd.store.base import Store
from certd.store.sqlite import SqliteStore

__all__ = ["Store", "SqliteStore"]
