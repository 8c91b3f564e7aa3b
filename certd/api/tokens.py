"""API tokens, from `api.tokens_file` (created 0600 with one random admin token if missing).

One entry a line; blank lines and lines starting with `#` are ignored:

    NAME TOKEN [SCOPE]          the token itself, at least 16 characters
    NAME sha256:HEX [SCOPE]     the SHA-256 of the token, 64 hex digits
    TOKEN                       (old form) a token alone, named `line<N>`, admin

NAME (letters, digits, `._@-`, up to 64) is who the audit trail records. SCOPE is one of
`read` (GET only, and /metrics), `aliases` (read, plus adding and removing custom domains) or
`admin` (everything: renew and deploy certificates too); a line without one is `admin`, so files
written before scopes existed keep working. Which scope each route needs is the table in
certd/api/scopes.py.

Tokens are compared in constant time against every entry. A presented token shorter than 16
characters is never accepted, whatever the file says; a `sha256:` entry that is the hash of the
empty string, of one or two printable characters or of a well-known word (admin, password, ...)
is refused when the file is read. No message ever quotes a token. A file that group or others
may access is read, with a warning naming it and its mode.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from certd.errors import ConfigError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
MIN_TOKEN = 16
_SENDABLE = re.compile(r"[!-~]+")  # printable ASCII without space: what a header can carry


def digest(token: str) -> bytes:
    # surrogateescape: a header's undecodable bytes arrive as lone surrogates
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


SCOPES = ("read", "aliases", "admin")  # each grants what the ones before it grant
DEFAULT_SCOPE = "admin"  # a line without a scope (every file written before scopes existed)

# secrets whose hash must not stand in the file: guessed first by anyone holding the hash
COMMON_SECRETS = (
    "admin", "administrator", "password", "passw0rd", "secret", "token", "changeme",
    "change-me", "test", "testing", "root", "toor", "letmein", "welcome", "default", "guest",
    "certd", "api", "apikey", "api-key", "api-token", "bearer", "qwerty", "123456", "12345678",
    "1234567890", "0000000000000000", "password123", "admin123", "example", "demo", "null",
)


def allows(have: str, need: str) -> bool:
    """Does a token of scope `have` grant `need`?"""
    return SCOPES.index(have) >= SCOPES.index(need)


@dataclass(frozen=True)
class Token:
    name: str
    sha256: bytes
    scope: str = DEFAULT_SCOPE


class Tokens:
    def __init__(self, tokens: list[Token]):
        self._tokens = tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def replace(self, other: Tokens) -> None:
        """Take `other`'s entries (a reload re-read the tokens file): rotation without a
        restart; the API app keeps this object."""
        self._tokens = other._tokens

    def lookup(self, presented: str) -> Token | None:
        """The entry `presented` matches, or None. Every entry is compared, in constant time,
        whether or not an earlier one matched; a token under MIN_TOKEN characters never
        matches (only that length, which is public, shows in the timing)."""
        if len(presented) < MIN_TOKEN:
            return None
        seen = digest(presented)
        found = None
        for token in self._tokens:
            if hmac.compare_digest(seen, token.sha256):
                found = token
        return found

    def check(self, presented: str) -> str | None:
        """The name of the token `presented` matches, or None."""
        token = self.lookup(presented)
        return token.name if token else None


@lru_cache(maxsize=1)
def _weak_digests() -> frozenset[bytes]:
    """Hashes of the empty string, of every one- and two-character printable ASCII string and
    of the common secrets (as written, capitalised and upper case): ~9,200 hashes, once."""
    printable = [chr(c) for c in range(0x20, 0x7F)]
    words = [""] + printable + [a + b for a in printable for b in printable]
    words += [w for c in COMMON_SECRETS for w in (c, c.capitalize(), c.upper())]
    return frozenset(digest(w) for w in words)


def parse(text: str, source: str) -> Tokens:
    tokens, problems, names = [], [], set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        scope = DEFAULT_SCOPE
        if len(parts) == 1:
            name, secret = f"line{number}", parts[0]
        elif len(parts) == 2:
            name, secret = parts
        elif len(parts) == 3:
            name, secret, scope = parts
        else:
            problems.append(f"line {number}: expected 'NAME TOKEN [SCOPE]' or "
                            "'NAME sha256:HEX [SCOPE]'")
            continue
        if not _NAME.match(name) or name in names:
            problems.append(f"line {number}: bad or repeated name")
            continue
        names.add(name)
        if scope not in SCOPES:  # not quoted: a misplaced token may stand there
            problems.append(f"line {number}: the scope must be one of {', '.join(SCOPES)}")
        elif m := _HASHED.match(secret):
            hashed = bytes.fromhex(m.group(1))
            if hashed in _weak_digests():
                problems.append(f"line {number}: the sha256 entry is the hash of an empty, "
                                "one- or two-character or well-known secret; use a random "
                                f"token of at least {MIN_TOKEN} characters")
            else:
                tokens.append(Token(name, hashed, scope))
        elif secret.startswith("sha256:"):
            problems.append(f"line {number}: sha256: needs 64 hex digits")
        elif len(secret) < MIN_TOKEN:
            problems.append(f"line {number}: token shorter than {MIN_TOKEN} characters")
        elif not _SENDABLE.fullmatch(secret):  # no client could present it in a header
            problems.append(f"line {number}: token has characters outside printable ASCII")
        else:
            tokens.append(Token(name, digest(secret), scope))
    if problems:
        raise ConfigError(source, problems)  # never echoes a token
    return Tokens(tokens)


def load_or_create(path: Path) -> Tokens:
    """Read the tokens file; create it with one random token if it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# certd API tokens, one per line: NAME TOKEN [SCOPE] or "
                    "NAME sha256:HEX [SCOPE]\n# SCOPE: read, aliases or admin (the default)\n")
            f.write(f"admin {token}\n")
        log.warning("api: created %s with a token named 'admin' (read it there)", path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None
    _warn_if_exposed(path)
    return parse(text, str(path))


def _warn_if_exposed(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning("api: tokens file %s has mode %04o: group or others may read it; "
                    "chmod 600 it", path, mode & 0o7777)
