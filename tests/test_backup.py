"""certd/store/backup.py, certd/sealed.py and `certd backup` / `certd restore`: the file
format, encryption, refusals (an existing file, a non-empty state directory, a newer schema),
file modes, and a table of hostile backup files, each refused with nothing restored."""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from certd import cli, sealed
from certd.errors import StoreError
from certd.model import (
    Account,
    Alias,
    CertificateState,
    CertStatus,
    Deployment,
    DeployStatus,
    Event,
)
from certd.store import backup
from certd.store.backup import BackupError, StatePaths
from certd.store.migrations import MIGRATIONS
from certd.store.sqlite import SqliteStore
from tests.lab.procs import stop_process
from tests.test_store import T0, cert

PASSPHRASE = b"correct horse battery staple"
TOKENS = b"ops 0123456789abcdef0123456789\n"
SMALL_CHUNKS = 12  # 4 KiB: a test store spans dozens of chunks


def paths_in(root: Path) -> StatePaths:
    state = root / "state"
    return StatePaths(state, state / "certd.db", state / "api-tokens")


async def populate(paths: StatePaths) -> None:
    """A store with something in every table a restore must bring back, a lease held, and
    certd's own tokens file."""
    store = SqliteStore(paths.database)
    await store.open()
    try:
        await store.save_account(Account("https://ca/dir", "https://ca/acct/1",
                                         "-----ACCOUNT KEY-----\n", T0))
        for i in range(40):  # enough pages for many 4 KiB chunks
            await store.add_certificate(cert(f"c{i}", f"{i:02x}", domains=(f"c{i}.example",)))
            await store.put_state(CertificateState(f"c{i}", CertStatus.DEPLOYED, updated_at=T0))
            await store.put_deployment(Deployment(f"c{i}", "web", "fe1", f"{i:02x}",
                                                  DeployStatus.DEPLOYED, "ok", T0,
                                                  verified_at=T0 if i % 2 else None))
        await store.add_certificate(cert("c0", "ff", issued=T0 + timedelta(days=60)))
        await store.add_alias(Alias("shop.example", ("web",), "ops", T0))
        await store.add_event(Event("issue.ok", "issued", certificate="c0", at=T0))
        await store.acquire_lease("issue:c1", "otherhost:1234:abcd", T0 + timedelta(days=9999),
                                  T0)
    finally:
        await store.close()
    fd = os.open(paths.tokens_file, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, TOKENS)
    os.close(fd)


def rows(database: Path) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: what two stores must share to be the same."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in sorted(tables)}


def user_version(database: Path) -> int:
    with sqlite3.connect(database) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def leftovers(*directories: Path) -> list[str]:
    return [f"{d}/{n}" for d in directories if d.is_dir() for n in os.listdir(d)
            if n.endswith(".tmp") or "-journal" in n]


@pytest.fixture
async def origin(tmp_path) -> StatePaths:
    paths = paths_in(tmp_path / "origin")
    await populate(paths)
    return paths


