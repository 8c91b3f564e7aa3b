"""The store under contention and failure, with real SQLite files and real processes: another
process holding the write lock, a full disk (a small tmpfs), a read-only state_dir.

The challenge responder must answer while another process holds the write lock, even with a
write of this process queued behind that lock; API writes must fail within seconds as 503
store-unavailable (never a 409, never the file's path) with an ERROR line in the log; and
`certd check-config` / `certd run` must refuse a state_dir they cannot write, in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from certd.api import app as api
from certd.api.tokens import parse
from certd.errors import StoreError
from certd.model import Challenge, Event, utcnow
from certd.responder import build_app
from certd.store.sqlite import SqliteStore
from tests.certd_api import api_client, api_config
from tests.certd_lab import run_certd
from tests.lab.procs import free_port
from tests.stores import opened_store

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"  # RFC 8555 §8.3's example token
KEY_AUTHORIZATION = TOKEN + ".nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"
API_TOKEN = "contention-token-0123456789"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
# generous bounds, far from what is measured (milliseconds for a GET, ~5 s for a refused
# write): they only turn the old behaviour (30 s waits) into a failure instead of a hang
PATIENCE = aiohttp.ClientTimeout(total=20)

# another process: takes the write lock, says so, and keeps it until it is killed
HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def write_lock_held(database: Path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(database)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        holder.stdout.close()


def assert_lock_still_held(holder: subprocess.Popen, database: Path) -> None:
    """The holder lives and the write lock is still taken (a non-waiting BEGIN IMMEDIATE from
    a third connection is refused)."""
    assert holder.poll() is None
    db = sqlite3.connect(database, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            db.execute("BEGIN IMMEDIATE")
    finally:
        db.close()


def challenge(token: str = TOKEN, key_authorization: str = KEY_AUTHORIZATION) -> Challenge:
    return Challenge(token, key_authorization, "portal", "https://ca/authz/1",
                     utcnow() + timedelta(hours=1))


@pytest.fixture
async def store(tmp_path):
    async with opened_store(tmp_path / "certd.db", challenges=[challenge()]) as s:
        yield s


@pytest.fixture
async def responder(store):
    async with TestClient(TestServer(build_app(store), host="127.0.0.1"),
                          timeout=PATIENCE) as c:
        yield c


async def get_challenge(client: TestClient, token: str = TOKEN) -> tuple[int, bytes, float]:
    started = time.monotonic()
    async with client.get(f"/.well-known/acme-challenge/{token}") as resp:
        body = await resp.read()
    return resp.status, body, time.monotonic() - started


# --- the responder never waits on a write lock ------------------------------------------

async def test_challenge_answers_while_another_process_holds_the_write_lock(store, responder):
    with write_lock_held(store.path) as holder:
        status, body, waited = await get_challenge(responder)
        assert (status, body) == (200, KEY_AUTHORIZATION.encode())
        assert_lock_still_held(holder, store.path)
    print(f"challenge GET with the write lock held elsewhere: {waited:.3f} s")


async def test_challenge_answers_while_a_write_of_this_process_waits_for_the_lock(
        store, responder):
    # the case that made a CA wait 29 s: aiosqlite runs a connection's statements one after
    # another on one thread, so a lookup queued behind a waiting write waited with it
    with write_lock_held(store.path) as holder:
        write = asyncio.create_task(store.add_event(Event("test.write", "queued")))
        await asyncio.sleep(0.3)  # the write is now inside SQLite's busy wait
        assert not write.done()
        status, body, waited = await get_challenge(responder)
        assert (status, body) == (200, KEY_AUTHORIZATION.encode())
        assert not write.done()  # answered while the write was still waiting...
        assert_lock_still_held(holder, store.path)  # ...for a lock still held
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    await write  # the lock freed within the busy timeout: the queued write goes through
    assert [e.message for e in await store.events(kind="test.write")] == ["queued"]
    print(f"challenge GET with a write queued behind the lock: {waited:.3f} s")


WRITER = """
import asyncio, sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from certd.model import Challenge
from certd.store.sqlite import SqliteStore

