"""The assembled lab: CA -> load balancer -> two frontend nodes -> one challenge listener.

::

    pebble --HTTP-01--> haproxy 127.0.0.1:http_port --round robin--> nginx fe1 127.0.0.2
       |                                                          \\-> nginx fe2 127.0.0.3
       \\--DNS--> challtestsrv (every name -> 127.0.0.1)               |
                                 /.well-known/acme-challenge/ -> challenge_listen (certd)
                                 TLS on <address>:tls_port from <root>/<node>/certs/<cert>/

Certd itself is not started here: tests start it with ``challenge_listen``,
``deploy_path_template`` and ``reload_command``.
"""

from __future__ import annotations

import http.client
import shlex
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from .certs import ListenerCA
from .frontends import HAProxy, NginxNode
from .pebble import ChallTestSrv, Pebble
from .procs import (LabError, ManagedProcess, StopOnExit, free_port, log_tails, stop_all,
                    wait_until)

__all__ = ["Lab", "Node"]

NODE_ADDRESSES: tuple[tuple[str, str], ...] = (("fe1", "127.0.0.2"), ("fe2", "127.0.0.3"))


@dataclass(frozen=True)
class Node:
    """A frontend node. Only ``name`` and ``address`` take part in equality."""

    name: str
    address: str
    http_port: int = field(default=0, compare=False)
    tls_port: int = field(default=0, compare=False)


