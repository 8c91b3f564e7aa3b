"""acme2certifier (PyPI, in the test extras): a second ACME server, with ARI.

Debian's pebble 2.4 has no ``renewalInfo``; acme2certifier has, and this module runs
it for the lab, validating HTTP-01 through the lab's own chain::

    acme2certifier --DNS (dnspython)--> challtestsrv (every name -> 127.0.0.1), or the
                                         server at ``dns_address`` (a BIND of tests/lab/bind.py)
                   --HTTP-01 GET------> haproxy 127.0.0.1:lab.http_port -> nginx fe1/fe2
                                         -> lab.challenge_listen (certd or a stand-in)

It runs as a subprocess (``tests/lab/a2c_launcher.py``, whose docstring lists the
three run-time patches it applies) on ``http://127.0.0.1:PORT`` -- or https with the
lab's listener CA -- with its local OpenSSL CA handler (root + issuing CA generated
into ``workdir/ca``) and its SQLite DB handler (``workdir/acme_srv.db``).

ARI windows (RFC 9773).  acme2certifier computes, for a certificate issued at ``I``
expiring at ``E`` (lifetime ``L = E - I``)::

    start = I + L * renewalthreshold_pctg / 100
    end   = E, or min(E, start + renewal_window_duration) when that is set
    renewal_force: start = now + 1 day - 365 days, end = now + 1 day

:class:`AriWindow` holds those ``[Renewalinfo]`` options; the presets in
:data:`WINDOWS` give the cases the renewal tests need -- all by configuration,
no patch (a change restarts the process; DB, CA, accounts and port are kept):

* ``"future"``   -- 85 %: ``[I + 0.85 L, E]``, starts in the future => no renewal yet.
* ``"past"``     -- -100 % and 60 s: ``[I - L, I - L + 60 s]``, wholly in the past
  => renew now.
* ``"now"``      -- 0 %: ``[I, E]``, started at issuance and still open => renew now.
* ``"inverted"`` -- 200 %: ``[I + 2 L, E]``, end before start => must be ignored.

The window is computed per request from each certificate's own dates, so one setting
applies to every certificate this server issued.

acme2certifier ignores ARI's ``replaces`` field in newOrder; the launcher records
every newOrder request (status, identifiers, ``replaces``, ``profile``) so tests can
read them with :meth:`Acme2Certifier.new_orders` / :meth:`count_new_orders`.

Quirks (see also shared/field-notes.md):

* never mix ``localhost`` and ``127.0.0.1`` (signed URLs are checked against Host);
* a failed validation marks the challenge and authorization ``invalid`` without an
  ``error`` document and leaves the order ``pending``;
* validation runs inside the challenge POST (one GET per challenge, so one node of
  the two sees it); the POST's answer already says ``valid`` or ``invalid``;
* ``replaces`` is neither checked nor stored: no ``alreadyReplaced`` error, any
  value is accepted;
* accounts need a contact by default: ``[Account] contact_check_disable`` is set
  here, like Let's Encrypt (override through ``extra_config``);
* the WSGI server (wsgiref) is single-threaded by default (``threaded=True`` to
  change that) and answers HTTP/1.0-style, closing each connection.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trustme
from cryptography import x509

from .procs import LabError, ManagedProcess, StopOnExit, free_port

if TYPE_CHECKING:
    from .lab import Lab

__all__ = ["Acme2Certifier", "AriWindow", "WINDOWS", "ari_cert_id", "LAUNCHER"]

LAUNCHER = Path(__file__).with_name("a2c_launcher.py")


@dataclass(frozen=True)
class AriWindow:
    """acme2certifier's ``[Renewalinfo]`` options that shape ``suggestedWindow``.

    Attributes:
        threshold_pct: ``renewalthreshold_pctg``: window start at this percentage of
            the lifetime after issuance (may be negative or above 100).
        duration_seconds: ``renewal_window_duration``: cap the window at
            ``start + duration`` (None: the window ends at expiry).
        force: ``renewal_force``: ``[now - 364 d, now + 1 d]`` for every certificate.
        retry_after: ``retry_after_timeout``: the Retry-After header of renewalInfo.
    """

    threshold_pct: float = 85.0
    duration_seconds: int | None = None
    force: bool = False
    retry_after: int = 86400

    def options(self) -> dict[str, str]:
        """The ``[Renewalinfo]`` section of acme_srv.cfg."""
        options = {
            "renewalthreshold_pctg": str(float(self.threshold_pct)),
            "retry_after_timeout": str(int(self.retry_after)),
            "renewal_force": str(bool(self.force)),
        }
        if self.duration_seconds is not None:
            if int(self.duration_seconds) <= 0:
                raise ValueError("duration_seconds must be positive")
            options["renewal_window_duration"] = str(int(self.duration_seconds))
        return options


WINDOWS: dict[str, AriWindow] = {
    "future": AriWindow(threshold_pct=85.0),
    "past": AriWindow(threshold_pct=-100.0, duration_seconds=60),
    "now": AriWindow(threshold_pct=0.0),
    "inverted": AriWindow(threshold_pct=200.0),
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ari_cert_id(cert: x509.Certificate | str | bytes) -> str:
    """RFC 9773 certID: base64url(AKI keyIdentifier) "." base64url(serial DER bytes).

    ``cert`` is a certificate or its PEM (the first certificate of a chain).
    """
    if isinstance(cert, (str, bytes)):
        cert = x509.load_pem_x509_certificate(cert.encode() if isinstance(cert, str) else cert)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("certificate has no AKI keyIdentifier")
    serial = cert.serial_number
    # DER INTEGER content octets: minimal two's complement (leading 0x00 if the top bit is set).
    serial_der = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
    return f"{_b64url(aki.key_identifier)}.{_b64url(serial_der)}"


class Acme2Certifier(StopOnExit):
    """One running acme2certifier, validating through a :class:`~tests.lab.Lab`.

    Create with :meth:`start`; stop with :meth:`stop` (or use ``with``).

    Attributes:
        directory_url: ``http://127.0.0.1:PORT/directory`` (https with ``tls=True``).
        ca_bundle: PEM file of the CA of the HTTPS listener, None for plain HTTP.
        workdir: config, DB, CA, logs.
        validity_seconds: lifetime of issued certificates.
        window: the :class:`AriWindow` in force.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        lab: "Lab",
        validity_days: int = 90,
        validity_seconds: int | None = None,
        window: str | AriWindow = "future",
        tls: bool = False,
        threaded: bool = False,
        debug: bool = False,
        dns_address: str | None = None,
        extra_config: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """Allocate a port and write CA, config and launcher settings; starts nothing."""
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lab = lab
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls = tls
        self.debug = debug
        self.threaded = threaded
        self.extra_config = {k: dict(v) for k, v in (extra_config or {}).items()}
        # the resolver of every name it validates ("host:port"): the lab's challtestsrv
        # unless told (dns-persist-01 reads the customer's record there)
        self.dns_host, _, dns_port = (dns_address
                                      or f"127.0.0.1:{lab.challtestsrv.dns_port}").rpartition(":")
        self.dns_port = int(dns_port)
        if validity_seconds is None:
            self.validity_seconds = int(validity_days) * 86400
            self._validity_patch = False
        else:
            self.validity_seconds = int(validity_seconds)
            self._validity_patch = True
        if self.validity_seconds <= 0:
            raise LabError("acme2certifier: validity must be positive")
        self.window = self._window(window)
        scheme = "https" if tls else "http"
        self.base_url = f"{scheme}://{self.host}:{self.port}"
        self.directory_url = f"{self.base_url}/directory"
        self.ca_bundle: Path | None = None
        if tls:
            if lab.listener_ca is None:
                raise LabError("acme2certifier: lab not started (no listener CA)")
            self.ca_bundle = lab.listener_ca.bundle

        self.config_path = self.workdir / "acme_srv.cfg"
        self.settings_path = self.workdir / "launcher.json"
        self.db_path = self.workdir / "acme_srv.db"
        self.orders_log = self.workdir / "new-orders.jsonl"
        self.ca_dir = self.workdir / "ca"
        self._make_ca()
        self._write_config()
        self._write_settings()
        self.process = self._new_process()

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        lab: "Lab",
        validity_days: int = 90,
        validity_seconds: int | None = None,
        window: str | AriWindow = "future",
        tls: bool = False,
        threaded: bool = False,
        debug: bool = False,
        dns_address: str | None = None,
        extra_config: Mapping[str, Mapping[str, str]] | None = None,
        timeout: float = 15.0,
    ) -> "Acme2Certifier":
        """Start acme2certifier under ``workdir`` and wait until its directory answers.

        ``validity_seconds`` (needs a launcher patch) wins over ``validity_days``.
        ``window`` is a key of :data:`WINDOWS` or an :class:`AriWindow`.
        ``extra_config`` adds or overrides acme_srv.cfg options: ``{section: {key: value}}``.
        ``dns_address`` (``"host:port"``) is the DNS server it resolves through (default: the
        lab's challtestsrv).
        On failure the process is stopped and :class:`LabError` carries its log tail.
        """
        server = cls(
            workdir,
            lab=lab,
            validity_days=validity_days,
            validity_seconds=validity_seconds,
            window=window,
            tls=tls,
            threaded=threaded,
            debug=debug,
            extra_config=extra_config,
            dns_address=dns_address,
        )
        server._run(timeout)
        return server

    def _new_process(self) -> ManagedProcess:
        return ManagedProcess(
            "acme2certifier",
            [sys.executable, str(LAUNCHER), str(self.settings_path)],
            self.workdir / "acme2certifier.log",
            env={"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
            cwd=self.workdir,
        )

    def _run(self, timeout: float) -> None:
        if importlib.util.find_spec("acme2certifier") is None:
            raise LabError(
                "acme2certifier is not installed: pip install -e '.[test]'"
            )
        try:
            self.process.start()
            self.process.wait_tcp([(self.host, self.port)], timeout)
            directory = self.directory()
            if "renewalInfo" not in directory:
                raise self.process.fail(f"directory has no renewalInfo: {directory}")
        except BaseException:
            self.process.stop()
            raise

    def restart(self, timeout: float = 15.0) -> None:
        """Stop and start again with the current config (same port, DB, CA, accounts).

        Requests in flight during the restart fail with connection errors."""
        self.process.stop()
        self._write_config()
        self._write_settings()
        self.process = self._new_process()
        self._run(timeout)

    def set_window(self, window: str | AriWindow, timeout: float = 15.0) -> None:
        """Use another ARI window (a :data:`WINDOWS` key or an :class:`AriWindow`) for
        every certificate, by rewriting ``[Renewalinfo]`` and restarting (~0.5 s)."""
        self.window = self._window(window)
        self.restart(timeout)

    def stop(self) -> None:
        """Stop the process by PID. Idempotent."""
        self.process.stop()

    # -------------------------------------------------------------------- files

    @staticmethod
    def _window(window: str | AriWindow) -> AriWindow:
        if isinstance(window, AriWindow):
            return window
        try:
            return WINDOWS[window]
        except KeyError:
            raise LabError(f"unknown ARI window {window!r}; known: {sorted(WINDOWS)}") from None

    def _make_ca(self) -> None:
        """Root + issuing CA (trustme, ECDSA P-256) for the OpenSSL CA handler."""
        self.ca_dir.mkdir(parents=True, exist_ok=True)
        (self.ca_dir / "certs").mkdir(exist_ok=True)
        root = trustme.CA(organization_name="certd lab acme2certifier root")
        issuing = root.create_child_ca()
        self.root_path = self.ca_dir / "root.pem"
        self.issuing_cert_path = self.ca_dir / "issuing-cert.pem"
        self.issuing_key_path = self.ca_dir / "issuing-key.pem"
        root.cert_pem.write_to_path(str(self.root_path))
        issuing.cert_pem.write_to_path(str(self.issuing_cert_path))
        issuing.private_key_pem.write_to_path(str(self.issuing_key_path))
        os.chmod(self.issuing_key_path, 0o600)

    def _write_config(self) -> None:
        sections: dict[str, dict[str, str]] = {
            "DEFAULT": {
                "debug": str(self.debug),
                # Patch 1 in the launcher supplies the port.
                "dns_server_list": json.dumps([self.dns_host]),
            },
            "Nonce": {"nonce_check_disable": "False"},
            # Like Let's Encrypt since 2025: an account needs no contact (a2c's
            # default answers "Contact information is missing" with 400 malformed).
            "Account": {"contact_check_disable": "True"},
            "CAhandler": {
                "handler_module": "acme2certifier.cahandlers.openssl_ca_handler",
                "issuing_ca_key": str(self.issuing_key_path),
                "issuing_ca_cert": str(self.issuing_cert_path),
                "issuing_ca_crl": str(self.ca_dir / "crl.pem"),
                "cert_save_path": str(self.ca_dir / "certs"),
                "cert_validity_days": str(max(1, self.validity_seconds // 86400)),
            },
            "DBhandler": {
                "handler_module": "acme2certifier.dbhandlers.wsgi_handler",
                "dbfile": str(self.db_path),
            },
            "Certificate": {"revocation_reason_check_disable": "False"},
            "Challenge": {
                "challenge_validation_disable": "False",
                "challenge_validation_timeout": "5",
            },
            "Order": {"tnauthlist_support": "False"},
            "Renewalinfo": self.window.options(),
        }
        for section, options in self.extra_config.items():
            sections.setdefault(section, {}).update(options)
        lines: list[str] = []
        for section, options in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{key}: {value}" for key, value in options.items()]
            lines.append("")
        self.config_path.write_text("\n".join(lines))

    def _write_settings(self) -> None:
        settings: dict[str, Any] = {
            "config_file": str(self.config_path),
            "base_dir": str(self.workdir),
            "host": self.host,
            "port": self.port,
            "dns_port": self.dns_port,
            "http_port": self.lab.http_port,
            "validity_seconds": self.validity_seconds if self._validity_patch else None,
            "orders_log": str(self.orders_log),
            "threaded": self.threaded,
        }
        if self.tls:
            assert self.lab.listener_ca is not None
            settings["tls_cert"] = str(self.lab.listener_ca.cert_path)
            settings["tls_key"] = str(self.lab.listener_ca.key_path)
        self.settings_path.write_text(json.dumps(settings, indent=2))

    # ------------------------------------------------------------------- queries

    def _get(self, url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """GET ``url`` (no proxies from the environment); ``(status, headers, body)``."""
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.ca_bundle is not None:
            context = ssl.create_default_context(cafile=str(self.ca_bundle))
            handlers.append(urllib.request.HTTPSHandler(context=context))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(url, timeout=timeout) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers.items()), err.read()
        except OSError as exc:
            raise self.process.fail(f"GET {url} failed: {exc}")

    def directory(self) -> dict[str, Any]:
        """The ACME directory document."""
        status, _, body = self._get(self.directory_url)
        if status != 200:
            raise self.process.fail(f"GET {self.directory_url}: HTTP {status}: {body[:300]!r}")
        return json.loads(body)

    def renewal_info(
        self, cert: x509.Certificate | str | bytes
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """GET ``<renewalInfo>/<certID>`` for ``cert``; ``(status, headers, JSON body)``."""
        url = f"{self.directory()['renewalInfo']}/{ari_cert_id(cert)}"
        status, headers, body = self._get(url)
        try:
            document = json.loads(body) if body else {}
        except ValueError:
            document = {"raw": body.decode(errors="replace")}
        return status, headers, document

    def root_pem(self) -> str:
        """PEM of the root CA that issued the issuing CA (trust anchor for issued chains)."""
        return self.root_path.read_text()

    def issuing_ca_pem(self) -> str:
        """PEM of the issuing (intermediate) CA; issued chains are leaf + this."""
        return self.issuing_cert_path.read_text()

    def new_orders(self) -> list[dict[str, Any]]:
        """Every newOrder request so far, oldest first: ``status`` (201 = created),
        ``identifiers``, ``replaces`` (None if absent), ``profile``, ``location``, ``time``."""
        try:
            text = self.orders_log.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def count_new_orders(self, *, replaces: str | None = None) -> int:
        """Orders created (HTTP 201) so far; with ``replaces``, only those replacing that certID."""
        return sum(
            1
            for order in self.new_orders()
            if order.get("status") == 201 and (replaces is None or order.get("replaces") == replaces)
        )

    def challenges(self) -> list[tuple[str, str]]:
        """(type, status) of every challenge acme2certifier created, oldest first, read from
        its SQLite DB (e.g. ``("dns-persist-01", "valid")``, ``("http-01", "pending")``)."""
        import sqlite3

        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True) as db:
            return db.execute("SELECT c.type, s.name FROM challenge c JOIN status s "
                              "ON c.status_id = s.id ORDER BY c.id").fetchall()

    def log_text(self) -> str:
        """acme2certifier's stdout and stderr (all runs)."""
        return self.process.log_text()

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def wait_new_orders(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` orders were created; return all new-order records."""
        deadline = time.monotonic() + timeout
        while self.count_new_orders() < count:
            if time.monotonic() >= deadline:
                raise self.process.fail(
                    f"{self.count_new_orders()} orders after {timeout:.1f}s, wanted {count}"
                )
            time.sleep(0.02)
        return self.new_orders()

    def __repr__(self) -> str:
        return f"<Acme2Certifier {self.directory_url} pid={self.process.pid}>"
