"""Backup and restore of the SQLite store (`certd backup`, `certd restore`).

Where certd's state lives, and so what a restore needs:

- the database (`state_dir/certd.db`, or `storage: sqlite:///PATH`): the ACME account and its
  key, every certificate with its key, orders, challenges, deployments, aliases, alerts,
  events, the request ledger;
- the API tokens file when it is certd's own (`state_dir/api-tokens`, created at the first
  start with a random admin token). One configured elsewhere (`api.tokens_file`, a systemd
  credential) is configuration, kept with the config, and is not in the backup.

certd writes nothing else there. The config and the secrets it names (EAB HMAC, SSH key,
SMTP and salt-api passwords) are the operator's, as are the files on the nodes (`certd
deploy --all` writes them again).

A backup file is itself a SQLite database: the store copied with SQLite's online backup API
in one step, which is one read transaction, so the copy is one consistent moment while the
daemon goes on writing (in WAL mode a reader never blocks a writer), turned into a single
self-contained file, plus a `certd_backup` table (the manifest: format, time, certd version,
counts, and the tokens file). `sqlite3 FILE` opens it. With a passphrase, that database is
sealed (certd/sealed.py). Files are created 0600 under a temporary name in their final
directory, fsynced and linked into place, so a reader never sees half a file and an existing
one is never replaced by accident.

A restore goes into an empty state directory (a running daemon's directory is never empty:
its store and tokens are there), and verifies the copy before anything is put in place:
SQLite's integrity_check, the manifest, a schema this certd knows (a newer one is refused,
never downgraded), then the daemon's own open (which runs the migrations forward). The
restored store keeps no leases: they belonged to processes of the old store.

The functions here run their blocking parts in a thread (asyncio.to_thread).
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from certd import __version__, pidfile, sealed
from certd.errors import CertdError
from certd.model import utcnow
from certd.store.migrations import newer_schema
from certd.store.sqlite import BUSY_TIMEOUT, SqliteStore
from certd.text import one_line

FORMAT = 1
MANIFEST = "certd_backup"
SQLITE_MAGIC = b"SQLite format 3\x00"
COPY_CHUNK = 1 << 20


class BackupError(CertdError):
    """A backup or restore was refused or failed; nothing was put in place."""


@dataclass(frozen=True)
class StatePaths:
    """Where one certd keeps its state (from the config: state_dir, database_path,
    tokens_path)."""

    state_dir: Path
    database: Path
    tokens_file: Path

    @property
    def own_tokens(self) -> bool:
        """Is the tokens file certd's own (inside state_dir), so part of a backup?"""
        return _absolute(self.tokens_file).is_relative_to(_absolute(self.state_dir))

    def database_files(self) -> list[Path]:
        return [self.database] + [Path(f"{self.database}{s}") for s in ("-wal", "-shm")]


@dataclass(frozen=True)
class Summary:
    """What a backup holds, from its manifest."""

    created_at: datetime | None
    certd_version: str
    schema: int
    certificates: int
    aliases: int
    tokens: bool


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    encrypted: bool
    summary: Summary
    tokens_outside: Path | None  # a tokens file the backup leaves out (not in state_dir)


@dataclass(frozen=True)
class RestoreResult:
    summary: Summary
    schema: int  # after this certd's migrations
    encrypted: bool
    tokens_restored: Path | None
    tokens_not_restored: Path | None  # the backup holds tokens; the config reads them here


async def backup(paths: StatePaths, target: Path, *, passphrase: bytes | None = None,
                 force: bool = False, chunk_log2: int = sealed.CHUNK_LOG2) -> BackupResult:
    """Copy the store (and certd's own tokens file) to `target`, sealed with `passphrase` if
    given. Refuses an existing `target` unless `force`."""
    return await asyncio.to_thread(_backup, paths, Path(target), passphrase, force, chunk_log2)


async def restore(source: Path, paths: StatePaths, *,
                  passphrase: bytes | None = None) -> RestoreResult:
    """Put the backup `source` in place as the store of `paths`, whose state directory must
    be empty; nothing is put in place unless every check passed."""
    source = Path(source)
    created = await asyncio.to_thread(_prepare_directories, paths)
    temp = None
    try:
        temp, summary, tokens, encrypted = await asyncio.to_thread(
            _stage, source, paths, passphrase)
        schema = await _open_with_this_certd(temp, source)
        restored = await asyncio.to_thread(_put_in_place, temp, tokens, paths)
    except BaseException:
        await asyncio.to_thread(_cleanup, temp, created)
        raise
    await asyncio.to_thread(_cleanup, temp, [])
    return RestoreResult(summary, schema, encrypted, restored,
                         paths.tokens_file if tokens is not None and restored is None else None)


# --- backup ----------------------------------------------------------------------------------