async def main(path, op, token, key_authorization):
    store = SqliteStore(Path(path))
    await store.open()
    try:
        if op == "put":
            await store.put_challenge(Challenge(
                token, key_authorization, "portal", "https://ca/authz/9",
                datetime.now(timezone.utc) + timedelta(hours=1)))
        else:
            await store.delete_challenge(token)
    finally:
        await store.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_challenge_written_by_another_process_is_served_at_once(store, responder):
    # no cache in front of the read connection: what the CLI publishes is answered at once,
    # and what it withdraws is gone at once
    token = "CLIwrittenTOKEN_0123456789abcdef-xyz"
    assert (await get_challenge(responder, token))[0] == 404
    subprocess.run([sys.executable, "-c", WRITER, str(store.path), "put", token, token + ".k"],
                   check=True, timeout=60)
    status, body, _ = await get_challenge(responder, token)
    assert (status, body) == (200, (token + ".k").encode())
    subprocess.run([sys.executable, "-c", WRITER, str(store.path), "delete", token, ""],
                   check=True, timeout=60)
    assert (await get_challenge(responder, token))[0] == 404


# --- API writes fail fast: 503 store-unavailable ------------------------------------------

def assert_store_unavailable(status: int, headers, body: dict, text: str, cfg) -> None:
    assert status == 503, text
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["type"] == "urn:certd:problem:store-unavailable"
    assert int(headers["Retry-After"]) > 0
    for secret in (str(cfg.database_path), str(cfg.state_dir), "certd.db", "sqlite"):
        assert secret not in text


def store_errors_logged(caplog, cfg) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR
            and str(cfg.database_path) in r.getMessage()]


async def test_api_write_with_the_lock_held_elsewhere_is_a_quick_503(tmp_path, caplog):
    cfg = api_config(tmp_path, domains={"default_frontends": ["web"]})
    async with api_client(cfg, parse(f"ops {API_TOKEN}\n", "tokens"),
                          timeout=PATIENCE) as client:
        with write_lock_held(cfg.database_path) as holder:
            # reads go on (WAL): listing answers while the lock is held
            async with client.get("/api/v1/domains", headers=AUTH) as resp:
                assert resp.status == 200
            started = time.monotonic()
            async with client.post("/api/v1/domains", json={"domain": "shop.customer-site.net"},
                                   headers=AUTH) as resp:
                text = await resp.text()
                status, headers, body = resp.status, resp.headers, await resp.json(
                    content_type=None)
            waited = time.monotonic() - started
            assert holder.poll() is None
        assert_store_unavailable(status, headers, body, text, cfg)
        logged = store_errors_logged(caplog, cfg)
        assert logged and "locked" in logged[0].getMessage()
        # nothing was stored: once the lock is free, the same request creates the alias
        async with client.get("/api/v1/domains/shop.customer-site.net", headers=AUTH) as resp:
            assert resp.status == 404
        async with client.post("/api/v1/domains", json={"domain": "shop.customer-site.net"},
                               headers=AUTH) as resp:
            assert resp.status == 202
    print(f"POST with the write lock held elsewhere: {status} after {waited:.2f} s")


# --- a full disk --------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(where: Path, options: str):
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "certd-test", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:  # lazily if something still holds a file there: never leave a mount behind
        if subprocess.run(["umount", str(where)]).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full (ENOSPC)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


