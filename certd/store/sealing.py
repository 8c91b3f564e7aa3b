"""Private keys encrypted at rest in the store (`storage_key_file:`), for every backend.

The key file holds one or more key-encryption keys (KEKs), one a line: `ID BASE64KEY`, where
ID is 1-32 of `A-Za-z0-9._-` and the key is 32 random bytes in standard base64 (make one with
`printf 'k1 %s\\n' "$(head -c 32 /dev/urandom | base64)"`). Blank lines and `#` comments are
allowed. The first key seals (encrypts) every key the store writes; every key in the file
unseals (decrypts). Rotation: add the new key as a second line on every instance and reload;
move it first and restart; each store's open re-seals every key column under the first key
(`reseal`); then the old line can go.

A sealed column holds `certd-kek1:ID:BASE64(nonce || AES-256-GCM ciphertext || tag)`, with a
random 96-bit nonce and associated data naming the table, the column, the key id and the
row's identity (a certificate's name and serial, an order's URL, an account's directory), so
a ciphertext moved to another row, or relabelled with another key id, fails to decrypt.
Empty ('' — a wiped key) and NULL pass through as they are, so the stores' key-retention
queries work unchanged; a plain PEM (written before a key file was configured, or by a store
without one) is still read, and re-sealed at the next open with a key file.

Nothing here logs or repeats key material: errors name the key id, the table and the row.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from certd.errors import ConfigError, StoreError
from certd.model import Account, IssuedCertificate, Order

PREFIX = "certd-kek1:"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
MAX_KEYS = 16
MAX_FILE_BYTES = 64 << 10
log = logging.getLogger(__name__)

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
RESEAL_BATCH = 500  # rows re-sealed per transaction at open


class UnsealError(StoreError):
    """A sealed column cannot be decrypted: its key is not in the key file, the key is
    wrong, or the value was altered or moved from another row."""


@dataclass(frozen=True)
class KeyRing:
    """The KEKs of a key file, the sealing one first. `repr` shows the ids only."""

    ids: tuple[str, ...]
    _keys: dict[str, bytes]
    source: str = "storage_key_file"

    def __repr__(self) -> str:
        return f"KeyRing(ids={self.ids!r}, source={self.source!r})"

    @property
    def primary(self) -> str:
        return self.ids[0]

    def cipher(self, key_id: str) -> AESGCM | None:
        key = self._keys.get(key_id)
        return None if key is None else AESGCM(key)

    @classmethod
    def parse(cls, text: str, source: str = "storage_key_file") -> KeyRing:
        """ConfigError (naming the line, never its key) unless `text` is a valid key file."""
        problems: list[str] = []
        keys: dict[str, bytes] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 2:
                problems.append(f"line {number}: expected 'ID BASE64KEY' (two fields)")
                continue
            key_id, encoded = fields
            if not _KEY_ID.fullmatch(key_id):
                problems.append(f"line {number}: key id must be 1-32 of A-Za-z0-9._-")
                continue
            if key_id in keys:
                problems.append(f"line {number}: key id {key_id} appears twice")
                continue
            try:
                if not _B64.fullmatch(encoded):
                    raise binascii.Error
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                problems.append(f"line {number}: key {key_id}: not valid base64")
                continue
            if len(key) != KEY_BYTES:
                problems.append(f"line {number}: key {key_id}: must be {KEY_BYTES} bytes "
                                f"(AES-256), not {len(key)}")
                continue
            keys[key_id] = key
        if not keys and not problems:
            problems.append("holds no key: one 'ID BASE64KEY' line at least")
        if len(keys) > MAX_KEYS:
            problems.append(f"holds {len(keys)} keys: at most {MAX_KEYS}")
        if problems:
            raise ConfigError(source, [f"storage_key_file: {p}" for p in problems])
        return cls(tuple(keys), keys, source)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """The key file at `path` (ConfigError if it cannot be read or is not valid)."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
                if os.fstat(f.fileno()).st_mode & 0o077:
                    log.warning("storage_key_file %s is readable by other users than its "
                                "owner: chmod 600 it (or use a systemd credential)", path)
            if len(data) > MAX_FILE_BYTES:
                too_big = f"larger than {MAX_FILE_BYTES >> 10} KiB: not a key file"
                raise ConfigError(str(path), [f"storage_key_file: {too_big}"])
            text = data.decode("utf-8")
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(str(path), [f"storage_key_file: cannot read it: {reason}"]
                              ) from None
        except UnicodeDecodeError:
            raise ConfigError(str(path), ["storage_key_file: not UTF-8 text"]) from None
        return cls.parse(text, str(path))


def sealed_key_id(value: str | None) -> str | None:
    """The key id a sealed value names (None for a plain, empty or NULL value)."""
    if not value or not value.startswith(PREFIX):
        return None
    return value[len(PREFIX):].partition(":")[0]


@dataclass(frozen=True)
class SealedColumn:
    """A `key_pem` column: its table, primary key, and the columns that name its row."""

    table: str
    key: str
    binds: tuple[str, ...]


CERTIFICATES = SealedColumn("certificates", "id", ("name", "serial"))
ORDERS = SealedColumn("orders", "url", ("url",))
ACCOUNTS = SealedColumn("accounts", "directory", ("directory",))
SEALED_COLUMNS = (CERTIFICATES, ORDERS, ACCOUNTS)


def _aad(column: SealedColumn, row: Sequence[str], key_id: str) -> bytes:
    parts = ["certd-kek1", column.table, "key_pem", key_id, *row]
    return "\x00".join(parts).encode("utf-8", "surrogatepass")