def _backup(paths: StatePaths, target: Path, passphrase: bytes | None, force: bool,
            chunk_log2: int) -> BackupResult:
    database = paths.database
    if not database.is_file():
        raise BackupError(f"backup: no store at {database}: nothing to back up")
    target = _absolute(target)
    _check_target(target, paths, force)
    temps: list[Path] = []
    try:
        tokens = _read_tokens(paths) if paths.own_tokens else None
        # the plain copy of a sealed backup goes next to the store, which it copies: never
        # unencrypted where the backup goes
        copy = _private_file(database.parent if passphrase is not None else target.parent,
                             "certd-backup", "backup")
        temps.append(copy)
        summary = _online_copy(database, copy, tokens)
        out = copy
        if passphrase is not None:
            out = _private_file(target.parent, target.name, "backup")
            temps.append(out)
            with open(copy, "rb") as plain, open(out, "r+b") as sealed_file:
                sealed.seal(plain, sealed_file, passphrase, chunk_log2=chunk_log2)
            _remove(copy)
        _fsync(out)
        try:
            _link(out, target, replace=force)
        except FileExistsError:
            raise BackupError(f"backup: {target} exists: give --force to replace it") from None
        _fsync(target.parent)
        size = target.stat().st_size
    except OSError as exc:
        raise BackupError(f"backup: {exc.filename or target}: {exc.strerror or exc}") from None
    finally:
        for temp in temps:
            _remove(temp)
    outside = None if paths.own_tokens else paths.tokens_file
    return BackupResult(target, size, passphrase is not None, summary, outside)


def _check_target(target: Path, paths: StatePaths, force: bool) -> None:
    if not target.parent.is_dir():
        raise BackupError(f"backup: {target.parent}: no such directory")
    real = os.path.realpath(target)
    if any(real == os.path.realpath(p) for p in [*paths.database_files(), paths.tokens_file]):
        raise BackupError(f"backup: {target} is part of the store itself: choose another file")
    if os.path.isdir(target):
        raise BackupError(f"backup: {target} is a directory: name the file to write")
    if os.path.lexists(target) and not force:
        raise BackupError(f"backup: {target} exists: give --force to replace it")


def _read_tokens(paths: StatePaths) -> bytes | None:
    try:
        return paths.tokens_file.read_bytes()
    except FileNotFoundError:
        return None  # no API started yet; certd makes one at the next start


def _online_copy(database: Path, copy: Path, tokens: bytes | None) -> Summary:
    """`database` into `copy` in one step of SQLite's backup API (one read transaction: a
    consistent snapshot), as one rollback-journal file with the manifest added.

    The source is opened read-write (mode=rw: never created), though only read: a read-only
    connection to a stopped daemon's store creates its -wal and -shm files and cannot remove
    them, and made by root they would lock the daemon (user certd) out of its own store. The
    last connection to close removes them."""
    try:
        source = sqlite3.connect(f"file:{quote(str(_absolute(database)))}?mode=rw", uri=True,
                                 timeout=BUSY_TIMEOUT)
        try:
            target = sqlite3.connect(copy, isolation_level=None)
            try:
                source.backup(target)
                return _finish_copy(target, database, tokens)
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise BackupError(f"backup: {database}: {exc}") from None


def _finish_copy(db: sqlite3.Connection, database: Path, tokens: bytes | None) -> Summary:
    db.execute("PRAGMA journal_mode=DELETE")  # the source's WAL mode came with its pages
    (schema,) = db.execute("PRAGMA user_version").fetchone()
    if schema < 1:
        raise BackupError(f"backup: {database} holds no certd store (schema 0)")
    check = [row[0] for row in db.execute("PRAGMA quick_check")]
    if check != ["ok"]:
        raise BackupError(f"backup: {database} is damaged (SQLite's quick_check: "
                          f"{one_line(check[0], 200)}); its last good backup is worth keeping")
    summary = Summary(
        utcnow(), __version__, schema,
        db.execute("SELECT COUNT(DISTINCT name) FROM certificates").fetchone()[0],
        _count(db, "aliases"), tokens is not None)
    manifest = {"format": str(FORMAT), "created_at": summary.created_at.isoformat(),
                "certd_version": summary.certd_version, "schema": str(schema),
                "certificates": str(summary.certificates), "aliases": str(summary.aliases)}
    db.execute("BEGIN")
    db.execute(f"CREATE TABLE {MANIFEST} (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    db.executemany(f"INSERT INTO {MANIFEST} VALUES (?, ?)",
                   [(k, v.encode()) for k, v in manifest.items()]
                   + ([("tokens", tokens)] if tokens is not None else []))
    db.execute("COMMIT")
    return summary


def _count(db: sqlite3.Connection, table: str) -> int:
    try:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:  # an old schema without it
        return 0