# --- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("passphrase", [None, PASSPHRASE], ids=["plain", "encrypted"])
async def test_round_trip(origin, tmp_path, passphrase):
    target = tmp_path / "backups" / "certd.backup"
    target.parent.mkdir()
    done = await backup.backup(origin, target, passphrase=passphrase, chunk_log2=SMALL_CHUNKS)
    assert (done.path, done.encrypted, done.size) == (target, bool(passphrase),
                                                      target.stat().st_size)
    assert mode(target) == 0o600
    s = done.summary
    assert (s.schema, s.certificates, s.aliases, s.tokens) == (len(MIGRATIONS), 40, 1, True)
    # the stopped store is as it was: no -wal or -shm made by the copy left behind
    assert sorted(os.listdir(origin.state_dir)) == ["api-tokens", "certd.db"]
    raw = target.read_bytes()
    if passphrase:  # nothing of the content shows
        assert raw.startswith(sealed.MAGIC) and b"SQLite format 3" not in raw
        assert b"KEY" not in raw and TOKENS.strip() not in raw
    else:  # a SQLite database with the manifest
        assert raw.startswith(backup.SQLITE_MAGIC)
        assert b"certd_backup" in raw

    restored = paths_in(tmp_path / "restored")
    result = await backup.restore(target, restored, passphrase=passphrase)
    assert result.summary == s and result.schema == len(MIGRATIONS)
    assert result.tokens_restored == restored.tokens_file
    assert restored.tokens_file.read_bytes() == TOKENS
    assert mode(restored.tokens_file) == mode(restored.database) == 0o600
    before, after = rows(origin.database), rows(restored.database)
    assert before.pop("leases") and after.pop("leases") == []  # leases stay behind
    assert after == before and "certd_backup" not in after
    assert sorted(os.listdir(restored.state_dir)) == ["api-tokens", "certd.db"]
    assert not leftovers(target.parent, origin.state_dir, restored.state_dir)
    store = SqliteStore(restored.database)  # the daemon's own open takes it as it is
    await store.open()
    try:
        assert (await store.get_account("https://ca/dir")).key_pem == "-----ACCOUNT KEY-----\n"
        assert (await store.current_certificate("c0")).serial == "ff"
        # a deployment's verification is a column of its row: copied with it
        assert [d.verified_at for n in ("c0", "c1")
                for d in await store.deployments(n)] == [None, T0]
    finally:
        await store.close()


async def test_a_backup_is_one_moment_while_another_connection_writes(origin, tmp_path):
    """A writer commits an event and a ledger row together, as fast as it can, from its own
    connection (its own lock, as another process would); every backup taken meanwhile holds
    as many of one as of the other, and each holds more than the one before."""
    stop = threading.Event()
    written = []

    def writer() -> None:
        db = sqlite3.connect(origin.database, timeout=5, isolation_level=None)
        try:
            i = 0
            while not stop.is_set():
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO events (at, kind, severity, message, data) "
                           "VALUES (?, 'bench', 'info', 'x', '{}')", (T0.isoformat(),))
                db.execute("INSERT INTO ledger (kind, key, at) VALUES ('bench', ?, ?)",
                           (str(i), T0.isoformat()))
                db.execute("COMMIT")
                i += 1
                written.append(i)
        finally:
            db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    counts = []
    try:
        for n in range(5):
            # bounded: the writer is running when each backup starts
            for _ in range(1000):
                if len(written) > (counts[-1] if counts else 0):
                    break
                await asyncio.sleep(0.005)
            target = tmp_path / f"b{n}"
            await backup.backup(origin, target)
            with sqlite3.connect(target) as db:
                events = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'bench'"
                                    ).fetchone()[0]
                ledger = db.execute("SELECT COUNT(*) FROM ledger WHERE kind = 'bench'"
                                    ).fetchone()[0]
            assert events == ledger
            counts.append(events)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert counts == sorted(counts) and counts[-1] > counts[0]


@pytest.mark.parametrize("passphrase", [None, PASSPHRASE], ids=["plain", "encrypted"])
async def test_every_file_is_0600_from_its_creation(origin, tmp_path, monkeypatch, passphrase):
    """umask 0 (the worst): each file a backup or restore creates, looked at while it is
    being written, is 0600 already."""
    seen: dict[str, int] = {}

    def look() -> None:
        for directory in (tmp_path, origin.state_dir, tmp_path / "restored" / "state"):
            for name in os.listdir(directory) if directory.is_dir() else []:
                path = directory / name
                if path.is_file() and name != "certd.db" and not name.startswith("certd.db-"):
                    seen[str(path)] = mode(path)

    def spy(function):
        def wrapped(*args, **kwargs):
            look()
            try:
                return function(*args, **kwargs)
            finally:
                look()
        return wrapped

    monkeypatch.setattr(backup, "_finish_copy", spy(backup._finish_copy))
    monkeypatch.setattr(sealed, "seal", spy(sealed.seal))
    monkeypatch.setattr(sealed, "unseal", spy(sealed.unseal))
    monkeypatch.setattr(backup, "_verify", spy(backup._verify))
    monkeypatch.setattr(backup, "_link", spy(backup._link))
    old = os.umask(0)
    try:
        await backup.backup(origin, tmp_path / "b", passphrase=passphrase)
        await backup.restore(tmp_path / "b", paths_in(tmp_path / "restored"),
                             passphrase=passphrase)
    finally:
        os.umask(old)
    temps = [p for p in seen if p.endswith(".tmp")]
    assert len(temps) >= (4 if passphrase else 3), seen  # copy (+ sealed), restore, tokens
    assert {p: m for p, m in seen.items() if m != 0o600
            and not p.endswith(("/c.yaml", "/api-tokens"))} == {}
    assert mode(tmp_path / "b") == 0o600
    assert mode(tmp_path / "restored" / "state") == 0o700


