"""Private keys encrypted at rest (certd/store/sealing.py, `storage_key_file:`): the key file,
the sealed format, and every backend of tests/stores.py (the plain entries: each test chooses
its key files) — round trips, nothing readable at rest, rows that cannot be swapped, clear
errors for a wrong or missing key, rotation, and a backup that stays sealed."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from pathlib import Path

import pytest

from certd.config import Config
from certd.errors import ConfigError
from certd.model import Account, Order
from certd.store import backup, make_store
from certd.store.memory import MemoryStore
from certd.store.sealing import (
    CERTIFICATES,
    ORDERS,
    PREFIX,
    KeyRing,
    Sealer,
    UnsealError,
    sealed_key_id,
)
from certd.store.sqlite import SqliteStore
from tests.stores import BACKENDS, SERVER_BACKENDS, opened
from tests.test_backup import paths_in
from tests.test_store_contract import T0, cert, pem_body


def key(seed: int) -> str:
    return base64.b64encode(bytes((seed + i) % 256 for i in range(32))).decode()


K1 = KeyRing.parse(f"k1 {key(0)}\n")
K2_K1 = KeyRing.parse(f"k2 {key(100)}\nk1 {key(0)}\n")
K2 = KeyRing.parse(f"k2 {key(100)}\n")
K1_OTHER = KeyRing.parse(f"k1 {key(7)}\n")  # same id, another key


def pem(body: str) -> str:
    return f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"


# ------------------------------------------------------------------------ the key file

def test_key_file_lines():
    text = f"# certd keys\n\nk2 {key(1)}\n  k1   {key(2)}  \n"
    keys = KeyRing.parse(text)
    assert keys.ids == ("k2", "k1") and keys.primary == "k2"
    assert key(1) not in repr(keys) and "k2" in repr(keys)


@pytest.mark.parametrize("text, problem", [
    ("", "holds no key"),
    ("# only a comment\n\n", "holds no key"),
    ("k1\n", "line 1: expected 'ID BASE64KEY'"),
    (f"k1 {key(1)} extra\n", "line 1: expected 'ID BASE64KEY'"),
    ("k1 not*base64!\n", "line 1: key k1: not valid base64"),
    ("k1 QUJD=A==\n", "line 1: key k1: not valid base64"),
    (f"k1 {base64.b64encode(bytes(16)).decode()}\n",
     "line 1: key k1: must be 32 bytes (AES-256), not 16"),
    (f"k1 {key(1)}\nk1 {key(2)}\n", "line 2: key id k1 appears twice"),
    (f"bad/id {key(1)}\n", "line 1: key id must be 1-32 of A-Za-z0-9._-"),
    (f"{'x' * 33} {key(1)}\n", "line 1: key id must be 1-32"),
])
def test_hostile_key_files_are_config_errors(text, problem):
    with pytest.raises(ConfigError) as caught:
        KeyRing.parse(text)
    assert any(problem in p for p in caught.value.problems), caught.value.problems
    for secret in (key(1), key(2)):
        assert secret not in str(caught.value)


@pytest.mark.parametrize("content, problem", [
    (b"\xff\xfe k1", "not UTF-8"),
    (b"#" * (65 << 10), "larger than 64 KiB"),
    (None, "cannot read it"),
])
def test_unreadable_key_files_are_config_errors(tmp_path, content, problem):
    path = tmp_path / "keys"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        KeyRing.load(path)
    assert problem in str(caught.value) and caught.value.source == str(path)


def test_make_store_reads_the_key_file_and_refuses_a_bad_one(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"k1 {key(1)}\n")
    store = make_store(Config(state_dir=tmp_path, storage_key_file=path))
    assert isinstance(store, SqliteStore) and store.sealer.keyring.ids == ("k1",)
    assert make_store(Config(state_dir=tmp_path)).sealer.keyring is None
    path.write_text("k1 short\n")
    with pytest.raises(ConfigError, match="storage_key_file: line 1"):
        make_store(Config(state_dir=tmp_path, storage_key_file=path))


def test_postgresql_without_a_key_file_warns(tmp_path, caplog):
    make_store(Config(state_dir=tmp_path, storage="postgresql://certd@db.example/certd"))
    assert "storage_key_file" in caplog.text and "unencrypted" in caplog.text


def test_check_config_names_the_sealing_key(tmp_path, capsys):
    from certd.cli import EXIT_CONFIG, cmd_check_config

    path = tmp_path / "keys"
    path.write_text(f"k2 {key(1)}\nk1 {key(2)}\n")
    args = type("Args", (), {"config": tmp_path / "certd.yaml"})()
    assert cmd_check_config(Config(state_dir=tmp_path / "s", storage_key_file=path), args) == 0
    assert "sealed with key k2 (keys k2, k1)" in capsys.readouterr().out
    path.write_text("k1 x\n")
    assert cmd_check_config(Config(state_dir=tmp_path / "s", storage_key_file=path),
                            args) == EXIT_CONFIG
    assert "line 1" in capsys.readouterr().err


# ------------------------------------------------------------------ the sealed format

def test_seal_unseal_and_what_passes_through():
    sealer = Sealer(K1, "test")
    plain = pem(pem_body())
    sealed = sealer.seal(plain, CERTIFICATES, ("portal", "0a"))
    assert sealed.startswith(f"{PREFIX}k1:") and sealed_key_id(sealed) == "k1"
    assert plain not in sealed
    assert sealer.unseal(sealed, CERTIFICATES, ("portal", "0a")) == plain
    assert sealer.seal(plain, CERTIFICATES, ("portal", "0a")) != sealed  # a fresh nonce
    for value in ("", None):  # a wiped key, an order's forgotten one
        assert sealer.seal(value, ORDERS, ("u",)) == value
        assert sealer.unseal(value, ORDERS, ("u",)) == value
    assert sealer.unseal(plain, CERTIFICATES, ("portal", "0a")) == plain  # older plain rows


@pytest.mark.parametrize("change", ["other row", "other table", "relabelled", "tampered",
                                    "truncated"])
def test_a_moved_or_altered_value_fails(change):
    sealer = Sealer(K2_K1, "sqlite[x]")
    sealed = sealer.seal(pem(pem_body()), CERTIFICATES, ("portal", "0a"))
    column, row = CERTIFICATES, ("portal", "0a")
    if change == "other row":
        row = ("portal", "0b")
    elif change == "other table":
        column, row = ORDERS, ("portal",)
    elif change == "relabelled":
        sealed = sealed.replace(":k2:", ":k1:", 1)
    elif change == "tampered":
        blob = bytearray(base64.b64decode(sealed.split(":", 2)[2]))
        blob[-1] ^= 1
        sealed = f"{PREFIX}k2:{base64.b64encode(bytes(blob)).decode()}"
    else:
        sealed = sealed[:len(PREFIX) + 10]
    with pytest.raises(UnsealError, match="cannot decrypt .* wrong key, or the value was "
                                          "altered or moved from another row"):
        sealer.unseal(sealed, column, row)


def test_missing_keys_are_named():
    sealed = Sealer(K1, "x").seal("secret", CERTIFICATES, ("portal", "0a"))
    with pytest.raises(UnsealError) as caught:
        Sealer(K2, "sqlite[/db]").unseal(sealed, CERTIFICATES, ("portal", "0a"))
    assert str(caught.value) == (
        "sqlite[/db]: certificates row for portal (serial 0a) is encrypted with key id k1, "
        "which is not in storage_key_file (k2)")
    with pytest.raises(UnsealError, match="encrypted \\(key id k1\\) and no storage_key_file "
                                          "is configured"):
        Sealer(None, "x").unseal(sealed, CERTIFICATES, ("portal", "0a"))


# ------------------------------------------------------------------- every backend

PLAIN_BACKENDS = [pytest.param(name, marks=[pytest.mark.lab] if name in SERVER_BACKENDS
                               else []) for name in BACKENDS if "+" not in name]


@pytest.fixture(params=PLAIN_BACKENDS)
async def backend(request):
    async with BACKENDS[request.param](request) as opener:
        yield opener


async def write_everything(store, body: str):
    """A key of each kind, each with `body` in its PEM."""
    await store.save_account(Account("https://ca/dir", "https://ca/acct/1", pem("A" + body), T0))
    await store.add_certificate(replace(cert("portal", "0a"), key_pem=pem("B" + body)))
    await store.add_certificate(replace(cert("portal", "0b", issued=T0.replace(day=2)),
                                        key_pem=pem("C" + body)))
    await store.add_certificate(replace(cert("shop", "1a"), key_pem=pem("D" + body)))
    await store.save_order(Order("portal", "https://ca/order/9", "processing", T0,
                                 domains=("a.example",), key_pem=pem("E" + body)))


async def read_everything(store, body: str):
    assert (await store.get_account("https://ca/dir")).key_pem == pem("A" + body)
    assert (await store.current_certificate("portal")).key_pem == pem("C" + body)
    assert [c.key_pem for c in await store.certificate_history("portal")] == [
        pem("B" + body), pem("C" + body)]
    assert (await store.current_certificate("shop")).key_pem == pem("D" + body)
    assert [o.key_pem for o in await store.orders("portal")] == [pem("E" + body)]
    assert [o.key_pem for o in await store.unfinished_orders()] == [pem("E" + body)]


def prefixes(raw: bytes) -> set[str]:
    """The key ids of the sealed values in `raw`."""
    out, at = set(), 0
    marker = PREFIX.encode()
    while (at := raw.find(marker, at)) >= 0:
        at += len(marker)
        out.add(raw[at:raw.index(b":", at)].decode())
    return out


async def test_round_trip_and_nothing_readable_at_rest(backend):
    body = pem_body()
    async with backend(keyring=K1) as store:
        await write_everything(store, body)
        await read_everything(store, body)
    async with backend(keyring=K1) as other:  # another handle, as another instance
        await read_everything(other, body)
    raw = await backend.at_rest()
    assert body[:40].encode() not in raw and b"PRIVATE KEY" not in raw
    assert prefixes(raw) == {"k1"}


async def test_plain_rows_are_read_and_sealed_at_the_next_open(backend):
    body = pem_body()
    async with backend() as store:  # no key file: as before this feature
        await write_everything(store, body)
    assert body[:40].encode() in await backend.at_rest()
    async with backend(keyring=K1) as store:
        await read_everything(store, body)
        # key retention keeps working on sealed rows (issue 10)
        assert await store.wipe_keys(superseded_before=T0.replace(day=3)) == 1
        assert [c.key_pem for c in await store.certificate_history("portal")] == [
            "", pem("C" + body)]
        assert await store.destroy_keys("shop") == 1
        assert await store.current_certificate("shop") is None
    raw = await backend.at_rest()
    assert body[:40].encode() not in raw and b"PRIVATE KEY" not in raw


async def test_wrong_or_missing_key_is_a_clear_error(backend):
    body = pem_body()
    async with backend(keyring=K1) as store:
        await write_everything(store, body)
    async with backend() as store:  # the key file left out of the config
        with pytest.raises(UnsealError, match="certificates row for portal \\(serial 0b\\) is "
                                              "encrypted \\(key id k1\\) and no "
                                              "storage_key_file is configured"):
            await store.current_certificate("portal")
    async with backend(keyring=K1_OTHER) as store:  # the right id, the wrong key
        with pytest.raises(UnsealError, match="cannot decrypt accounts row for https://ca/dir "
                                              "with key id k1: wrong key"):
            await store.get_account("https://ca/dir")
    with pytest.raises(UnsealError, match="key id k1, which is not in storage_key_file "
                                          "\\(k2\\)") as caught:
        async with backend(keyring=K2):  # the old key removed too early: refused at open
            pass
    assert body[:40] not in str(caught.value) and key(0) not in str(caught.value)


async def test_rotation(backend):
    body = pem_body()
    async with backend(keyring=K1) as store:
        await write_everything(store, body)
    # step 1 (every instance): the new key as a second line: still sealing with k1
    async with backend(keyring=KeyRing.parse(f"k1 {key(0)}\nk2 {key(100)}\n")) as store:
        await read_everything(store, body)
    assert prefixes(await backend.at_rest()) == {"k1"}
    # step 2: the new key first: the open re-seals everything under it
    async with backend(keyring=K2_K1) as store:
        await read_everything(store, body)
    assert prefixes(await backend.at_rest()) == {"k2"}
    # step 3: the old key removed: everything still readable
    async with backend(keyring=K2) as store:
        await read_everything(store, body)
        await store.add_certificate(replace(cert("portal", "0c", issued=T0.replace(day=3)),
                                            key_pem=pem("F" + body)))
        assert (await store.current_certificate("portal")).key_pem == pem("F" + body)
    with pytest.raises(UnsealError, match="key id k2, which is not in storage_key_file"):
        async with backend(keyring=K1):
            pass


async def test_a_ciphertext_swapped_between_rows_fails(backend):
    body = pem_body()
    async with backend(keyring=K1) as store:
        await write_everything(store, body)
        await swap_certificate_keys(store, ("portal", "0b"), ("shop", "1a"))
        for name, serial in (("portal", "0b"), ("shop", "1a")):
            with pytest.raises(UnsealError, match=f"cannot decrypt certificates row for "
                                                  f"{name} \\(serial {serial}\\)"):
                await store.current_certificate(name)


async def swap_certificate_keys(store, a: tuple[str, str], b: tuple[str, str]) -> None:
    """What someone with write access to the database could do: exchange two rows'
    sealed keys."""
    if isinstance(store, MemoryStore):
        found = {(c.name, c.serial): (history, i) for history in store.data.certificates.values()
                 for i, c in enumerate(history)}
        (ha, ia), (hb, ib) = found[a], found[b]
        ha[ia], hb[ib] = (replace(ha[ia], key_pem=hb[ib].key_pem),
                          replace(hb[ib], key_pem=ha[ia].key_pem))
        return
    sql = ("UPDATE certificates SET key_pem = (SELECT key_pem FROM certificates o "
           "WHERE o.name = {3} AND o.serial = {4}) WHERE name = {1} AND serial = {2}")
    if isinstance(store, SqliteStore):
        old = await store._all("SELECT key_pem FROM certificates WHERE name = ? AND serial = ?",
                               a)
        await store._exec(sql.format(*"?????"), (*b, *a))  # '?' binds in textual order
        await store._exec("UPDATE certificates SET key_pem = ? WHERE name = ? AND serial = ?",
                          (old[0][0], *b))
    else:
        old = await store._all("SELECT key_pem FROM certificates WHERE name = $1 "
                               "AND serial = $2", *a)
        await store._exec(sql.format("", "$1", "$2", "$3", "$4"), *a, *b)
        await store._exec("UPDATE certificates SET key_pem = $1 WHERE name = $2 "
                          "AND serial = $3", old[0][0], *b)


# ------------------------------------------------------------------- backup, restore

async def test_a_backup_of_a_sealed_store_stays_sealed(tmp_path):
    body = pem_body()
    origin, restored = paths_in(tmp_path / "a"), paths_in(tmp_path / "b")
    async with opened(SqliteStore(origin.database, keyring=K1)) as store:
        await write_everything(store, body)
    target = tmp_path / "backup.db"
    await backup.backup(origin, target)
    assert body[:40].encode() not in target.read_bytes()
    os.makedirs(restored.state_dir, mode=0o700)
    await backup.restore(target, restored)  # opened without the key file: rows as they are
    async with opened(SqliteStore(restored.database, keyring=K1)) as store:
        await read_everything(store, body)
    assert body[:40].encode() not in Path(restored.database).read_bytes()


# ------------------------------------------------------------------- end to end (lab)

@pytest.mark.lab
async def test_issued_through_pebble_with_sealed_keys(lab, tmp_path):
    """A real issuance and deploy with `storage_key_file`: the nodes get the key that
    matches their certificate; the database file holds no private key; after a restart,
    a forced renewal reads the sealed account key back and uses the same account."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from certd.app import challenge_listener, open_certd
    from certd.config import parse
    from tests.certd_lab import lab_config_data

    keys = tmp_path / "storage-keys"
    keys.write_text(f"k1 {key(0)}\n")
    lab.set_sites({"sealed": ["sealed.test"]})
    data = lab_config_data(lab, tmp_path / "state", [
        {"name": "sealed", "domains": ["sealed.test"], "frontends": ["web"]}], lab.pebble)
    cfg = parse({**data, "storage_key_file": str(keys)})
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        issued = await certd.renew("sealed")
        results = await certd.deploy("sealed")
        assert [r.ok for r in results] == [True] * len(results), [r.message for r in results]
        account = await certd.store.get_account(cfg.acme.directory)
    assert "PRIVATE KEY" in issued.key_pem and "PRIVATE KEY" in account.key_pem
    public = x509.load_pem_x509_certificate(issued.cert_pem.encode()).public_key()
    for node in lab.nodes:
        deployed = (lab.cert_dir(node.name, "sealed") / "privkey.pem").read_bytes()
        key_on_node = serialization.load_pem_private_key(deployed, None)
        assert key_on_node.public_key() == public
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):  # a restart
        again = await certd.renew("sealed", force=True)  # the sealed account key, read back
        assert again.serial != issued.serial
        assert (await certd.store.get_account(cfg.acme.directory)).uri == account.uri
    raw = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("certd.db*"))
    assert b"PRIVATE KEY" not in raw and b"certd-kek1:k1:" in raw


def test_a_key_file_others_can_read_is_warned_about(tmp_path, caplog):
    path = tmp_path / "keys"
    path.write_text(f"k1 {key(1)}\n")
    path.chmod(0o600)
    KeyRing.load(path)
    assert "readable by other users" not in caplog.text
    path.chmod(0o644)
    assert KeyRing.load(path).ids == ("k1",)
    assert "readable by other users" in caplog.text and key(1) not in caplog.text