async def test_disk_full_is_a_503_with_a_log_line_and_reads_go_on(tmp_path, caplog):
    with tmpfs(tmp_path / "small", "size=4m,mode=0700") as mnt:
        cfg = api_config(mnt, domains={"default_frontends": ["web"]})
        async with api_client(cfg, parse(f"ops {API_TOKEN}\n", "tokens"),
                              timeout=PATIENCE) as client:
            store = client.certd.store
            await store.put_challenge(challenge())
            # an empty WAL, so that the next commit must take new space on the disk
            with contextlib.closing(sqlite3.connect(cfg.database_path)) as db:
                assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            filler = fill(mnt)
            async with client.post("/api/v1/domains", json={"domain": "shop.customer-site.net"},
                                   headers=AUTH) as resp:
                text = await resp.text()
                status, headers, body = resp.status, resp.headers, await resp.json(
                    content_type=None)
            assert_store_unavailable(status, headers, body, text, cfg)
            logged = store_errors_logged(caplog, cfg)
            assert logged and "full" in logged[0].getMessage()
            # the same store still answers reads: the API's, and the challenge responder's
            async with client.get("/api/v1/domains", headers=AUTH) as resp:
                assert resp.status == 200
                assert (await resp.json())["items"] == []
            async with TestClient(TestServer(build_app(store), host="127.0.0.1"),
                                  timeout=PATIENCE) as responder:
                assert (await get_challenge(responder))[:2] == (
                    200, KEY_AUTHORIZATION.encode())
            # and writes again once there is room
            filler.unlink()
            async with client.post("/api/v1/domains", json={"domain": "shop.customer-site.net"},
                                   headers=AUTH) as resp:
                assert resp.status == 202
            for task in list(client.app[api.TASKS]):  # the background order, before umount
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


# --- an unwritable state_dir ----------------------------------------------------------------

async def make_store(state_dir: Path) -> None:
    s = SqliteStore(state_dir / "certd.db")
    await s.open()
    await s.close()


def write_config(path: Path, state_dir: Path) -> Path:
    # free ports, should a `certd run` ever get as far as listening
    path.write_text(f"state_dir: {state_dir}\nchallenge: {{listen: '127.0.0.1:{free_port()}'}}\n"
                    f"api: {{listen: '127.0.0.1:{free_port()}'}}\n")
    return path


def assert_refused(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "config OK" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("certd: ")
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("command", ["check-config", "run"])
async def test_read_only_state_dir_is_refused_in_one_line(tmp_path, command):
    with tmpfs(tmp_path / "ro", "size=4m,mode=0700") as mnt:
        state_dir = mnt / "state"
        state_dir.mkdir()
        await make_store(state_dir)  # an existing store, on a file system now read-only
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        config = write_config(tmp_path / "config.yaml", state_dir)
        assert_refused(run_certd(config, command, timeout=60), 2, str(state_dir), "Read-only file system")


@pytest.mark.parametrize("command, code", [("check-config", 2), ("run", 2), ("status", 1)])
def test_state_dir_that_cannot_be_created_is_refused_in_one_line(tmp_path, command, code):
    (tmp_path / "a-file").write_text("")
    state_dir = tmp_path / "a-file" / "state"
    config = write_config(tmp_path / "config.yaml", state_dir)
    assert_refused(run_certd(config, command, timeout=60), code, str(state_dir))


def test_check_config_passes_a_writable_state_dir_and_leaves_no_probe(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = write_config(tmp_path / "config.yaml", state_dir)
    done = run_certd(config, "check-config", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "config OK" in done.stdout
    assert list(state_dir.iterdir()) == []


@pytest.mark.parametrize("crashed", [False, True], ids=["closed", "crashed"])
async def test_open_refuses_a_database_it_cannot_write(tmp_path, crashed):
    # SQLite opens a read-only file and fails each write later: open() finds out at once.
    # "crashed": the -wal and -shm files of a store left open are there too, and with them
    # SQLite even grants BEGIN IMMEDIATE on a read-only file system
    with tmpfs(tmp_path / "ro", "size=4m,mode=0700") as mnt:
        live = SqliteStore(mnt / "live" / "certd.db")
        await live.open()
        if not crashed:
            await live.close()  # checkpointed: the database file alone holds everything
        (mnt / "copy").mkdir()
        for suffix in ("", "-wal", "-shm") if crashed else ("",):
            shutil.copyfile(f"{live.path}{suffix}", mnt / "copy" / f"certd.db{suffix}")
        await live.close()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        store = SqliteStore(mnt / "copy" / "certd.db")
        try:
            with pytest.raises(StoreError, match="read-only|cannot be opened for writing"):
                await store.open()
        finally:
            await store.close()
