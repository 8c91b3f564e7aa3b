"""The store a bench fills and its daemons share: SQLite under the bench's state_dir (the
default), or a database in a private PostgreSQL cluster (`--storage postgresql`: the tests'
tests/lab/postgres.py cluster, initdb'ed into a temp directory and run as an unprivileged
user, stopped by PID at the end).

Only the benches use this; nothing here is certd code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from certd import config as configuration
from certd.store import make_store

if TYPE_CHECKING:
    from certd.store.base import Store
    from tests.lab.postgres import PgDatabase

BACKENDS = ("sqlite", "postgresql")


def add_argument(parser) -> None:
    parser.add_argument("--storage", choices=BACKENDS, default="sqlite",
                        help="the store: SQLite in the state directory, or a database in a "
                             "private PostgreSQL cluster (Debian's postgresql)")


@contextlib.contextmanager
def cluster(storage: str) -> Iterator[object | None]:
    """A started private PostgreSQL cluster for `postgresql` (destroyed on exit), else None."""
    if storage != "postgresql":
        yield None
        return
    from tests.lab.postgres import PostgresCluster

    pg = PostgresCluster.create()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


def storage_config(pg) -> tuple[dict, PgDatabase | None]:
    """(config keys naming a new empty database of `pg`, the database); ({}, None) for SQLite
    (the store is <state_dir>/certd.db, per config)."""
    if pg is None:
        return {}, None
    db = pg.database()
    return {"storage": db.url, "storage_password_file": str(db.password_file)}, db


def open_store(data: dict) -> Store:
    """The store `data` (a config dict) names, not yet opened: the daemon's own factory."""
    return make_store(configuration.parse(data))


def count(db: PgDatabase, sql: str) -> int:
    """`SELECT COUNT(*) ...` in a PostgreSQL store other processes write (psql as the cluster's
    superuser); 0 while the table does not exist (before the first daemon's migrations). For
    SQLite, tests/certd_lab.py reads its file."""
    from tests.lab.procs import LabError

    try:
        return int(db.psql(sql) or 0)
    except LabError as exc:
        if "does not exist" in str(exc):
            return 0
        raise
