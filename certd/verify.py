"""What a node really serves: a TLS handshake with SNI to address:port, reading the leaf.
Used after every deploy (and by the monitor). No verification of the chain here: the point is
to learn which certificate is served, even a wrong or expired one."""

from __future__ import annotations

import asyncio
import ssl

from cryptography import x509

from certd.keys import serial_hex

POLL = 0.05  # seconds; nginx serves a new certificate ~10-20 ms after a reload


def _context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def served_certificate(address: str, port: int, server_name: str,
                             timeout: float = 5.0) -> x509.Certificate:
    """The leaf the endpoint serves for `server_name`. Raises OSError/ssl.SSLError/TimeoutError."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(address, port, ssl=_context(), server_hostname=server_name,
                                ssl_handshake_timeout=timeout), timeout)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass
    if not der:
        raise ssl.SSLError("no certificate served")
    return x509.load_der_x509_certificate(der)


async def wait_serving(address: str, port: int, server_name: str, serial: str,
                       timeout: float) -> tuple[bool, str]:
    """Poll until the endpoint serves `serial` for `server_name` (True, '') or `timeout`
    passes (False, what it served or why it failed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = "nothing"
    while True:
        try:
            cert = await served_certificate(address, port, server_name,
                                            max(0.5, min(5.0, deadline - loop.time())))
            got = serial_hex(cert)
            if got == serial:
                return True, ""
            seen = f"serial {got}"
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            seen = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if loop.time() >= deadline:
            return False, seen
        await asyncio.sleep(POLL)
