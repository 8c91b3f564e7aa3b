"""Real receivers for the notifier tests: an aiohttp webhook receiver and an aiosmtpd SMTP
server with STARTTLS (a trustme certificate) and AUTH. Both bind to 127.0.0.1 only and are
started and stopped by the test that uses them (fixtures in tests/test_notifiers.py)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from certd.config import EmailNotifierConfig
from tests.lab.procs import free_port


class WebhookReceiver:
    """Records JSON bodies. `script` holds statuses to answer before 200 (consumed one per
    request); `hang` makes every request wait until the receiver stops."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.requests = 0
        self.script: list[int] = []
        self.hang = False
        self._ssl = ssl_context
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.hang:
            await self._release.wait()
            return web.Response(status=503)
        if self.script:
            status = self.script.pop(0)
            return web.Response(status=status, text=f"scripted {status}\n" + "x" * 10000)
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        return web.Response(status=204)

    @property
    def notices(self) -> list[dict]:
        """Every notice received, a digest's items included (a digest of one is the notice)."""
        out: list[dict] = []
        for body in self.bodies:
            out += body["items"] if body.get("event") == "digest" else [body]
        return out

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=self._ssl).start()
        self.url = f"{'https' if self._ssl else 'http'}://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class _Recorder:
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(msg)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


class SmtpServer:
    """aiosmtpd on 127.0.0.1 (its own thread): STARTTLS required and AUTH only after it (or
    implicit TLS from the first byte), one account `username` / `password`."""

    def __init__(self, ca: trustme.CA, username: str = "certd",
                 password: str = "s3cret pass", *, implicit_tls: bool = False):
        self.username, self.password = username, password
        self.recorder = _Recorder()
        self.logins: list[tuple[str, bool]] = []
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        self.port = free_port()
        tls = ({"ssl_context": server_ctx, "auth_require_tls": False} if implicit_tls else
               {"tls_context": server_ctx, "require_starttls": True, "auth_require_tls": True})
        self.controller = Controller(
            self.recorder, hostname="127.0.0.1", port=self.port, auth_required=True,
            authenticator=self._authenticate, **tls,
        )

    @property
    def messages(self) -> list[EmailMessage]:
        return self.recorder.messages

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == self.username
              and auth_data.password.decode() == self.password)
        self.logins.append((mechanism, ok))
        return AuthResult(success=ok, handled=False)  # handled=False: the server says 535

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


def mail_config(tmp_path: Path, smtp: SmtpServer, ca: trustme.CA, *,
                password: str | None = None, **kw) -> EmailNotifierConfig:
    secret = tmp_path / "smtp-password"
    secret.write_text((smtp.password if password is None else password) + "\n")
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    values = {"type": "email", "host": "127.0.0.1", "port": smtp.port, "username": "certd",
              "password_file": secret, "from": "certd@example.org",
              "to": ["ops@example.org", "oncall@example.org"], "ca_bundle": bundle}
    return EmailNotifierConfig.model_validate({**values, **kw})


# fixtures (made available to every test by tests/conftest.py) --------------------------
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def receiver():
    r = await WebhookReceiver().start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
def smtp(ca):
    server = SmtpServer(ca).start()
    try:
        yield server
    finally:
        server.stop()
