"""Reading files another ACME client left: every byte is untrusted until checked.

A file is read only if it resolves (symlinks followed) inside the tree being imported, is a
regular file (not a FIFO that blocks, not /dev/zero) and is no larger than its limit; text
must be ASCII/UTF-8 without NUL bytes. PEM holds exactly what it should: certificates only,
or one private key. Every refusal is an `ImportRefused` whose message names the file (quoted
and bounded when odd) and never quotes its content.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from certd import keys
from certd.errors import AcmeError, CertdError
from certd.issuance.untrusted import ca_url, parse_json
from certd.text import one_line
from certd.views import name_list

MAX_PEM = 256 << 10  # a full chain of a 100-name certificate is ~10 KiB
MAX_CONF = 64 << 10  # a renewal conf is ~1 KiB
MAX_LINE = 4096
MAX_CHAIN = 10  # certificates in one chain file
MAX_URL = 1000
_HOST = re.compile(r"[a-z0-9.-]{1,253}|[0-9a-f:.]{2,45}")  # a name, IPv4, or IPv6


class ImportRefused(CertdError):
    """An input certd will not import: unsafe, unreadable, or not what it claims to be."""


class AccountMissing(ImportRefused):
    """The source has no such account (a tree copied without accounts/): not an error."""


def shown(value: str, limit: int = 80) -> str:
    """A name or path from the input, as a message quotes it: as is when it is plain
    printable text, else repr (escapes visible), cut to `limit`."""
    if value.isprintable() and " " not in value and 0 < len(value) <= limit:
        return value
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def read_file(path: Path, what: str, *, root: Path | None, limit: int = MAX_PEM) -> bytes:
    """The bytes of `path`. With `root` (already resolved), the path with every symlink
    resolved must stay inside it. Raises ImportRefused."""
    what = what if root is not None else f"{what} {shown(str(path), 200)}"
    try:
        real = Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        raise ImportRefused(f"{what}: {_reason(exc)}") from None
    if root is not None and not inside(real, root):
        raise ImportRefused(f"{what}: leads outside {shown(str(root), 200)} (to "
                            f"{shown(str(real), 200)}); refused")
    try:  # O_NONBLOCK: a FIFO planted there must not hang the import
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ImportRefused(f"{what}: {_reason(exc)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImportRefused(f"{what}: not a regular file")
        if info.st_size > limit:
            raise ImportRefused(f"{what}: larger than {limit // 1024} KiB "
                                f"({info.st_size} bytes)")
        chunks, size = [], 0
        while size <= limit:  # it may grow while read: stop past the limit all the same
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ImportRefused(f"{what}: larger than {limit // 1024} KiB")
        return b"".join(chunks)
    except OSError as exc:
        raise ImportRefused(f"{what}: {_reason(exc)}") from None
    finally:
        os.close(fd)


def resolved(directory: Path, what: str) -> Path:
    """`directory` with every symlink resolved: the root nothing read may lead out of."""
    try:
        return Path(os.path.realpath(directory.expanduser(), strict=True))
    except OSError as exc:
        raise ImportRefused(f"{what}: {shown(str(directory), 200)}: {_reason(exc)}") from None


def entries(directory: Path, keep: Callable[[os.DirEntry], bool], only: Sequence[str], *,
            what: str, noun: str, limit: int) -> list[str]:
    """The sorted names of `directory`'s entries that `keep` accepts (at most `limit`), or
    only those named in `only` (each must be there)."""
    names = []
    with os.scandir(directory) as found:
        for entry in found:
            if keep(entry):
                names.append(entry.name)
            if len(names) > limit:
                raise ImportRefused(f"{what}: more than {limit} {noun}s in "
                                    f"{shown(str(directory), 200)}")
    missing = [n for n in only if n not in names]
    if missing:
        raise ImportRefused(f"{what}: no {noun} {name_list(missing)} in "
                            f"{shown(str(directory), 200)}")
    return sorted(n for n in names if not only or n in only)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def text(data: bytes, what: str) -> str:
    """`data` as text: UTF-8 without NUL or other control bytes (tabs and line ends aside)."""
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ImportRefused(f"{what}: not UTF-8 text") from None
    if any(ch in decoded for ch in "\x00\x1b") or not all(
            ch.isprintable() or ch in "\t\r\n" for ch in decoded):
        raise ImportRefused(f"{what}: holds control or unprintable characters")
    return decoded


def lines(data: bytes, what: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of a small config file, comments and blanks left out."""
    for number, line in enumerate(text(data, what).splitlines(), start=1):
        if len(line) > MAX_LINE:
            raise ImportRefused(f"{what}: line {number} is longer than {MAX_LINE} characters")
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            yield number, line


def certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """A PEM file of CERTIFICATE blocks only (leaf first), at most MAX_CHAIN of them."""
    pem = text(data, what)
    if pem.count("-----BEGIN ") > MAX_CHAIN:
        raise ImportRefused(f"{what}: more than {MAX_CHAIN} PEM blocks")
    try:
        return keys.split_pem_certificates(pem)
    except ValueError as exc:
        raise ImportRefused(f"{what}: {one_line(str(exc), 120)}") from None


PRIVATE_KEY_BLOCKS = ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")
_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)\r?\n-----END \1-----", re.DOTALL)


def private_key(data: bytes, what: str) -> keys.PrivateKey:
    """One unencrypted RSA or EC private key in PEM (an `EC PARAMETERS` block before it, as
    `openssl ecparam -genkey` writes, is allowed); nothing else."""
    pem = text(data, what)
    blocks = list(_BLOCK.finditer(pem))
    kinds = [b.group(1) for b in blocks]
    if "ENCRYPTED PRIVATE KEY" in kinds or "Proc-Type: 4,ENCRYPTED" in pem:
        raise ImportRefused(f"{what}: the private key is encrypted; decrypt it first "
                            "(openssl pkey -in KEY -out KEY.plain)")
    wanted = [b for b in blocks if b.group(1) in PRIVATE_KEY_BLOCKS]
    others = [k for k in kinds if k not in PRIVATE_KEY_BLOCKS and k != "EC PARAMETERS"]
    outside = _BLOCK.sub("", pem).strip()
    if len(wanted) != 1 or others or outside:
        raise ImportRefused(f"{what}: expected one PEM private key and nothing else")
    try:
        return keys.key_from_pem(wanted[0].group(0))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ImportRefused(f"{what}: unusable private key: {one_line(str(exc), 120)}") from None


def json_document(data: bytes, what: str) -> Any:
    try:
        return parse_json(data, what)
    except AcmeError as exc:  # its words, without the CA's prefix
        raise ImportRefused(str(exc).removeprefix("acme: ")) from None


def url(value: Any, what: str) -> str:
    """An absolute http(s) URL of plain printable ASCII (a CA's directory, an account)."""
    if not isinstance(value, str) or len(value) > MAX_URL or not value.isascii():
        raise ImportRefused(f"{what}: not a usable URL")
    try:
        ca_url(value, what)
    except AcmeError as exc:
        raise ImportRefused(str(exc).removeprefix("acme: ")) from None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        parts = None
    if parts is None or not _HOST.fullmatch(parts.hostname or ""):
        raise ImportRefused(f"{what}: not a host name or address in {shown(value, 100)}")
    return value  # as written: certbot names its account directory after these bytes
