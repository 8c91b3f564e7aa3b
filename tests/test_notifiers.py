"""Notifiers against real receivers: an aiohttp webhook receiver and an aiosmtpd SMTP server
(STARTTLS with a trustme certificate, AUTH), both on 127.0.0.1, started and stopped here."""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import trustme

from certd import notifiers
from certd.config import EmailNotifierConfig, LogNotifierConfig, WebhookNotifierConfig
from certd.errors import NotifyError
from certd.model import Notification, Severity
from certd.notifiers.email import EmailNotifier
from certd.notifiers.log import LogNotifier
from certd.notifiers.webhook import WebhookNotifier
from tests.lab.procs import free_port
from tests.notify_servers import SmtpServer, WebhookReceiver, mail_config

NOTICE = Notification(
    event="finding", severity=Severity.WARNING, message="certificate expires in 12.0 days",
    certificate="shop", domain="shop.example.com", node="web/fe2", check="expiry",
    days_remaining=12.0, not_after=datetime(2025, 7, 1, tzinfo=UTC),
    at=datetime(2025, 6, 19, 8, 30, tzinfo=UTC),
)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def hook_config(url: str, **kw) -> WebhookNotifierConfig:
    return WebhookNotifierConfig(type="webhook", url=url, **kw)


# webhook

async def test_webhook_payload_and_slack_text(receiver, session):
    hook = WebhookNotifier(hook_config(receiver.url, headers={"X-Token": "t0k"}), session)
    assert hook.name == "webhook[127.0.0.1]"
    await hook.send(NOTICE)
    assert receiver.bodies == [{
        "event": "finding", "severity": "warning", "certificate": "shop",
        "domain": "shop.example.com", "node": "web/fe2", "check": "expiry",
        "days_remaining": 12.0, "not_after": "2025-07-01T00:00:00+00:00",
        "message": "certificate expires in 12.0 days", "at": "2025-06-19T08:30:00+00:00",
        "text": ":warning: certd: shop.example.com on web/fe2: certificate expires in 12.0 days"
                " (warning)",
    }]
    assert receiver.headers[0]["X-Token"] == "t0k"
    assert receiver.headers[0]["Content-Type"].startswith("application/json")


async def test_webhook_text_is_one_escaped_line(receiver, session):
    hostile = Notification(event="deploy.failed", severity=Severity.ERROR, certificate="shop",
                           node="web/fe1", message="boom\n<!channel> & <https://x|click>\r\nok")
    await WebhookNotifier(hook_config(receiver.url), session).send(hostile)
    body = receiver.bodies[0]
    assert body["message"] == hostile.message  # the raw message, JSON-escaped
    assert body["not_after"] is None and body["domain"] is None
    assert body["text"] == (":x: certd: shop on web/fe1: boom &lt;!channel&gt; &amp; "
                            "&lt;https://x|click&gt; ok (error, deploy.failed)")


@pytest.mark.parametrize(("status", "transient"), [(500, True), (503, True), (429, True),
                                                   (404, False), (401, False), (302, False)])
async def test_webhook_status_classes(receiver, session, status, transient):
    receiver.script = [status]
    with pytest.raises(NotifyError) as err:
        await WebhookNotifier(hook_config(receiver.url), session).send(NOTICE)
    assert err.value.transient is transient
    assert str(err.value).startswith(f"webhook[127.0.0.1]: HTTP {status}")
    assert len(str(err.value)) < 400  # the 10 kB body is not quoted whole
    assert receiver.bodies == []


async def test_webhook_refused_connection_is_transient(session):
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    with pytest.raises(NotifyError) as err:
        await WebhookNotifier(hook_config(url), session).send(NOTICE)
    assert err.value.transient


async def test_webhook_hanging_receiver_times_out(receiver, session):
    receiver.hang = True
    hook = WebhookNotifier(hook_config(receiver.url, timeout=timedelta(seconds=0.5)), session)
    with pytest.raises(NotifyError) as err:
        await hook.send(NOTICE)
    assert err.value.transient


async def test_webhook_https_with_ca_bundle(ca, tmp_path, session):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    receiver = await WebhookReceiver(server_ctx).start()
    try:
        good, other = tmp_path / "ca.pem", tmp_path / "other.pem"
        ca.cert_pem.write_to_path(str(good))
        trustme.CA().cert_pem.write_to_path(str(other))
        await WebhookNotifier(hook_config(receiver.url, ca_bundle=good), session).send(NOTICE)
        assert len(receiver.bodies) == 1
        with pytest.raises(NotifyError) as err:
            await WebhookNotifier(hook_config(receiver.url, ca_bundle=other),
                                  session).send(NOTICE)
        assert not err.value.transient
        assert len(receiver.bodies) == 1
    finally:
        await receiver.stop()


# e-mail

