"""HTTP-01 facts shared by the issuer and the responder (RFC 8555 §8.3)."""

import re

PATH_PREFIX = "/.well-known/acme-challenge/"

# base64url alphabet, no padding; at least 128 bits (22 characters). The upper bound only
# keeps hostile input small: real tokens are 43 characters.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22,128}$")


def valid_token(token: str) -> bool:
    return bool(TOKEN_RE.fullmatch(token))  # match() would let "$" accept a trailing \n