# --- refusals ----------------------------------------------------------------------------------

async def test_an_existing_file_is_kept_unless_forced(origin, tmp_path):
    target = tmp_path / "b"
    target.write_bytes(b"yesterday's backup")
    with pytest.raises(BackupError, match=r"b exists: give --force to replace it"):
        await backup.backup(origin, target)
    assert target.read_bytes() == b"yesterday's backup"
    await backup.backup(origin, target, force=True)
    assert target.read_bytes().startswith(backup.SQLITE_MAGIC) and mode(target) == 0o600
    assert not leftovers(tmp_path, origin.state_dir)


@pytest.mark.parametrize("where, message", [
    (lambda p, t: p.database, "is part of the store itself"),
    (lambda p, t: Path(f"{p.database}-wal"), "is part of the store itself"),
    (lambda p, t: p.tokens_file, "is part of the store itself"),
    (lambda p, t: t, "is a directory"),
    (lambda p, t: t / "missing" / "b", "no such directory"),
], ids=["database", "wal", "tokens", "directory", "no-directory"])
async def test_a_target_that_cannot_be_is_refused(origin, tmp_path, where, message):
    before = rows(origin.database)
    with pytest.raises(BackupError, match=message):
        await backup.backup(origin, where(origin, tmp_path), force=True)
    assert rows(origin.database) == before and origin.tokens_file.read_bytes() == TOKENS


async def test_no_store_no_backup(tmp_path):
    with pytest.raises(BackupError, match="no store at .*nothing to back up"):
        await backup.backup(paths_in(tmp_path), tmp_path / "b")
    assert not (tmp_path / "state").exists() and not (tmp_path / "b").exists()


async def test_a_tokens_file_outside_state_dir_is_configuration(origin, tmp_path):
    """Left out of the backup, and a backup holding certd's own is not written outside
    the state directory at restore."""
    elsewhere = StatePaths(origin.state_dir, origin.database, tmp_path / "etc" / "api-tokens")
    done = await backup.backup(elsewhere, tmp_path / "without")
    assert not done.summary.tokens and done.tokens_outside == elsewhere.tokens_file
    with_tokens = tmp_path / "with"
    await backup.backup(origin, with_tokens)
    restored = paths_in(tmp_path / "r")
    restored = StatePaths(restored.state_dir, restored.database, tmp_path / "etc2" / "tokens")
    result = await backup.restore(with_tokens, restored)
    assert result.tokens_restored is None and result.tokens_not_restored == restored.tokens_file
    assert not restored.tokens_file.parent.exists()
    assert os.listdir(restored.state_dir) == ["certd.db"]


@pytest.mark.parametrize("occupant", ["certd.db", "api-tokens", "nodes/", ".hidden"])
async def test_restore_wants_an_empty_state_dir(origin, tmp_path, occupant):
    await backup.backup(origin, tmp_path / "b")
    target = paths_in(tmp_path / "r")
    target.state_dir.mkdir(parents=True)
    path = target.state_dir / occupant.rstrip("/")
    path.mkdir() if occupant.endswith("/") else path.write_bytes(b"running daemon's")
    with pytest.raises(BackupError, match=r"is not empty \(" + occupant.rstrip("/")
                       + r"\): restore goes into an empty one; stop certd"):
        await backup.restore(tmp_path / "b", target)
    assert os.listdir(target.state_dir) == [occupant.rstrip("/")]


