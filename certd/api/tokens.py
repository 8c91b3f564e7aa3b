"""API tokens: a file of `NAME TOKEN` or `NAME sha256:HEX` lines (a line with a token alone is
named after its line number), compared in constant time. The name is who the audit trail
records. If the file does not exist, one with a random token is created (0600)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from certd.errors import ConfigError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
MIN_TOKEN = 16


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class Token:
    name: str
    sha256: bytes


class Tokens:
    def __init__(self, tokens: list[Token]):
        self._tokens = tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def check(self, presented: str) -> str | None:
        """The name of the token `presented` matches, or None. Every entry is compared, in
        constant time, whether or not an earlier one matched."""
        seen = digest(presented)
        found = None
        for token in self._tokens:
            if hmac.compare_digest(seen, token.sha256):
                found = token.name
        return found


def parse(text: str, source: str) -> Tokens:
    tokens, problems, names = [], [], set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 1:
            name, secret = f"line{number}", parts[0]
        elif len(parts) == 2:
            name, secret = parts
        else:
            problems.append(f"line {number}: expected 'NAME TOKEN' or 'NAME sha256:HEX'")
            continue
        if not _NAME.match(name) or name in names:
            problems.append(f"line {number}: bad or repeated name")
            continue
        names.add(name)
        if m := _HASHED.match(secret):
            tokens.append(Token(name, bytes.fromhex(m.group(1))))
        elif secret.startswith("sha256:"):
            problems.append(f"line {number}: sha256: needs 64 hex digits")
        elif len(secret) < MIN_TOKEN:
            problems.append(f"line {number}: token shorter than {MIN_TOKEN} characters")
        else:
            tokens.append(Token(name, digest(secret)))
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
            f.write("# certd API tokens: NAME TOKEN or NAME sha256:HEX, one per line\n")
            f.write(f"admin {token}\n")
        log.warning("api: created %s with a token named 'admin' (read it there)", path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None
    return parse(text, str(path))
