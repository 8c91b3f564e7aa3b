"""HTTP-01 (RFC 8555 §8.3): facts shared by the issuer and the responder, and the solver.

The solver publishes the key authorization in the store; every certd's challenge responder
reads the store, and every frontend proxies /.well-known/acme-challenge/ to a responder, so a
row in the store is served by every node at once."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import timedelta

from certd.issuance.solvers import ChallengeType, Proof
from certd.model import Challenge, utcnow

PATH_PREFIX = "/.well-known/acme-challenge/"

# base64url alphabet, no padding; at least 128 bits (22 characters). The upper bound only
# keeps hostile input small: real tokens are 43 characters.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22,128}$")


def valid_token(token: str) -> bool:
    return bool(TOKEN_RE.fullmatch(token))  # match() would let "$" accept a trailing \n


class Http01Solver:
    """present: the key authorization into the store (served by every responder);
    cleanup: out of it. preflight: `probe(identifier)`, the path checks of certd/preflight.py
    as the service runs them (they need the certificate's nodes, the account and the config,
    which the service has): set by the wiring, none by default."""

    type = ChallengeType.HTTP01

    def __init__(self, store, *, ttl: timedelta = timedelta(hours=1),
                 probe: Callable[[str], Awaitable[None]] | None = None):
        self.store = store
        self.ttl = ttl  # a row left behind (crash) stops being served after this
        self.probe = probe

    async def preflight(self, identifier: str) -> None:
        if self.probe is not None:
            await self.probe(identifier)

    async def present(self, proof: Proof) -> None:
        await self.store.put_challenge(Challenge(
            token=proof.token,
            key_authorization=proof.key_authorization,
            certificate=proof.certificate,
            authorization_url=proof.authorization_url,
            expires_at=utcnow() + self.ttl,
        ))

    async def cleanup(self, proof: Proof) -> None:
        await self.store.delete_challenge(proof.token)
