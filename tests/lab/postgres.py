"""A private PostgreSQL cluster for the tests: Debian's `postgresql` (15), no system service.

`PostgresCluster.create()` runs `initdb` into a new temp directory as an unprivileged user
(root cannot run postgres: as root the cluster belongs to the `postgres` account the Debian
package creates, else `nobody`; as anyone else, to that user), and `start()` runs the
postmaster itself as a :class:`ManagedProcess` (through `setpriv`, which execs: the process's
PID is the postmaster's), listening on 127.0.0.1 and a free port only, its Unix socket in the
temp directory, `fsync=off` (nothing here must survive a power cut). `stop()` asks for a fast
shutdown by PID (SIGINT: sessions are ended, not waited for) and then reaps it as every lab
process is reaped.

Two roles: `postgres`, the superuser, reachable only through the Unix socket in the private
directory (trust), for the fixtures' CREATE/DROP DATABASE; and `certd`, a plain role that
logs in over TCP with a SCRAM password kept in `password_file` (0600) — the way certd logs in
in production. `database()` gives each test its own database, owned by `certd`.

The fixtures (`postgres_cluster` per session, `postgres_database` per test) never skip: a
machine without PostgreSQL fails them with the command that installs it (`scripts/test`
does).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .procs import LabError, ManagedProcess, free_port, wait_until

__all__ = ["PgDatabase", "PostgresCluster", "pg_bindir", "postgres_cluster",
           "postgres_database"]

ROLE = "certd"
SUPERUSER = "postgres"
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0


def pg_bindir() -> Path:
    """The newest Debian PostgreSQL's bin directory (or $CERTD_TEST_PG_BINDIR)."""
    chosen = os.environ.get("CERTD_TEST_PG_BINDIR")
    if chosen:
        return Path(chosen)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(re.findall(r"/(\d+)/bin/", p)[0]))
    if not found:
        raise LabError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): "
                       "run the tests through `bash scripts/test`, which installs Debian's "
                       "`postgresql`, or `apt-get install postgresql`")
    return Path(found[-1]).parent


def _server_user() -> str | None:
    """Whom the cluster runs as: None (this user) unless we are root, who may not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise LabError("running as root and neither a `postgres` nor a `nobody` account exists "
                   "to run PostgreSQL as")


@dataclass(frozen=True)
class PgDatabase:
    """One test's database: what certd's config would say about it."""

    cluster: PostgresCluster
    name: str

    @property
    def url(self) -> str:
        """`storage:` for certd: no password in it (that is in `password_file`)."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.cluster.port}/{self.name}"

    @property
    def password_file(self) -> Path:
        return self.cluster.password_file

    def psql(self, sql: str) -> str:
        """Run `sql` as the superuser in this database; its output (unaligned, no headers)."""
        return self.cluster.psql(sql, database=self.name)


