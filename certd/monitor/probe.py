"""One TLS look at one endpoint: connect to address:port with SNI, read the chain exactly as
served, optionally try legacy protocol versions and fetch the HSTS header.

Contract: `probe()` and `legacy_protocols()` never raise for network trouble (refused,
reset, TLS alert, timeout, garbage): the reason goes into `ProbeResult.error`. They do not
verify anything — the client accepts any certificate so it can see wrong, expired or
self-signed ones; `certd.monitor.checks` judges them against the configured trust store.
Safe for concurrent use; the SSL contexts are built once per process and only read after.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import warnings
from dataclasses import dataclass

from certd.model import ProbeTarget

HEAD_LIMIT = 16 * 1024  # bytes of HTTP response head read for the HSTS check
MODERN = ("TLSv1.2", "TLSv1.3")
_WEAK_CIPHERS = "DEFAULT:@SECLEVEL=0"  # so weak servers still show us their certificate


@dataclass(frozen=True)
class ProbeResult:
    target: ProbeTarget
    error: str | None  # 'connect: ...', 'handshake: ...', 'timeout'; None on success
    chain: tuple[bytes, ...] = ()  # DER certificates exactly as served, leaf first
    tls_version: str | None = None  # negotiated, e.g. 'TLSv1.3'
    legacy_protocols: tuple[str, ...] = ()  # of 'SSLv3', 'TLSv1', 'TLSv1.1': those ACCEPTED
    modern_protocols: bool | None = None  # True if TLS 1.2 or 1.3 was negotiated
    hsts: str | None = None  # Strict-Transport-Security value, if asked for and sent
    hsts_checked: bool = False
    elapsed: float = 0.0


def _legacy_versions() -> tuple[tuple[str, ssl.TLSVersion], ...]:
    """The legacy versions this OpenSSL can offer at all (Debian 12: TLS 1.0/1.1, no SSLv3)."""
    versions = [("TLSv1", ssl.TLSVersion.TLSv1), ("TLSv1.1", ssl.TLSVersion.TLSv1_1)]
    if ssl.HAS_SSLv3:  # pragma: no cover - not built into modern OpenSSL
        versions.insert(0, ("SSLv3", ssl.TLSVersion.SSLv3))
    return tuple(versions)


@functools.lru_cache(maxsize=None)
def _context(version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A non-verifying client context: any version from TLS 1.0 up (or exactly `version`),
    every cipher OpenSSL still has, so even a badly configured endpoint shows its chain."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # TLSVersion.TLSv1/1_1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version or ssl.TLSVersion.MINIMUM_SUPPORTED
        if version is not None:
            ctx.maximum_version = version
    try:
        ctx.set_ciphers(_WEAK_CIPHERS)
    except ssl.SSLError:  # pragma: no cover - OpenSSL without security levels
        pass
    return ctx


def _served_chain(ssl_object: ssl.SSLObject) -> tuple[bytes, ...]:
    """The peer's certificates as sent, leaf first. Python 3.13 has the public
    `get_unverified_chain()`; 3.11/3.12 only the private `_sslobj` one; else the leaf alone."""
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        try:
            certs = getter() or []
            chain = tuple(_der(c) for c in certs)
            if chain:
                return chain
        except (AttributeError, TypeError, ValueError, ssl.SSLError):
            pass
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


def _der(cert: object) -> bytes:
    if isinstance(cert, bytes):
        return cert
    return cert.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        return f"handshake: {text}"
    if isinstance(exc, (ConnectionResetError, EOFError, asyncio.IncompleteReadError)):
        return f"handshake: connection closed ({type(exc).__name__})"
    return f"connect: {text}"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except (OSError, ssl.SSLError, TimeoutError):
        pass


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < HEAD_LIMIT:
        data = await reader.read(HEAD_LIMIT - len(head))
        if not data:
            break
        head += data
    return head.split(b"\r\n\r\n", 1)[0]


def _hsts_header(head: bytes) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "strict-transport-security":
            return value.strip()
    return None


async def _handshake(address: str, port: int, sni: str, ctx: ssl.SSLContext, timeout: float
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(address, port, ssl=ctx, server_hostname=sni,
                                         ssl_handshake_timeout=timeout + 1)  # ours fires first


async def _accepts(address: str, port: int, sni: str, version: ssl.TLSVersion,
                   timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await _handshake(address, port, sni, _context(version), timeout)
            await _close(writer)
        return True
    except (OSError, ssl.SSLError, TimeoutError, EOFError, ValueError):
        return False


async def legacy_protocols(address: str, port: int, sni: str, timeout: float) -> tuple[str, ...]:
    """Which of SSLv3 (if this OpenSSL can offer it), TLSv1, TLSv1.1 the endpoint accepts:
    one handshake per version, pinned to it. A per-node property: callers may cache it per
    (address, port). Unreachable endpoints accept nothing."""
    versions = _legacy_versions()
    accepted = await asyncio.gather(
        *(_accepts(address, port, sni, version, timeout) for _, version in versions))
    return tuple(name for (name, _), ok in zip(versions, accepted) if ok)


async def probe(target: ProbeTarget, *, timeout: float, protocols: bool = True,
                hsts: bool = False) -> ProbeResult:
    """Handshake with target.address:target.port, SNI target.domain; read the served chain.
    With `protocols`, also try the legacy versions; with `hsts`, GET / and read the
    Strict-Transport-Security header. Each network step is bounded by `timeout`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    chain: tuple[bytes, ...] = ()
    version: str | None = None
    header: str | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _handshake(target.address, target.port, target.domain,
                                              _context(), timeout)
            try:
                ssl_object = writer.get_extra_info("ssl_object")
                chain = _served_chain(ssl_object)
                version = ssl_object.version()
            except BaseException:
                await _close(writer)
                raise
            if not hsts:
                await _close(writer)
        if hsts:
            try:
                async with asyncio.timeout(timeout):
                    writer.write(f"GET / HTTP/1.1\r\nHost: {target.domain}\r\n"
                                 "User-Agent: certd-monitor\r\nConnection: close\r\n\r\n"
                                 .encode("idna" if not target.domain.isascii() else "ascii"))
                    header = _hsts_header(await _read_head(reader))
            except (OSError, ssl.SSLError, TimeoutError, UnicodeError):
                header = None  # no answer over HTTP: same as no header
            finally:
                await _close(writer)
    except (OSError, ssl.SSLError, TimeoutError, EOFError, ValueError) as exc:
        return ProbeResult(target, _describe(exc), chain=chain, tls_version=version,
                           elapsed=loop.time() - started)
    legacy = (await legacy_protocols(target.address, target.port, target.domain, timeout)
              if protocols else ())
    return ProbeResult(
        target, None, chain=chain, tls_version=version, legacy_protocols=legacy,
        modern_protocols=(version in MODERN) if version else None,
        hsts=header, hsts_checked=hsts, elapsed=loop.time() - started)