def test_restore_names_the_daemon_running_there(origin, tmp_path):
    """The pid file of a live `certd run` on that state_dir (certd/pidfile.py): refused with
    its PID, before anything else is looked at."""
    asyncio.run(backup.backup(origin, tmp_path / "b"))
    target = paths_in(tmp_path / "r")
    target.state_dir.mkdir(parents=True)
    # a process whose command line reads like `certd run`, as the pid file's check wants
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "certd",
                               "run"], start_new_session=True)
    try:
        (target.state_dir / "certd.pid").write_text(f"{daemon.pid}\n")
        with pytest.raises(BackupError, match=rf"certd \(pid {daemon.pid}\) runs on state_dir "
                           r".*: stop it first"):
            asyncio.run(backup.restore(tmp_path / "b", target))
    finally:
        stop_process(daemon)
    assert os.listdir(target.state_dir) == ["certd.pid"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
async def test_restored_as_root_the_files_belong_to_the_state_dir_owner(origin, tmp_path):
    """As systemd's StateDirectory= leaves it: /var/lib/certd owned by certd, restored by
    root; the daemon (user certd) must be able to open what root put there."""
    await backup.backup(origin, tmp_path / "b")
    target = paths_in(tmp_path / "r")
    target.state_dir.mkdir(parents=True, mode=0o700)
    os.chown(target.state_dir, 65534, 65534)
    await backup.restore(tmp_path / "b", target)
    for path in (target.database, target.tokens_file):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (65534, 65534)


async def test_restore_refuses_a_store_outside_state_dir(origin, tmp_path):
    await backup.backup(origin, tmp_path / "b")
    elsewhere = tmp_path / "data" / "certd.db"
    elsewhere.parent.mkdir()
    Path(f"{elsewhere}-wal").write_bytes(b"")
    target = StatePaths(tmp_path / "r", elsewhere, tmp_path / "r" / "api-tokens")
    with pytest.raises(BackupError, match=r"a store exists at .*certd.db-wal: stop certd"):
        await backup.restore(tmp_path / "b", target)
    assert not target.state_dir.exists() and os.listdir(elsewhere.parent) == ["certd.db-wal"]


async def test_a_store_appearing_during_restore_is_never_replaced(origin, tmp_path,
                                                                 monkeypatch):
    """A daemon started meanwhile creates its store: the restore gives up, taking back the
    tokens file it put in, and the daemon's files stay as they are."""
    await backup.backup(origin, tmp_path / "b")
    target = paths_in(tmp_path / "r")
    real = backup._open_with_this_certd

    async def daemon_starts(temp, source):
        schema = await real(temp, source)
        target.database.write_bytes(b"the daemon's")
        return schema

    monkeypatch.setattr(backup, "_open_with_this_certd", daemon_starts)
    with pytest.raises(BackupError, match="a store appeared at .* while restoring"):
        await backup.restore(tmp_path / "b", target)
    assert os.listdir(target.state_dir) == ["certd.db"]
    assert target.database.read_bytes() == b"the daemon's"


# --- schema versions ---------------------------------------------------------------------------

NEWER = (f"store schema {len(MIGRATIONS) + 1} is newer than this certd (knows up to "
         f"{len(MIGRATIONS)}): upgrade certd or restore a backup taken by this version")


async def test_a_newer_store_is_refused_at_open(origin):
    with sqlite3.connect(origin.database) as db:
        db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError) as refused:
        await SqliteStore(origin.database).open()
    assert str(refused.value) == f"sqlite[{origin.database}]: {NEWER}"
    assert user_version(origin.database) == len(MIGRATIONS) + 1  # untouched