# --- restore ---------------------------------------------------------------------------------

def _prepare_directories(paths: StatePaths) -> list[Path]:
    """Refuse unless the state directory is empty (or absent) and no store is where the
    database goes; create the directories missing (0700). Returns those created."""
    state_dir = paths.state_dir
    if os.path.lexists(state_dir) and not state_dir.is_dir():
        raise BackupError(f"restore: state_dir {state_dir} is not a directory")
    daemon = pidfile.running_daemon(state_dir)
    if daemon is not None:
        raise BackupError(f"restore: certd (pid {daemon}) runs on state_dir {state_dir}: "
                          "stop it first")
    entries = sorted(os.listdir(state_dir)) if state_dir.is_dir() else []
    if entries:
        shown = one_line(", ".join(entries[:5]) + (f" and {len(entries) - 5} more"
                                                   if len(entries) > 5 else ""), 200)
        raise BackupError(f"restore: state_dir {state_dir} is not empty ({shown}): restore "
                          "goes into an empty one; stop certd and move what is there aside")
    for path in paths.database_files():
        if os.path.lexists(path):
            raise BackupError(f"restore: a store exists at {path}: stop certd and move it "
                              "aside first")
    created = []
    for directory in (state_dir, paths.database.parent):
        missing = [d for d in (directory, *directory.parents) if not d.exists()]
        for d in reversed(missing):
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                raise BackupError(f"restore: cannot create {d}: {exc.strerror or exc}") from None
            created.append(d)
    return created


def _stage(source: Path, paths: StatePaths, passphrase: bytes | None
           ) -> tuple[Path, Summary, bytes | None, bool]:
    """The backup's database in a private temporary file next to where it goes, checked,
    with the manifest and the leases removed."""
    temp = None
    try:
        with open(source, "rb") as f:
            encrypted = _kind(f.read(len(SQLITE_MAGIC)), source, passphrase)
            f.seek(0)
            temp = _private_file(paths.database.parent, "certd-restore", "restore")
            with open(temp, "r+b") as out:
                if encrypted:
                    sealed.unseal(f, out, passphrase)
                else:
                    shutil.copyfileobj(f, out, COPY_CHUNK)
        summary, tokens = _verify(temp, source)
    except sealed.SealError as exc:
        _remove(temp)
        raise BackupError(f"restore: {source}: {exc}: nothing restored") from None
    except OSError as exc:
        _remove(temp)
        raise BackupError(f"restore: {exc.filename or source}: {exc.strerror or exc}: "
                          "nothing restored") from None
    except BaseException:
        _remove(temp)
        raise
    return temp, summary, tokens, encrypted


def _kind(head: bytes, source: Path, passphrase: bytes | None) -> bool:
    """Is the file that starts with `head` an encrypted backup (else a plain one)? Refuses
    anything else, and a passphrase that does not go with it."""
    encrypted = sealed.is_sealed(head)
    if encrypted and passphrase is None:
        raise BackupError(f"restore: {source} is encrypted: give --passphrase-file")
    if not encrypted and head != SQLITE_MAGIC:
        raise BackupError(f"restore: {source} is not a certd backup (neither an encrypted "
                          "backup nor a SQLite database)")
    if not encrypted and passphrase is not None:
        raise BackupError(f"restore: {source} is not encrypted: leave out --passphrase-file")
    return encrypted


def _verify(temp: Path, source: Path) -> tuple[Summary, bytes | None]:
    def refuse(why: str) -> BackupError:
        return BackupError(f"restore: {source}: {why}: nothing restored")

    try:
        db = sqlite3.connect(temp, isolation_level=None)
    except sqlite3.Error as exc:
        raise refuse(f"cannot open it: {exc}") from None
    try:
        check = [row[0] for row in db.execute("PRAGMA integrity_check")]
        if check != ["ok"]:
            raise refuse(f"damaged (SQLite's integrity_check: {one_line(check[0], 200)})")
        try:
            manifest = dict(db.execute(f"SELECT key, value FROM {MANIFEST}"))
        except sqlite3.OperationalError:
            raise refuse("not a certd backup (a SQLite database without certd's manifest)"
                         ) from None
        fmt = _int(manifest.get("format"))
        if fmt > FORMAT:
            raise refuse(f"backup format {fmt} is newer than this certd reads ({FORMAT}): "
                         "upgrade certd")
        if fmt < 1:
            raise refuse("not a certd backup (its manifest names no format)")
        (schema,) = db.execute("PRAGMA user_version").fetchone()
        refused = newer_schema(schema)
        if refused:
            raise refuse(refused)
        if schema < 1:
            raise refuse("holds no certd store (schema 0)")
        summary = Summary(_time(manifest.get("created_at")), _text(manifest.get("certd_version")),
                          schema, _int(manifest.get("certificates")),
                          _int(manifest.get("aliases")), "tokens" in manifest)
        tokens = manifest.get("tokens")
        db.execute("PRAGMA secure_delete=ON")  # the tokens' pages are zeroed, not just freed
        db.execute("BEGIN")
        db.execute(f"DROP TABLE {MANIFEST}")
        db.execute("DELETE FROM leases")  # held by processes of the old store, not of this one
        db.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise refuse(f"damaged or not a SQLite database ({exc})") from None
    finally:
        db.close()
    return summary, bytes(tokens) if tokens is not None else None


