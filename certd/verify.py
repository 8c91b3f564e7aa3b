"""Did the deploy land: poll what a node serves for a name until it is the new serial. The
look itself is the monitor's probe (certd/monitor/probe.py: a handshake with SNI, any
certificate accepted, so a wrong or expired one is seen too), without its extra handshakes."""

from __future__ import annotations

import asyncio

from cryptography import x509

from certd.keys import serial_hex
from certd.model import ProbeTarget
from certd.monitor import probe

POLL = 0.05  # seconds; nginx serves a new certificate ~10-20 ms after a reload


async def served_serial(address: str, port: int, server_name: str,
                        timeout: float = 5.0) -> tuple[str | None, str]:
    """(serial of the leaf served for `server_name`, '') or (None, why not). Never raises
    for network trouble."""
    result = await probe.probe(ProbeTarget(server_name, address, port, f"{address}:{port}"),
                               timeout=timeout, protocols=False)
    if result.error is not None:
        return None, result.error
    if not result.chain:
        return None, "handshake: no certificate served"
    try:
        return serial_hex(x509.load_der_x509_certificate(result.chain[0])), ""
    except ValueError as exc:
        return None, f"handshake: unreadable certificate: {exc}"


async def wait_serving(address: str, port: int, server_name: str, serial: str,
                       timeout: float) -> tuple[bool, str]:
    """Poll until the endpoint serves `serial` for `server_name` (True, '') or `timeout`
    passes (False, what it served or why it failed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got, why = await served_serial(address, port, server_name,
                                       max(0.5, min(5.0, deadline - loop.time())))
        if got == serial:
            return True, ""
        seen = f"serial {got}" if got is not None else why
        if loop.time() >= deadline:
            return False, seen
        await asyncio.sleep(POLL)