class Lab(StopOnExit):
    """Everything needed to issue and deploy certificates end to end, on loopback.

    Create with :meth:`Lab.start`; stop with :meth:`stop` (or use ``with``).
    """

    root: Path
    challenge_listen: str
    http_port: int
    tls_port: int
    nodes: list[Node]
    deploy_path_template: str
    reload_command: str
    pebble: Pebble

    def __init__(self, root: Path) -> None:
        """Allocate ports and paths; starts nothing (use :meth:`start`)."""
        if "{" in str(root) or "}" in str(root):
            raise LabError(f"lab root {root} must not contain braces (used as a template)")
        self.root = root
        addresses = [address for _, address in NODE_ADDRESSES]
        self.challenge_listen = f"127.0.0.1:{free_port()}"
        self.http_port = free_port()
        self.node_http_port = free_port(addresses)
        self.tls_port = free_port(addresses)
        self.nodes = [
            Node(name, address, self.node_http_port, self.tls_port)
            for name, address in NODE_ADDRESSES
        ]
        self.deploy_path_template = str(root) + "/{node}/certs/{certificate}"
        self.reload_command = (
            "nginx -p {r}/{{node}}/ -c {r}/{{node}}/nginx.conf -e {r}/{{node}}/error.log"
            " -s reload".format(r=shlex.quote(str(root)))
        )
        self.frontends: dict[str, NginxNode] = {
            node.name: NginxNode(
                node.name,
                node.address,
                root,
                http_port=self.node_http_port,
                tls_port=self.tls_port,
                challenge_listen=self.challenge_listen,
            )
            for node in self.nodes
        }
        self.challtestsrv = ChallTestSrv(root / "challtestsrv", default_ipv4="127.0.0.1")
        self.haproxy = HAProxy(root / "haproxy", self.http_port, list(self.frontends.values()))
        self.listener_ca: ListenerCA | None = None
        self.pebbles: list[Pebble] = []
        self._timeout = 10.0

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def start(
        cls,
        root: Path,
        *,
        pebble_env: Mapping[str, str] | None = None,
        validity_seconds: int | None = None,
        timeout: float = 10.0,
    ) -> "Lab":
        """Start challtestsrv, both nginx, haproxy and the default pebble under ``root``.

        ``pebble_env``/``validity_seconds`` configure the default pebble.  Each
        process gets ``timeout`` seconds to listen.  If anything fails, whatever
        was started is stopped before the error propagates.
        """
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        lab = cls(root)
        lab._timeout = timeout
        try:
            lab.listener_ca = ListenerCA(root / "ca")
            lab.challtestsrv.start(timeout)
            for frontend in lab.frontends.values():
                frontend.start(timeout)
            lab.haproxy.start(timeout)
            lab.pebble = lab.start_pebble(env=pebble_env, validity_seconds=validity_seconds)
        except BaseException:
            lab.stop()
            raise
        return lab

    def start_pebble(
        self, env: dict[str, str] | None = None, validity_seconds: int | None = None,
        dns_address: str | None = None,
    ) -> Pebble:
        """Start another pebble with its own ports and root, validating through the same
        load balancer and resolving through the same challtestsrv (or ``dns_address``,
        ``host:port``: pebble then resolves every name there, e.g. a BIND of
        :mod:`tests.lab.bind` for dns-01).

        The caller stops it (``pebble.stop()``); :meth:`stop` also does, as a safety net.
        ``env`` is layered over :data:`tests.lab.pebble.DEFAULT_ENV`
        (``PEBBLE_VA_NOSLEEP=1``, ``PEBBLE_WFE_NONCEREJECT=0``, ``PEBBLE_AUTHZREUSE=0``).
        """
        if self.listener_ca is None:
            raise LabError("lab not started")
        pebble = Pebble(
            self.root / f"pebble-{len(self.pebbles)}",
            listener_cert=self.listener_ca.cert_path,
            listener_key=self.listener_ca.key_path,
            ca_bundle=self.listener_ca.bundle,
            http_port=self.http_port,
            dns_address=dns_address or self.challtestsrv.dns_address,
            env=env,
            validity_seconds=validity_seconds,
        )
        self.pebbles.append(pebble)
        return pebble.start(self._timeout)

    def processes(self) -> list[ManagedProcess]:
        """Every process the lab manages, in start order."""
        return [
            self.challtestsrv.process,
            *(f.process for f in self.frontends.values()),
            self.haproxy.process,
            *(p.process for p in self.pebbles),
        ]

    def stop(self) -> None:
        """Stop every process the lab started, newest first, by PID. Idempotent."""
        stop_all(reversed(self.processes()))

    # ------------------------------------------------------------------ frontends

    def _frontend(self, node: str) -> NginxNode:
        try:
            return self.frontends[node]
        except KeyError:
            raise LabError(f"no node {node!r}; nodes are {list(self.frontends)}") from None

    def node(self, name: str) -> Node:
        """The :class:`Node` called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"no node {name!r}")

    def cert_dir(self, node: str, certificate: str) -> Path:
        """``<root>/<node>/certs/<certificate>`` (what ``deploy_path_template`` gives)."""
        return self._frontend(node).certs / certificate

    def set_sites(self, sites: dict[str, list[str]]) -> None:
        """Point SNI names at certificate directories on every node, then reload and
        wait until every nginx serves the new map.

        ``sites`` maps certificate name -> its domains (``*.x.test`` allowed); it
        replaces the previous mapping.  Unknown names keep getting the fallback.
        """
        for frontend in self.frontends.values():
            frontend.write_sites(sites)
        for frontend in self.frontends.values():
            frontend.reload(self._timeout)

    def set_challenge_servers(self, addresses: Sequence[str] | None = None) -> None:
        """Make every node's ``/.well-known/acme-challenge/`` upstream name ``addresses``
        (``host:port`` each; round robin, a refused one skipped for the next): several certd
        instances behind the frontends. None: back to ``challenge_listen`` alone. Rewrites
        the config, reloads and waits for every nginx."""
        for frontend in self.frontends.values():
            frontend.challenge_servers = list(addresses or [self.challenge_listen])
            frontend.write_config()
        for frontend in self.frontends.values():
            frontend.reload(self._timeout)

    def reload_node(self, node: str) -> None:
        """Reload one nginx and wait for it, as ``reload_command`` would (but synchronously)."""
        self._frontend(node).reload(self._timeout)

    def stop_node(self, node: str) -> None:
        """Stop one node's nginx (haproxy then answers 503 for its share of requests)."""
        self._frontend(node).stop()

    def start_node(self, node: str) -> None:
        """Start a node stopped with :meth:`stop_node` again."""
        self._frontend(node).start(self._timeout)

    def access_log(self, node: str) -> list[str]:
        """Access-log lines of one nginx: ``addr "host" "request" status bytes sni= cert= xff= node=``."""
        return self._frontend(node).access_log()

    def wait_access_log(
        self, node: str, needle: str, count: int = 1, timeout: float = 2.0
    ) -> list[str]:
        """Wait until ``node``'s access log has at least ``count`` lines containing
        ``needle``; return those lines.  nginx writes a line only after the response
        went out, so a client can see the answer before the log line exists."""
        return wait_until(
            lambda: (
                lines
                if len(lines := [l for l in self.access_log(node) if needle in l]) >= count
                else None
            ),
            timeout,
            what=f"{count} line(s) with {needle!r} in {node}'s access log",
        )

    def error_log(self, node: str) -> list[str]:
        """Error-log lines of one nginx."""
        return self._frontend(node).error_log()

    def http_get(
        self, host: str, path: str, *, address: str = "127.0.0.1", port: int | None = None
    ) -> tuple[int, str]:
        """GET ``path`` with ``Host: host`` from ``address:port`` (default: the load
        balancer); returns ``(status, body)``.  Never resolves ``host``."""
        conn = http.client.HTTPConnection(address, port or self.http_port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()

    def served_certificate(self, node: str, server_name: str) -> x509.Certificate:
        """Handshake with ``node``'s TLS port using SNI ``server_name`` (no
        verification) and return the leaf certificate it served."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        address = self.node(node).address
        with socket.create_connection((address, self.tls_port), timeout=5) as sock:
            with context.wrap_socket(sock, server_hostname=server_name) as tls:
                der = tls.getpeercert(binary_form=True)
        if der is None:
            raise LabError(f"{node} served no certificate for {server_name}")
        return x509.load_der_x509_certificate(der)

    def wait_served_serial(
        self, node: str, server_name: str, serial: int, timeout: float = 5.0
    ) -> x509.Certificate:
        """Poll until ``node`` serves the certificate with ``serial`` for ``server_name``
        (nginx picks up new files some milliseconds after a deploy/reload)."""
        return wait_until(
            lambda: (
                cert
                if (cert := self.served_certificate(node, server_name)).serial_number == serial
                else None
            ),
            timeout,
            what=f"{node} to serve serial {serial:x} for {server_name}",
        )

    # ------------------------------------------------------------------------ DNS

    def add_a(self, name: str, address: str) -> None:
        """Make ``name`` resolve to ``address`` (instead of the load balancer)."""
        self.challtestsrv.call("/add-a", {"host": name, "addresses": [address]})

    def clear_a(self, name: str) -> None:
        """Drop the A override for ``name`` (it resolves to the load balancer again)."""
        self.challtestsrv.call("/clear-a", {"host": name})

    def add_caa(self, name: str, policies: Sequence[tuple[str, str]]) -> None:
        """Publish CAA records for ``name``, e.g. ``[("issue", "pebble.letsencrypt.org")]``."""
        self.challtestsrv.call(
            "/add-caa",
            {"host": name, "policies": [{"tag": tag, "value": value} for tag, value in policies]},
        )

    def clear_caa(self, name: str) -> None:
        """Drop the CAA records of ``name``."""
        self.challtestsrv.call("/clear-caa", {"host": name})

    def set_servfail(self, name: str) -> None:
        """Make every DNS query for ``name`` fail with SERVFAIL."""
        self.challtestsrv.call("/set-servfail", {"host": name})

    def clear_servfail(self, name: str) -> None:
        """Undo :meth:`set_servfail`."""
        self.challtestsrv.call("/clear-servfail", {"host": name})

    # ----------------------------------------------------------------- debugging

    def log_paths(self) -> list[Path]:
        """Every log file the lab writes."""
        paths = [p.log_path for p in self.processes()]
        for frontend in self.frontends.values():
            paths += [frontend.error_log_path, frontend.access_log_path]
        return paths

    def logs(self, tail: int = 30) -> str:
        """The last ``tail`` lines of every log, for a failing test's report."""
        return log_tails(self.log_paths(), tail)

    def __repr__(self) -> str:
        return f"<Lab {self.root} http={self.http_port} tls={self.tls_port}>"
