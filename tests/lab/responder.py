"""A stand-in for certd's challenge listener, for tests that run without certd.

Serves ``GET /.well-known/acme-challenge/<token>`` from a dict, in a background
thread, and records every request (path, Host, X-Forwarded-For, X-Lab-Node).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .procs import StopOnExit

__all__ = ["StandInResponder", "SeenRequest"]

_PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class SeenRequest:
    """One request the stand-in answered."""

    path: str
    host: str | None
    forwarded_for: str | None
    node: str | None
    status: int


class StandInResponder(StopOnExit):
    """Threaded HTTP-01 responder bound to ``listen`` (``"127.0.0.1:PORT"``).

    ``responses`` maps token -> body (normally the key authorization); a token not
    in it gets ``default`` if that is set, else 404.  Use as a context manager or
    call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, listen: str, default: str | None = None) -> None:
        host, port = listen.rsplit(":", 1)
        self.address = (host, int(port))
        self.default = default
        self.responses: dict[str, str] = {}
        self.seen: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def set(self, token: str, body: str) -> None:
        """Answer ``token`` with ``body``."""
        with self._lock:
            self.responses[token] = body

    def _answer(self, path: str) -> tuple[int, str]:
        if not path.startswith(_PREFIX):
            return 404, "not a challenge path\n"
        token = path[len(_PREFIX):]
        if not _TOKEN.match(token):
            return 404, "bad token\n"
        with self._lock:
            body = self.responses.get(token, self.default)
        return (200, body) if body is not None else (404, "unknown token\n")

    def start(self) -> "StandInResponder":
        """Bind and serve in a daemon thread."""
        responder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                status, body = responder._answer(self.path)
                with responder._lock:
                    responder.seen.append(
                        SeenRequest(
                            self.path,
                            self.headers.get("Host"),
                            self.headers.get("X-Forwarded-For"),
                            self.headers.get("X-Lab-Node"),
                            status,
                        )
                    )
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(self.address, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stand-in-responder", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "StandInResponder":
        return self.start()