async def _open_with_this_certd(temp: Path, source: Path) -> int:
    """Open the staged copy as the daemon will (migrations run forward, the file is checked
    writable), then leave it as one self-contained file. Returns its schema version."""
    store = SqliteStore(temp)
    try:
        await store.open()
    except CertdError as exc:
        raise BackupError(f"restore: {source}: this certd cannot open it ({exc}): "
                          "nothing restored") from None
    await store.close()
    return await asyncio.to_thread(_self_contained, temp)


def _self_contained(path: Path) -> int:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=DELETE")  # the daemon turns WAL on again at open
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def _put_in_place(temp: Path, tokens: bytes | None, paths: StatePaths) -> Path | None:
    """The tokens file first, then the store: each linked, never replacing anything; if the
    store cannot go in, the tokens file put there is taken back."""
    tokens_placed = None
    try:
        _own_like_directory(temp)
        _fsync(temp)
        if tokens is not None and paths.own_tokens:
            paths.tokens_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            staged = _private_file(paths.tokens_file.parent, "api-tokens", "restore")
            try:
                with open(staged, "r+b") as f:
                    f.write(tokens)
                _own_like_directory(staged)
                _fsync(staged)
                _link(staged, paths.tokens_file, replace=False)
            except FileExistsError:
                raise BackupError(f"restore: {paths.tokens_file} appeared while restoring "
                                  "(did certd start?): nothing restored") from None
            finally:
                _remove(staged)
            tokens_placed = paths.tokens_file
            _fsync(paths.tokens_file.parent)
        try:
            _link(temp, paths.database, replace=False)
        except FileExistsError:
            if tokens_placed is not None:
                _remove(tokens_placed)
            raise BackupError(f"restore: a store appeared at {paths.database} while restoring "
                              "(did certd start?): nothing restored") from None
    except OSError as exc:
        if tokens_placed is not None:
            _remove(tokens_placed)
        raise BackupError(f"restore: {exc.filename or paths.database}: "
                          f"{exc.strerror or exc}: nothing restored") from None
    try:
        _fsync(paths.database.parent)
    except OSError as exc:
        raise BackupError(f"restore: {paths.database} is in place, but syncing its directory "
                          f"failed: {exc.strerror or exc}") from None
    return tokens_placed


def _cleanup(temp: Path | None, created: list[Path]) -> None:
    _remove(temp)
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            pass


# --- files -----------------------------------------------------------------------------------

def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _private_file(directory: Path, stem: str, what: str) -> Path:
    """A new empty file, 0600 from its creation, with a hidden temporary name in
    `directory`."""
    path = directory / f".{stem}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
    except OSError as exc:
        raise BackupError(f"{what}: cannot create a file in {directory}: "
                          f"{exc.strerror or exc}") from None
    return path


def _own_like_directory(path: Path) -> None:
    """Run by root, a restored file takes the owner of the directory it goes into: with the
    unit's StateDirectory=, that is the certd user, who must be able to open it."""
    if os.geteuid() != 0:
        return
    directory = os.stat(path.parent)
    os.chown(path, directory.st_uid, directory.st_gid)


def _link(source: Path, target: Path, *, replace: bool) -> None:
    """`source` becomes `target` in one step. Without `replace`, an existing `target` (even
    one appearing at the last moment) raises FileExistsError and stays as it is."""
    if replace:
        os.replace(source, target)
        return
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        # a file system without hard links: check, then rename (a narrow race)
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.rename(source, target)
        return
    os.unlink(source)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path | None) -> None:
    if path is None:
        return
    for leftover in (path, *(Path(f"{path}{s}") for s in ("-journal", "-wal", "-shm"))):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass


def _int(value: bytes | None) -> int:
    try:
        return int(bytes(value or b"0").decode("ascii"))
    except (ValueError, UnicodeDecodeError, TypeError):
        return 0


def _text(value: bytes | None) -> str:
    try:
        return one_line(bytes(value or b"").decode("utf-8"), 40)
    except (UnicodeDecodeError, TypeError):
        return ""


def _time(value: bytes | None) -> datetime | None:
    try:
        return datetime.fromisoformat(_text(value))
    except ValueError:
        return None