async def test_a_newer_backup_is_refused_at_restore(origin, tmp_path):
    await backup.backup(origin, tmp_path / "b")
    with sqlite3.connect(tmp_path / "b") as db:  # as a later certd would have written it
        db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    target = paths_in(tmp_path / "r")
    with pytest.raises(BackupError) as refused:
        await backup.restore(tmp_path / "b", target)
    assert str(refused.value) == f"restore: {tmp_path / 'b'}: {NEWER}: nothing restored"
    assert not target.state_dir.exists()


async def test_an_older_backup_is_migrated_forward(tmp_path):
    """A store from before aliases existed (schema 2): backed up, restored, opened at the
    latest schema with its data."""
    paths = paths_in(tmp_path / "old")
    paths.state_dir.mkdir(parents=True)
    with sqlite3.connect(paths.database) as db:
        for script in MIGRATIONS[:2]:
            for statement in script:
                db.execute(statement)
        db.execute("PRAGMA user_version=2")
        db.execute("INSERT INTO accounts VALUES ('https://ca/dir', 'https://ca/acct/7', "
                   "'-----KEY-----', ?)", (T0.isoformat(),))
    done = await backup.backup(paths, tmp_path / "b")
    assert (done.summary.schema, done.summary.aliases, done.summary.tokens) == (2, 0, False)
    target = paths_in(tmp_path / "r")
    result = await backup.restore(tmp_path / "b", target)
    assert (result.summary.schema, result.schema) == (2, len(MIGRATIONS))
    assert user_version(target.database) == len(MIGRATIONS)
    store = SqliteStore(target.database)
    await store.open()
    try:
        assert (await store.get_account("https://ca/dir")).uri == "https://ca/acct/7"
        await store.add_alias(Alias("new.example", ("web",), "ops"))  # a table from schema 3
    finally:
        await store.close()


# --- hostile files -----------------------------------------------------------------------------

USUAL = "usual"  # the passphrase it was made with (none for a plain one)


@dataclass(frozen=True)
class Hostile:
    name: str
    encrypted: bool  # made from the encrypted backup (else the plain one)
    alter: Callable[[bytes], bytes] | None  # the file's bytes changed
    message: str
    passphrase: bytes | None | str = USUAL
    edit: Callable[[Path], None] | None = None  # or a plain backup changed with SQLite


CHUNK = (1 << SMALL_CHUNKS) + sealed.TAG_SIZE
H = sealed.HEADER_SIZE


def flip(at: int):
    return lambda b: b[:at] + bytes([b[at] ^ 0x01]) + b[at + 1:]


def put(at: int, value: int):
    return lambda b: b[:at] + bytes([value]) + b[at + 1:]


def swap_chunks(b: bytes) -> bytes:
    return b[:H] + b[H + CHUNK:H + 2 * CHUNK] + b[H:H + CHUNK] + b[H + 2 * CHUNK:]


