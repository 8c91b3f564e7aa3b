"""Reading HTTP bodies with a size limit (aiohttp's `content.read(n)` returns what has
arrived so far, not n bytes: a body must be read until EOF)."""

from __future__ import annotations

import aiohttp


class BodyTooLarge(Exception):
    pass


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or BodyTooLarge once it exceeds `limit` bytes."""
    body = bytearray()
    while chunk := await resp.content.read(65536):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"response larger than {limit} bytes")
    return bytes(body)
