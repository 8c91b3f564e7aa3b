"""Pebble (the ACME test CA) and pebble-challtestsrv (its DNS server), as Debian ships them.

pebble 2.4 logs one line per event we care about (Go ``log`` format, to stderr):

* ``Added order "<id>" to the db``                 -- once per newOrder
* ``Issued certificate serial <hex> for order <id>`` -- once per finalized order

:meth:`Pebble.count_new_orders` and :meth:`Pebble.count_issued` count those lines.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from .procs import ManagedProcess, free_port

__all__ = ["Pebble", "ChallTestSrv", "DEFAULT_ENV", "NEW_ORDER_MARK", "ISSUED_MARK"]

# Deterministic by default; pebble's own defaults are 5 % rejected nonces and 50 %
# authorization reuse.  Callers override, e.g. {"PEBBLE_WFE_NONCEREJECT": "30"}.
DEFAULT_ENV: dict[str, str] = {
    "PEBBLE_VA_NOSLEEP": "1",
    "PEBBLE_WFE_NONCEREJECT": "0",
    "PEBBLE_AUTHZREUSE": "0",
}

NEW_ORDER_MARK = "Added order "
ISSUED_MARK = "Issued certificate serial "


def _open(request: urllib.request.Request | str, *, context: ssl.SSLContext | None = None,
          timeout: float = 5.0) -> bytes:
    """GET/POST with urllib, ignoring proxy settings from the environment (loopback only)."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    with opener.open(request, timeout=timeout) as response:
        return response.read()


class ChallTestSrv:
    """pebble-challtestsrv used only as pebble's DNS server, managed over HTTP.

    Every name resolves to ``default_ipv4`` (the load balancer) unless overridden
    with :meth:`add_a`; AAAA answers are disabled so pebble dials IPv4.
    """

    def __init__(self, workdir: Path, default_ipv4: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.default_ipv4 = default_ipv4
        self.dns_port = free_port(udp=True)
        self.management_port = free_port()
        self.dns_address = f"127.0.0.1:{self.dns_port}"
        self.management_url = f"http://127.0.0.1:{self.management_port}"
        self.process = ManagedProcess(
            "challtestsrv",
            [
                "pebble-challtestsrv",
                "-http01", "",
                "-https01", "",
                "-tlsalpn01", "",
                "-dns01", self.dns_address,
                "-management", f"127.0.0.1:{self.management_port}",
                "-defaultIPv4", default_ipv4,
                "-defaultIPv6", "",
            ],
            workdir / "challtestsrv.log",
            cwd=workdir,
        )

    def start(self, timeout: float = 10.0) -> "ChallTestSrv":
        """Start and wait for the DNS (TCP) and management ports."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        self.process.wait_tcp(
            [("127.0.0.1", self.management_port), ("127.0.0.1", self.dns_port)], timeout
        )
        return self

    def call(self, endpoint: str, payload: Mapping[str, object]) -> None:
        """POST ``payload`` as JSON to a management endpoint such as ``/add-a``."""
        request = urllib.request.Request(
            self.management_url + endpoint,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            _open(request)
        except OSError as exc:
            raise self.process.fail(f"management call {endpoint} {payload} failed: {exc}")

    def stop(self) -> None:
        self.process.stop()


class Pebble:
    """One running pebble: ACME directory over HTTPS plus its management API.

    Attributes:
        directory_url: ``https://127.0.0.1:PORT/dir``.
        ca_bundle: PEM of the CA that signed the HTTPS listener certificate.
        management_url: ``https://127.0.0.1:PORT`` (roots, intermediates).
        http_port: where pebble sends HTTP-01 validation requests.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        listener_cert: Path,
        listener_key: Path,
        ca_bundle: Path,
        http_port: int,
        dns_address: str,
        env: Mapping[str, str] | None = None,
        validity_seconds: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.ca_bundle = ca_bundle
        self.http_port = http_port
        self.port = free_port()
        self.management_port = free_port()
        self.tls_port = free_port()  # TLS-ALPN-01 target: nothing listens there
        self.directory_url = f"https://127.0.0.1:{self.port}/dir"
        self.management_url = f"https://127.0.0.1:{self.management_port}"
        config: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(listener_cert),
            "privateKey": str(listener_key),
            "httpPort": http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity_seconds is not None:
            config["certificateValidityPeriod"] = int(validity_seconds)
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "pebble-config.json"
        self.config_path.write_text(json.dumps({"pebble": config}, indent=2))
        self.env = {**DEFAULT_ENV, **(env or {})}
        self.process = ManagedProcess(
            "pebble",
            ["pebble", "-config", str(self.config_path), "-dnsserver", dns_address],
            workdir / "pebble.log",
            env=self.env,
            cwd=workdir,
        )
        self._context = ssl.create_default_context(cafile=str(ca_bundle))

    def start(self, timeout: float = 10.0) -> "Pebble":
        """Start pebble and wait until both HTTPS ports accept connections."""
        self.process.start()
        self.process.wait_tcp(
            [("127.0.0.1", self.port), ("127.0.0.1", self.management_port)], timeout
        )
        return self

    def _management_get(self, path: str) -> str:
        try:
            return _open(self.management_url + path, context=self._context).decode()
        except OSError as exc:
            raise self.process.fail(f"GET {path} on the management port failed: {exc}")

    def root_pem(self, index: int = 0) -> str:
        """PEM of issuing root ``index`` (a new root on every pebble start)."""
        return self._management_get(f"/roots/{index}")

    def intermediates_pem(self, index: int = 0) -> str:
        """PEM of the intermediate(s) of chain ``index``."""
        return self._management_get(f"/intermediates/{index}")

    def certificate_status(self, serial_hex: str) -> dict[str, object]:
        """pebble's record of an issued certificate (``Status``: Valid or Revoked)."""
        return json.loads(self._management_get(f"/cert-status-by-serial/{serial_hex}"))

    def directory(self) -> dict[str, object]:
        """The ACME directory document."""
        try:
            return json.loads(_open(self.directory_url, context=self._context))
        except OSError as exc:
            raise self.process.fail(f"GET {self.directory_url} failed: {exc}")

    def log_text(self) -> str:
        """pebble's stdout and stderr so far."""
        return self.process.log_text()

    def count_new_orders(self) -> int:
        """How many newOrder requests pebble accepted since it started."""
        return self.log_text().count(NEW_ORDER_MARK)

    def count_issued(self) -> int:
        """How many certificates pebble issued since it started."""
        return self.log_text().count(ISSUED_MARK)

    def stop(self) -> None:
        """Stop this pebble (idempotent)."""
        self.process.stop()

    def __repr__(self) -> str:
        return f"<Pebble {self.directory_url} pid={self.process.pid}>"