def manifest_format(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE certd_backup SET value = CAST('2' AS BLOB) WHERE key = 'format'")


def no_manifest(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE certd_backup")


HOSTILE = [
    Hostile("wrong passphrase", True, lambda b: b, "wrong passphrase, or the file's header was "
            "altered", passphrase=b"not the passphrase"),
    Hostile("format version raised", True, put(8, 2), "encrypted with format version 2; this "
            "certd reads version 1: upgrade certd"),
    Hostile("unknown key derivation", True, put(9, 7), "unknown key derivation 7"),
    Hostile("scrypt cost raised to 2^40", True, put(10, 40), r"scrypt parameters out of bounds "
            r"\(N=2\^40, r=8, p=1\)"),
    Hostile("chunk size 2^40", True, put(13, 40), r"chunk size 2\^40 out of bounds"),
    Hostile("salt altered", True, flip(20), "wrong passphrase, or the file's header was altered"),
    Hostile("header MAC altered", True, flip(H - 1), "wrong passphrase, or the file's header"),
    Hostile("cut inside the header", True, lambda b: b[:30], "truncated: the file ends inside "
            "its header"),
    Hostile("header only", True, lambda b: b[:H], r"chunk 0 \(at byte 62\) fails auth"),
    Hostile("a middle chunk altered", True, flip(H + CHUNK + CHUNK // 2), r"damaged, altered or "
            r"cut short: chunk 1 \(at byte 4174\) fails authentication"),
    Hostile("last tag altered", True, lambda b: flip(len(b) - 1)(b), "damaged, altered or cut "
            "short: chunk"),
    Hostile("cut at a chunk boundary", True, lambda b: b[:H + 3 * CHUNK], "truncated: the file "
            "ends after chunk 2, before its last chunk"),
    Hostile("cut inside a chunk", True, lambda b: b[:H + 3 * CHUNK + 100], "damaged, altered or "
            "cut short: chunk 3 "),
    Hostile("garbage appended", True, lambda b: b + b"\0" * 100, "fails authentication"),
    Hostile("a whole chunk appended", True, lambda b: b + b[H:H + CHUNK], "fails authentication"),
    Hostile("two chunks swapped", True, swap_chunks, r"chunk 0 \(at byte 62\) fails auth"),
    Hostile("a chunk dropped", True, lambda b: b[:H] + b[H + CHUNK:], "chunk 0 .* fails auth"),
    Hostile("no passphrase given", True, lambda b: b, "is encrypted: give --passphrase-file",
            passphrase=None),
    Hostile("empty file", False, lambda b: b"", "is not a certd backup"),
    Hostile("random bytes", False, lambda b: os.urandom(5000), "is not a certd backup"),
    Hostile("a passphrase for a plain one", False, lambda b: b, "is not encrypted: leave out "
            "--passphrase-file", passphrase=PASSPHRASE),
    Hostile("plain, cut in half", False, lambda b: b[:len(b) // 2], "damaged"),
    Hostile("plain, pages overwritten", False,
            lambda b: b[:8192] + b"\xff" * 8192 + b[16384:], "damaged"),
    Hostile("plain, SQLite header only", False, lambda b: b[:100], "damaged"),
    Hostile("plain, certd's manifest removed", False, None,
            r"not a certd backup \(a SQLite database without certd's manifest\)",
            edit=no_manifest),
    Hostile("plain, a later backup format", False, None,
            r"backup format 2 is newer than this certd reads \(1\): upgrade certd",
            edit=manifest_format),
]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[bool, bytes]:
    """One plain and one encrypted backup (4 KiB chunks) of a populated store."""

    root = tmp_path_factory.mktemp("made")
    paths = paths_in(root)

    async def make() -> dict[bool, bytes]:
        await populate(paths)
        await backup.backup(paths, root / "plain")
        await backup.backup(paths, root / "sealed", passphrase=PASSPHRASE,
                            chunk_log2=SMALL_CHUNKS)
        return {False: (root / "plain").read_bytes(), True: (root / "sealed").read_bytes()}

    return asyncio.run(make())


@pytest.mark.parametrize("case", HOSTILE, ids=[h.name for h in HOSTILE])
async def test_a_hostile_backup_restores_nothing(made, tmp_path, case):
    source = tmp_path / "hostile"
    source.write_bytes((case.alter or (lambda b: b))(made[case.encrypted]))
    if case.edit:
        case.edit(source)
    passphrase = case.passphrase
    if passphrase == USUAL:
        passphrase = PASSPHRASE if case.encrypted else None
    target = paths_in(tmp_path / "r")
    with pytest.raises(BackupError, match=case.message) as refused:
        await backup.restore(source, target, passphrase=passphrase)
    assert str(refused.value).startswith(f"restore: {source}")
    assert not target.state_dir.exists()  # created for the restore, removed with it
    assert not leftovers(tmp_path)


def test_sealing_round_trips_every_size(tmp_path):
    """Empty, under one chunk, exactly one, one and a bit, several: the same bytes back."""

    for size in (0, 1, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 5):
        content = os.urandom(size)
        out = io.BytesIO()
        sealed.seal(io.BytesIO(content), out, b"passphrase", chunk_log2=SMALL_CHUNKS)
        back = io.BytesIO()
        sealed.unseal(io.BytesIO(out.getvalue()), back, b"passphrase")
        assert back.getvalue() == content, size
        chunks = max(1, -(-size // 4096))
        assert len(out.getvalue()) == H + size + chunks * sealed.TAG_SIZE


# --- the CLI -----------------------------------------------------------------------------------

def write_cli_config(root: Path) -> Path:
    config = root / "c.yaml"
    root.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({
        "state_dir": str(root / "state"),
        "acme": {"directory": "https://127.0.0.1:9/dir"},
        "frontends": {"web": {"nodes": [{"name": "fe1", "address": "127.0.0.2"}],
                              "deployer": {"type": "file", "path": str(root / "n/{node}")}}},
        "certificates": [{"name": f"c{i}", "domains": [f"c{i}.example"], "frontends": ["web"]}
                         for i in range(3)],
    }))
    return config


async def test_cli_backup_and_restore(origin, tmp_path, capsys):
    config = write_cli_config(origin.state_dir.parent)
    passphrase_file = tmp_path / "pass"
    passphrase_file.write_bytes(PASSPHRASE + b"\n")  # one trailing newline is not part of it

    def certd(*args: str) -> tuple[int, str, str]:
        code = cli.main(["-c", str(config), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = await asyncio.to_thread(certd, "backup", str(tmp_path / "b"),
                                             "--passphrase-file", str(passphrase_file))
    assert code == 0, err
    assert out.startswith(f"backup {tmp_path / 'b'}: ") and "encrypted, store schema" in out
    assert "40 certificates, 1 aliases, API tokens included" in out
    code, out, err = await asyncio.to_thread(certd, "backup", str(tmp_path / "b"))
    assert code == 1 and "exists: give --force to replace it" in err

    # the same passphrase without its newline opens it
    passphrase_file.write_bytes(PASSPHRASE)
    config = write_cli_config(tmp_path / "elsewhere")
    code, out, err = await asyncio.to_thread(certd, "restore", str(tmp_path / "b"),
                                             "--passphrase-file", str(passphrase_file))
    assert code == 0, err
    assert f"into {tmp_path / 'elsewhere' / 'state' / 'certd.db'}: 40 certificates" in out
    assert "API tokens into" in out
    code, out, err = await asyncio.to_thread(certd, "restore", str(tmp_path / "b"),
                                             "--passphrase-file", str(passphrase_file))
    assert code == 1 and "is not empty (api-tokens, certd.db)" in err
    code, out, err = await asyncio.to_thread(certd, "status", "--json")
    assert code == 0 and '"serial": "ff"' in out


@pytest.mark.parametrize("content, message", [
    (b"", "0 bytes; use at least 8"),
    (b"short\n", "5 bytes; use at least 8"),
])
def test_cli_refuses_a_weak_passphrase_file(tmp_path, capsys, content, message):
    config = write_cli_config(tmp_path)
    (tmp_path / "pass").write_bytes(content)
    code = cli.main(["-c", str(config), "backup", str(tmp_path / "b"),
                     "--passphrase-file", str(tmp_path / "pass")])
    assert code == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args", [["--passphrase", "s3cret-passphrase"],
                                  ["--passphrase=s3cret-passphrase"]])
@pytest.mark.parametrize("command", ["backup", "restore"])
def test_cli_takes_no_passphrase_on_the_command_line(tmp_path, capsys, command, args):
    """Refused without repeating it (argparse would otherwise take `--passphrase` for an
    abbreviation of `--passphrase-file`, and quote the value as a missing file's name)."""
    config = write_cli_config(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.main(["-c", str(config), command, str(tmp_path / "b"), *args])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "s3cret" not in err
    assert "a passphrase is never taken on the command line" in err