def _what(column: SealedColumn, row: Sequence[str]) -> str:
    if column is CERTIFICATES:
        return f"certificates row for {row[0]} (serial {row[1]})"
    return f"{column.table} row for {row[0]}"


class Sealer:
    """Seals and unseals the key columns of one store; `keyring` None: writes stay plain,
    and a sealed value read raises UnsealError (no key file)."""

    def __init__(self, keyring: KeyRing | None, store: str):
        self.keyring = keyring
        self.store = store  # for errors: 'sqlite[/var/lib/certd/certd.db]'

    @property
    def current_prefix(self) -> str | None:
        """What every value sealed under the sealing key starts with (None: no key file)."""
        return None if self.keyring is None else f"{PREFIX}{self.keyring.primary}:"

    def seal(self, plain: str | None, column: SealedColumn, row: Sequence[str]) -> str | None:
        if not plain or self.keyring is None or plain.startswith(PREFIX):
            return plain
        key_id = self.keyring.primary
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.keyring.cipher(key_id).encrypt(
            nonce, plain.encode("utf-8"), _aad(column, row, key_id))
        return f"{PREFIX}{key_id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def unseal(self, stored: str | None, column: SealedColumn, row: Sequence[str]
               ) -> str | None:
        key_id = sealed_key_id(stored)
        if key_id is None:
            return stored  # '', NULL, or a plain PEM of before the key file
        what = _what(column, row)
        if self.keyring is None:
            raise UnsealError(f"{self.store}: {what} is encrypted (key id {key_id}) and no "
                              "storage_key_file is configured")
        cipher = self.keyring.cipher(key_id)
        if cipher is None:
            raise UnsealError(f"{self.store}: {what} is encrypted with key id {key_id}, which "
                              f"is not in storage_key_file ({', '.join(self.keyring.ids)})")
        try:
            blob = base64.b64decode(stored[len(PREFIX) + len(key_id) + 1:], validate=True)
            if len(blob) < NONCE_BYTES + 16:
                raise ValueError("short")
            plain = cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                   _aad(column, row, key_id))
            return plain.decode("utf-8")
        except (InvalidTag, ValueError, binascii.Error):
            raise UnsealError(f"{self.store}: cannot decrypt {what} with key id {key_id}: "
                              "wrong key, or the value was altered or moved from another "
                              "row") from None

    def reseal(self, stored: str, column: SealedColumn, row: Sequence[str]) -> str:
        """`stored` sealed under the sealing key (plain values sealed for the first time)."""
        return self.seal(self.unseal(stored, column, row), column, row)

    # the records the stores take and give
    def cert_in(self, cert: IssuedCertificate) -> IssuedCertificate:
        return replace(cert, key_pem=self.seal(cert.key_pem, CERTIFICATES,
                                               (cert.name, cert.serial)))

    def cert_out(self, cert: IssuedCertificate) -> IssuedCertificate:
        if sealed_key_id(cert.key_pem) is None:
            return cert
        return replace(cert, key_pem=self.unseal(cert.key_pem, CERTIFICATES,
                                                 (cert.name, cert.serial)))

    def order_in(self, order: Order) -> Order:
        return replace(order, key_pem=self.seal(order.key_pem, ORDERS, (order.url,)))

    def order_out(self, order: Order) -> Order:
        if sealed_key_id(order.key_pem) is None:
            return order
        return replace(order, key_pem=self.unseal(order.key_pem, ORDERS, (order.url,)))

    def account_in(self, account: Account) -> Account:
        return replace(account, key_pem=self.seal(account.key_pem, ACCOUNTS,
                                                  (account.directory,)))

    def account_out(self, account: Account) -> Account:
        if sealed_key_id(account.key_pem) is None:
            return account
        return replace(account, key_pem=self.unseal(account.key_pem, ACCOUNTS,
                                                    (account.directory,)))


Rows = Callable[[str, tuple], Awaitable[Sequence]]
Exec = Callable[[str, tuple], Awaitable[int]]


async def reseal_sql(sealer: Sealer, mark: Callable[[int], str], rows: Rows, execute: Exec,
                     unit: Callable[[], object]) -> int:
    """Re-seal, under the sealing key, every key column of an SQL store (SQLite, PostgreSQL:
    the same tables) that is plain or sealed under another key; returns how many rows
    changed. In batches, each its own unit of work (`unit()`: the store's transaction), and
    each update only if the row still holds what was read (another instance may reseal at
    the same time). UnsealError if a row is sealed with a key the key file lacks: the open
    fails rather than certd running on keys it cannot read. Nothing to do without a key
    file."""
    prefix = sealer.current_prefix
    if prefix is None:
        return 0
    changed = 0
    for col in SEALED_COLUMNS:
        cols = ", ".join((col.key, *col.binds))
        after = None
        while True:
            where = f" AND {col.key} > {mark(2)}" if after is not None else ""
            args = (prefix,) if after is None else (prefix, after)
            batch = await rows(
                f"SELECT {cols}, key_pem FROM {col.table} WHERE key_pem <> '' "
                f"AND substr(key_pem, 1, {len(prefix)}) <> {mark(1)}{where} "
                f"ORDER BY {col.key} LIMIT {RESEAL_BATCH}", args)
            if not batch:
                break
            async with unit():
                for r in batch:
                    row = tuple(str(r[i + 1]) for i in range(len(col.binds)))
                    old = r[len(col.binds) + 1]
                    new = sealer.reseal(old, col, row)
                    changed += await execute(
                        f"UPDATE {col.table} SET key_pem = {mark(1)} WHERE {col.key} = "
                        f"{mark(2)} AND key_pem = {mark(3)}", (new, r[0], old))
            after = batch[-1][0]
            if len(batch) < RESEAL_BATCH:
                break
    return changed
