"""Files sealed with a passphrase: what `certd backup --passphrase-file` writes.

scrypt turns the passphrase and a random salt into two keys: one authenticates the header
(format version, KDF parameters, chunk size, salt), the other encrypts the content with
AES-256-GCM in chunks, so neither side ever holds more than one chunk (1 MiB) in memory.
The chunks follow the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015): the
nonce is the chunk's number and a flag set on the last chunk only, and every chunk's
associated data is the whole header, so a chunk that was altered, moved, dropped or taken from
another file fails authentication, and a file cut at a chunk boundary is told from a damaged
one. A key is never used twice: the salt is new for every file.

Layout (integers are unsigned, big-endian):

    magic "certdenc"  8
    version           1   1
    kdf               1   1 = scrypt
    log2(N), r, p     3   scrypt cost (17, 8, 1 when written: 128 MiB, about 0.3 s)
    log2(chunk)       1   20: 1 MiB of content per chunk
    salt             16
    header MAC       32   HMAC-SHA256 of everything above, with the MAC key
    chunks                ciphertext + 16-byte GCM tag each; all but the last one full

Blocking (file I/O, scrypt): from an event loop, call through asyncio.to_thread.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from certd.errors import CertdError

MAGIC = b"certdenc"
VERSION = 1
KDF_SCRYPT = 1
_FIELDS = struct.Struct(">8s6B16s")  # magic, version, kdf, log2 N, r, p, log2 chunk, salt
MAC_SIZE = 32
HEADER_SIZE = _FIELDS.size + MAC_SIZE
TAG_SIZE = 16
LOG2_N, R, P = 17, 8, 1
CHUNK_LOG2 = 20
# what a header may ask of the reader: a hostile file must not make scrypt take gigabytes or
# hours, nor make a chunk allocation huge
MAX_SCRYPT_MEMORY = 1 << 30  # bytes: 128 * N * r
MAX_P = 4
CHUNK_LOG2_RANGE = range(12, 25)  # 4 KiB .. 16 MiB


class SealError(CertdError):
    """The file is not a sealed file this certd reads, the passphrase is wrong, or the content
    fails authentication. Nothing it decrypted may be used."""


def is_sealed(head: bytes) -> bool:
    return head.startswith(MAGIC)


def seal(src: BinaryIO, dst: BinaryIO, passphrase: bytes, *,
         chunk_log2: int = CHUNK_LOG2) -> None:
    """Write `src`'s content to `dst`, sealed with `passphrase`."""
    if chunk_log2 not in CHUNK_LOG2_RANGE:
        raise ValueError(f"chunk_log2 {chunk_log2} outside {CHUNK_LOG2_RANGE}")
    fields = _FIELDS.pack(MAGIC, VERSION, KDF_SCRYPT, LOG2_N, R, P, chunk_log2,
                          os.urandom(16))
    aead, mac_key = _keys(passphrase, fields)
    header = fields + hmac.digest(mac_key, fields, hashlib.sha256)
    dst.write(header)
    size = 1 << chunk_log2
    index, chunk = 0, src.read(size)
    while True:
        following = src.read(size) if len(chunk) == size else b""
        last = not following
        dst.write(aead.encrypt(_nonce(index, last), chunk, header))
        if last:
            return
        index, chunk = index + 1, following


def unseal(src: BinaryIO, dst: BinaryIO, passphrase: bytes) -> None:
    """Write the content sealed in `src` to `dst`, chunk by chunk, each one authenticated
    before it is written. On SealError, `dst` holds a prefix of the content at most: the
    caller throws it away."""
    header = src.read(HEADER_SIZE)
    chunk_log2 = _check_header(header)
    aead, mac_key = _keys(passphrase, header[:_FIELDS.size])
    if not hmac.compare_digest(header[_FIELDS.size:],
                               hmac.digest(mac_key, header[:_FIELDS.size], hashlib.sha256)):
        raise SealError("wrong passphrase, or the file's header was altered")
    size = (1 << chunk_log2) + TAG_SIZE
    index, chunk = 0, src.read(size)
    while True:
        following = src.read(size) if len(chunk) == size else b""
        last = not following
        try:
            dst.write(aead.decrypt(_nonce(index, last), chunk, header))
        except InvalidTag:
            raise SealError(_failure(aead, index, chunk, header, last, size)) from None
        if last:
            return
        index, chunk = index + 1, following


def _check_header(header: bytes) -> int:
    """The chunk size's log2, once the header's fields are within what this certd reads."""
    if not is_sealed(header):
        raise SealError("not an encrypted certd backup")
    if len(header) < HEADER_SIZE:
        raise SealError("truncated: the file ends inside its header")
    _, version, kdf, log2_n, r, p, chunk_log2, _ = _FIELDS.unpack(header[:_FIELDS.size])
    if version != VERSION:
        raise SealError(f"encrypted with format version {version}; this certd reads version "
                        f"{VERSION}" + (": upgrade certd" if version > VERSION else ""))
    if kdf != KDF_SCRYPT:
        raise SealError(f"unknown key derivation {kdf}")
    if not (1 <= log2_n < 32 and 1 <= r and 128 * (1 << log2_n) * r <= MAX_SCRYPT_MEMORY
            and 1 <= p <= MAX_P):
        raise SealError(f"scrypt parameters out of bounds (N=2^{log2_n}, r={r}, p={p})")
    if chunk_log2 not in CHUNK_LOG2_RANGE:
        raise SealError(f"chunk size 2^{chunk_log2} out of bounds")
    return chunk_log2


def _keys(passphrase: bytes, fields: bytes) -> tuple[AESGCM, bytes]:
    _, _, _, log2_n, r, p, _, salt = _FIELDS.unpack(fields)
    derived = Scrypt(salt=salt, length=64, n=1 << log2_n, r=r, p=p).derive(passphrase)
    return AESGCM(derived[:32]), derived[32:]


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _failure(aead: AESGCM, index: int, chunk: bytes, header: bytes, last: bool,
             size: int) -> str:
    """Why chunk `index` failed: cut short after a full chunk (it opens as a middle chunk),
    or altered."""
    if last and len(chunk) == size:
        try:
            aead.decrypt(_nonce(index, False), chunk, header)
            return f"truncated: the file ends after chunk {index}, before its last chunk"
        except InvalidTag:
            pass
    offset = HEADER_SIZE + index * size
    return f"damaged, altered or cut short: chunk {index} (at byte {offset}) fails authentication"
