"""The webhook notifier: POST the JSON payload (certd/notifiers/base.py: one notice, or a
digest of several) to a URL.

2xx is delivered; 5xx, 429, timeouts and connection failures are transient; any other status
(4xx, a redirect, which is not followed) and a TLS verification failure are permanent."""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import aiohttp

from certd import __version__
from certd.config import WebhookNotifierConfig
from certd.errors import NotifyError
from certd.model import Notification, Severity
from certd.notifiers.base import Digest, body, one_line

ERROR_BODY_LIMIT = 2048  # bytes of a failed response quoted in the error


class WebhookNotifier:
    def __init__(self, config: WebhookNotifierConfig, session: aiohttp.ClientSession):
        self.config = config
        self.session = session
        self.name = f"webhook[{urlsplit(config.url).hostname}]"
        self.min_severity = Severity(config.min_severity)
        self._ssl: ssl.SSLContext | bool | None = None

    async def _ssl_context(self) -> ssl.SSLContext | bool:
        if self._ssl is None:
            if self.config.ca_bundle is None:
                self._ssl = True  # aiohttp's default: the system trust store
            else:  # reads the file: off the loop
                self._ssl = await asyncio.to_thread(
                    ssl.create_default_context, cafile=str(self.config.ca_bundle))
        return self._ssl

    async def send(self, notification: Notification | Digest) -> None:
        headers = {"User-Agent": f"certd/{__version__}", **self.config.headers}
        timeout = aiohttp.ClientTimeout(total=self.config.timeout.total_seconds())
        try:
            ssl_arg = await self._ssl_context()
        except (OSError, ssl.SSLError) as exc:
            raise NotifyError(f"{self.name}: ca_bundle {self.config.ca_bundle}: {exc}",
                              notifier=self.name) from exc
        try:
            async with self.session.post(
                self.config.url, json=body(notification), headers=headers, timeout=timeout,
                ssl=ssl_arg, allow_redirects=False,
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                answer = await _read_some(resp, ERROR_BODY_LIMIT)
                status = resp.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise NotifyError(f"{self.name}: TLS: {exc.certificate_error}",
                              notifier=self.name) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            # the URL may hold a secret (Slack's do): keep it out of messages and logs
            detail = (str(exc) or type(exc).__name__).replace(self.config.url, "<url>")
            raise NotifyError(f"{self.name}: {one_line(detail)}", notifier=self.name,
                              transient=True) from exc
        text = one_line(answer.decode("utf-8", "replace"), 300)
        raise NotifyError(
            f"{self.name}: HTTP {status}" + (f": {text}" if text else ""),
            notifier=self.name, transient=status >= 500 or status == 429,
        )

    async def close(self) -> None:
        """Nothing of its own: the shared session belongs to whoever built it."""


async def _read_some(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most `limit` bytes of the body (for an error message); the rest is not read."""
    body = bytearray()
    while len(body) < limit:
        chunk = await resp.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)
