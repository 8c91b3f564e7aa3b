"""Run acme2certifier (PyPI) for the test lab: ``python a2c_launcher.py SETTINGS.json``.

Started as a subprocess by :class:`tests.lab.a2c.Acme2Certifier`; standalone on
purpose (imports nothing from ``tests``).  acme2certifier itself is configured
through its own config file (``ACME_SRV_CONFIGFILE``, written by the fixture);
this script adds only what that file cannot express.  Every change below is made
at run time, in this process only -- nothing under site-packages is edited.

Patches (each one exists because no acme2certifier option does it):

1. DNS port.  acme2certifier resolves HTTP-01 names with ``dns.resolver.Resolver``
   and its ``dns_server_list`` option takes bare IP addresses, so the queries go
   to port 53.  The lab's DNS server (pebble-challtestsrv) listens on a high
   port (or a BIND of tests/lab/bind.py does): every ``Resolver`` built in this
   process gets ``port = <dns_port>``
   (``Resolver.reset`` is wrapped).  The address itself comes from the config
   (``[DEFAULT] dns_server_list: ["127.0.0.1"]``).  dns-persist-01 reads the
   customer's TXT record through the same resolver.

2. HTTP-01 port.  The validator fetches ``http://<resolved-ip>/.well-known/...``
   with ``Host: <name>`` (``url_get_dns_pinned``), always on port 80; its
   ``proxy_server_list`` option would send absolute-form proxy requests instead.
   Like a NAT rule, ``urllib3.util.connection.create_connection`` (what
   requests/urllib3 call for every connection) sends a connection to port 80 to
   ``<same address>:<http_port>`` -- the lab's haproxy.  This process makes no
   other outgoing HTTP connections (local OpenSSL CA handler, SQLite).

3. Certificate lifetime in seconds (only with ``validity_seconds``).  The
   OpenSSL CA handler's ``cert_validity_days`` is a whole number of days;
   ``CAhandler._certexpiry_date_default`` is replaced to return now + N seconds.

Not patches but additions around the stock WSGI app
(``acme2certifier.share.acme2certifier_wsgi.application``):

* a middleware that appends one JSON line per ``POST /acme/neworders`` to
  ``orders_log`` (status, identifiers, ``replaces``, ``profile``, Location):
  acme2certifier ignores and does not store ARI's ``replaces`` field.  The JWS
  payload is only decoded, never verified (acme2certifier does that).
* TLS on the listening socket when ``tls_cert``/``tls_key`` are given, with
  ``HTTPS=on`` in the WSGI environ so acme2certifier builds https:// URLs.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import signal
import ssl
import sys
import threading
from typing import Any, Callable, Iterable

SETTINGS_KEYS = {
    "config_file", "base_dir", "host", "port", "dns_port", "http_port",
    "validity_seconds", "orders_log", "tls_cert", "tls_key", "threaded",
}


def patch_dns_port(dns_port: int) -> None:
    """Patch 1: every dnspython Resolver in this process queries ``dns_port``."""
    import dns.resolver

    original_reset = dns.resolver.Resolver.reset

    def reset(self: Any) -> None:
        original_reset(self)
        self.port = dns_port

    dns.resolver.Resolver.reset = reset  # type: ignore[method-assign]


def patch_http01_port(http_port: int) -> None:
    """Patch 2: outgoing connections to port 80 go to ``http_port`` on the same address."""
    from urllib3.util import connection

    original = connection.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        host, port = address
        if int(port) == 80:
            port = http_port
        return original((host, port), *args, **kwargs)

    connection.create_connection = create_connection


def patch_validity_seconds(seconds: int) -> None:
    """Patch 3: certificates are valid for ``seconds`` from issuance."""
    from acme2certifier.cahandlers import openssl_ca_handler

    def certexpiry_date_default(self: Any) -> datetime.datetime:
        return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            seconds=seconds
        )

    openssl_ca_handler.CAhandler._certexpiry_date_default = certexpiry_date_default


def _b64url_json(text: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def record_new_orders(app: Callable[..., Iterable[bytes]], orders_log: str) -> Callable[..., Iterable[bytes]]:
    """WSGI middleware: one JSON line per newOrder request in ``orders_log``."""
    lock = threading.Lock()

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        if environ.get("REQUEST_METHOD") != "POST" or not path.rstrip("/").endswith("/acme/neworders"):
            return app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        record: dict[str, Any] = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        try:
            payload = _b64url_json(json.loads(body)["payload"])
            record["identifiers"] = payload.get("identifiers")
            record["replaces"] = payload.get("replaces")
            record["profile"] = payload.get("profile")
        except Exception as exc:  # malformed request: acme2certifier answers it
            record["decode_error"] = repr(exc)

        def recording_start_response(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            record["status"] = int(status.split()[0])
            record["location"] = next((v for k, v in headers if k.lower() == "location"), None)
            return start_response(status, headers, *rest)

        result = app(environ, recording_start_response)
        with lock, open(orders_log, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        print(f"certd-lab: newOrder {json.dumps(record)}", flush=True)
        return result

    return middleware


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} SETTINGS.json", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as fh:
        settings = json.load(fh)
    unknown = set(settings) - SETTINGS_KEYS
    if unknown:
        print(f"a2c_launcher: unknown settings {sorted(unknown)}", file=sys.stderr)
        return 2

    # acme2certifier reads both at import time of its WSGI module.
    os.environ["ACME_SRV_CONFIGFILE"] = settings["config_file"]
    os.environ["ACME2CERTIFIER_BASE_DIR"] = settings["base_dir"]

    patch_dns_port(int(settings["dns_port"]))
    patch_http01_port(int(settings["http_port"]))
    if settings.get("validity_seconds"):
        patch_validity_seconds(int(settings["validity_seconds"]))

    # Importing the module boots acme2certifier: config, logging, DB creation/migration.
    from acme2certifier.acme_srv.version import __version__
    from acme2certifier.share import acme2certifier_wsgi as a2c
    from wsgiref.simple_server import WSGIServer, make_server
    import socketserver

    app = record_new_orders(a2c.application, settings["orders_log"])
    tls = bool(settings.get("tls_cert"))
    base_handler = a2c.get_handler_cls()

    class Handler(base_handler):  # type: ignore[misc, valid-type]
        def get_environ(self) -> dict[str, Any]:
            environ = super().get_environ()
            if tls:
                environ["HTTPS"] = "on"
                environ["wsgi.url_scheme"] = "https"
            return environ

    server_class: type[WSGIServer] = WSGIServer
    if settings.get("threaded"):
        class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
            daemon_threads = True

        server_class = ThreadingWSGIServer

    server = make_server(
        settings["host"], int(settings["port"]), app,
        server_class=server_class, handler_class=Handler,
    )
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(settings["tls_cert"], settings["tls_key"])
        server.socket = context.wrap_socket(server.socket, server_side=True)

    def terminate(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)  # leave serve_forever, close the socket, exit 0

    signal.signal(signal.SIGTERM, terminate)  # the lab stops us by PID
    scheme = "https" if tls else "http"
    print(
        f"certd-lab: acme2certifier {__version__} listening on "
        f"{scheme}://{settings['host']}:{settings['port']} (pid {os.getpid()})",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