async def test_email_arrives_with_subject_body_and_auth(tmp_path, smtp, ca):
    mailer = EmailNotifier(mail_config(tmp_path, smtp, ca))  # password file ends in "\n"
    assert mailer.name == "email[127.0.0.1]"
    await mailer.send(NOTICE)
    assert len(smtp.messages) == 1
    msg = smtp.messages[0]
    assert msg["Subject"] == ("[certd] WARNING shop.example.com on web/fe2: "
                              "certificate expires in 12.0 days")
    assert msg["From"] == "certd@example.org"
    assert msg["To"] == "ops@example.org, oncall@example.org"
    assert msg["Date"] == "Thu, 19 Jun 2025 08:30:00 +0000"
    assert msg["Message-ID"].endswith("@example.org>")
    body = msg.get_content().replace("\r\n", "\n")
    assert body.startswith("certificate expires in 12.0 days\n")
    assert "node:           web/fe2" in body and "days remaining: 12.0" in body
    assert smtp.recorder.envelopes == [("certd@example.org",
                                        ["ops@example.org", "oncall@example.org"])]
    assert [ok for _, ok in smtp.logins] == [True]


async def test_email_wrong_password_is_permanent(tmp_path, smtp, ca, caplog):
    mailer = EmailNotifier(mail_config(tmp_path, smtp, ca, password="wrong-horse"))
    with caplog.at_level(logging.DEBUG), pytest.raises(NotifyError) as err:
        await mailer.send(NOTICE)
    assert not err.value.transient
    assert "authentication failed: 535" in str(err.value)
    assert "wrong-horse" not in str(err.value) and "wrong-horse" not in caplog.text
    assert smtp.messages == []


async def test_email_untrusted_certificate_is_refused(tmp_path, smtp, ca):
    config = mail_config(tmp_path, smtp, ca)
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    mailer = EmailNotifier(config.model_copy(update={"ca_bundle": other}))
    with pytest.raises(NotifyError) as err:
        await mailer.send(NOTICE)
    assert not err.value.transient
    assert "certificate" in str(err.value).lower()
    assert smtp.messages == [] and smtp.logins == []  # no password sent in the clear


async def test_email_hostile_content_cannot_inject_headers(tmp_path, smtp, ca):
    hostile = Notification(
        event="finding", severity=Severity.CRITICAL, check="chain",
        domain="evil.example.com\r\nBcc: victim@example.net", node="web/fe1",
        message="bad chain\r\nBcc: victim@example.net\r\nX-Injected: yes\r\n\r\nforged body",
    )
    await EmailNotifier(mail_config(tmp_path, smtp, ca)).send(hostile)
    msg = smtp.messages[0]
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert "\n" not in msg["Subject"] and "\r" not in msg["Subject"]
    assert msg["Subject"].startswith("[certd] CRITICAL evil.example.com Bcc: victim@")
    assert smtp.recorder.envelopes[0][1] == ["ops@example.org", "oncall@example.org"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_email_implicit_tls(tmp_path, ca):
    server = SmtpServer(ca, implicit_tls=True).start()
    try:
        config = mail_config(tmp_path, server, ca, tls=True, starttls=False, port=server.port)
        await EmailNotifier(config).send(NOTICE)
        assert len(server.messages) == 1
    finally:
        server.stop()


async def test_email_unreachable_server_is_transient(tmp_path, smtp, ca):
    config = mail_config(tmp_path, smtp, ca, port=free_port())
    with pytest.raises(NotifyError) as err:
        await EmailNotifier(config).send(NOTICE)
    assert err.value.transient


async def test_email_missing_password_file(tmp_path, smtp, ca):
    config = mail_config(tmp_path, smtp, ca)
    config.password_file.unlink()
    with pytest.raises(NotifyError, match="password_file"):
        await EmailNotifier(config).send(NOTICE)


# log, registry

async def test_log_notifier_level_and_one_line(caplog):
    log = LogNotifier(LogNotifierConfig(type="log"))
    with caplog.at_level(logging.INFO, logger="certd.alerts"):
        await log.send(NOTICE)
        await log.send(Notification(event="resolved", severity=Severity.INFO,
                                    domain="a.example", node="n", message="x\nFORGED"))
    records = [r for r in caplog.records if r.name == "certd.alerts"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    assert records[0].getMessage() == ("finding: shop.example.com on web/fe2: "
                                       "certificate expires in 12.0 days (warning)")
    assert "\n" not in records[1].getMessage()


async def test_build_is_the_registry(tmp_path, session):
    hook = notifiers.build(hook_config("https://hooks.example.org/certd"), session)
    mail = notifiers.build(EmailNotifierConfig.model_validate(
        {"type": "email", "host": "smtp.example.org", "from": "c@example.org",
         "to": ["o@example.org"], "min_severity": "critical"}), session)
    log = notifiers.build(LogNotifierConfig(type="log", min_severity="info"), session)
    assert (hook.name, mail.name, log.name) == ("webhook[hooks.example.org]",
                                                 "email[smtp.example.org]", "log")
    assert (hook.min_severity, mail.min_severity, log.min_severity) == (
        Severity.WARNING, Severity.CRITICAL, Severity.INFO)