class PostgresCluster:
    """One initdb'ed cluster in its own temp directory (see the module's docstring)."""

    def __init__(self, root: Path, user: str | None, bindir: Path):
        self.root = root
        self.user = user
        self.bindir = bindir
        self.data = root / "data"
        self.socket_dir = root
        self.port = free_port()
        self.password_file = root / "certd-password"
        self.log_path = root / "postgres.log"
        self.process: ManagedProcess | None = None
        self._databases = 0
        self._password = ""

    @classmethod
    def create(cls, user: str | None = None) -> PostgresCluster:
        """initdb into a new private temp directory (not under pytest's tmp dirs: those are
        0700 root, which the cluster's user could not enter). Not started."""
        bindir = pg_bindir()
        user = user if user is not None else _server_user()
        root = Path(tempfile.mkdtemp(prefix="certd-pg-"))
        cluster = cls(root, user, bindir)
        try:
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(root, entry.pw_uid, entry.pw_gid)
            os.chmod(root, 0o700)
            done = subprocess.run(
                cluster._as_user([str(bindir / "initdb"), "-D", str(cluster.data),
                                  "-U", SUPERUSER, "--auth-local=trust",
                                  "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8",
                                  "--locale=C.UTF-8"]),
                capture_output=True, text=True, timeout=COMMAND_TIMEOUT, cwd=root)
            if done.returncode != 0:
                raise LabError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
            # the certd role's password: in a file only root (the tests) reads
            password = secrets.token_urlsafe(24)
            fd = os.open(cluster.password_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            if user is not None:  # the test process may be root: keep the file its own
                os.chown(cluster.password_file, os.geteuid(), os.getegid())
            cluster._password = password
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cluster

    def _as_user(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        entry = pwd.getpwnam(self.user)
        # setpriv execs (no child left behind): the PID we get is the program's own
        return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                "--clear-groups", "--", *argv]

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> PostgresCluster:
        """Start the postmaster (again after a stop: same data, same port) and wait until it
        accepts connections."""
        first = self.process is None
        self.process = ManagedProcess(
            "postgres",
            self._as_user([str(self.bindir / "postgres"), "-D", str(self.data),
                           "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                           "-c", f"unix_socket_directories={self.socket_dir}",
                           "-c", "fsync=off", "-c", "synchronous_commit=off",
                           "-c", "full_page_writes=off", "-c", "max_connections=200",
                           "-c", "log_min_messages=warning", "-c", "TimeZone=UTC"]),
            self.log_path, cwd=self.root)
        self.process.start()
        try:
            wait_until(self._ready, START_TIMEOUT, interval=0.02, what="postgres to accept "
                       f"connections on 127.0.0.1:{self.port}")
        except LabError:
            raise self.process.fail("not ready") from None
        if first:
            self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self._password}'")
        return self

    def _ready(self) -> bool:
        assert self.process is not None and self.process.popen is not None
        if not self.process.alive():
            raise self.process.fail(f"exited with status {self.process.popen.returncode}")
        done = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p",
             str(self.port), "-U", SUPERUSER, "-d", "postgres"],
            capture_output=True, timeout=COMMAND_TIMEOUT)
        return done.returncode == 0

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs."""
        return self.process.pid if self.process is not None and self.process.alive() else None

    def stop(self, grace: float = 10.0) -> None:
        """Fast shutdown (SIGINT to the postmaster, by PID: open sessions are ended), then
        reap it and anything of its group left behind. Idempotent."""
        process = self.process
        if process is None or process.popen is None:
            return
        if process.alive():
            os.kill(process.popen.pid, signal.SIGINT)
            deadline = time.monotonic() + grace
            while process.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        process.stop()

    def destroy(self) -> None:
        """stop() and remove the directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # ----------------------------------------------------------------------- databases

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """`sql` as the superuser, through the private Unix socket; raises LabError on an
        error, with psql's message."""
        done = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER,
             "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        if done.returncode != 0:
            raise LabError(f"psql: {sql[:200]}: {done.stderr.strip()}")
        return done.stdout.strip()

    def database(self) -> PgDatabase:
        """A new empty database owned by the certd role."""
        self._databases += 1
        name = f"certd_test_{self._databases}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE} TEMPLATE template0")
        return PgDatabase(self, name)

    def drop(self, db: PgDatabase) -> None:
        """Drop a test's database, ending any session still on it (a store left open)."""
        self.psql(f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.process else ""

    def __repr__(self) -> str:
        return f"<PostgresCluster {self.root} port={self.port} pid={self.pid}>"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One started cluster for the whole session, destroyed at its end. Tests that stop or
    break a server start their own (`PostgresCluster.create().start()`)."""
    cluster = PostgresCluster.create()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_database(postgres_cluster: PostgresCluster) -> Iterator[PgDatabase]:
    """A fresh, empty database of the session's cluster for one test, dropped after it."""
    db = postgres_cluster.database()
    try:
        yield db
    finally:
        postgres_cluster.drop(db)
