"""The e-mail notifier: one plain-text message per notification (or per digest: a subject
with the counts, a body listing the first DIGEST_LINES notices) over SMTP (aiosmtplib).

STARTTLS on a plain connection (port 587) or implicit TLS (port 465), certificates verified
against `ca_bundle` or the system store. The password is read from `password_file` at each
send (so a rotated file is picked up), off the event loop, and never logged. Every value that
reaches a header is folded to one line first: a finding's message cannot inject headers.

Errors: authentication failures, 5xx replies and TLS verification failures are permanent;
4xx replies, timeouts and connection failures are transient.
"""

from __future__ import annotations

import asyncio
import email.policy
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import aiosmtplib

from certd.config import EmailNotifierConfig
from certd.errors import NotifyError
from certd.model import Notification, Severity
from certd.notifiers.base import (
    Digest,
    digest_counts,
    digest_lines,
    digest_title,
    one_line,
    subject,
)

# CRLF, RFC 2047 for non-ASCII; a header is folded only past RFC 5322's hard limit (the
# subject is at most 200 characters), since folding "[certd] ..." leaves a leading space
WIRE = email.policy.SMTP.clone(max_line_length=998)
DIGEST_LINES = 100  # notices listed in a digest's body; "… and N more" after that


class EmailNotifier:
    def __init__(self, config: EmailNotifierConfig):
        self.config = config
        self.name = f"email[{config.host}]"
        self.min_severity = Severity(config.min_severity)
        self._tls: ssl.SSLContext | None = None

    def message(self, n: Notification | Digest) -> EmailMessage:
        """The message as sent (exposed for tests and `certd notify --dry-run`-like uses)."""
        if isinstance(n, Digest):
            return self._digest(n)
        label = "RESOLVED" if n.event == "resolved" else n.severity.value.upper()
        if n.event == "reminder":
            label += " (reminder)"
        msg = self._headers(f"[certd] {label} {subject(n)}: {n.message}", n)
        rows = [
            ("event", n.event), ("severity", n.severity.value), ("certificate", n.certificate),
            ("domain", n.domain), ("node", n.node), ("check", n.check),
            ("days remaining", None if n.days_remaining is None else f"{n.days_remaining:.1f}"),
            ("not after", None if n.not_after is None else n.not_after.isoformat()),
            ("at", n.at.isoformat()),
        ]
        body = [one_line(n.message, 2000), ""]
        body += [f"{k + ':':<16}{one_line(v, 500)}" for k, v in rows if v is not None]
        msg.set_content("\n".join(body) + "\n\n-- \ncertd\n")
        return msg

    def _digest(self, d: Digest) -> EmailMessage:
        """Subject '[certd] WARNING 100 alerts: 98 new, 2 reminders' (or '[certd] RESOLVED
        100 findings'); the body: one line per notice, the first DIGEST_LINES."""
        if d.resolved:
            title = f"[certd] RESOLVED {len(d.items)} findings"
        else:
            title = f"[certd] {d.severity.value.upper()} {len(d.items)} alerts: {digest_counts(d)}"
        msg = self._headers(title, d)
        body = [one_line(digest_title(d), 500), ""]
        body += digest_lines(d, DIGEST_LINES, bullet="- ")
        body += ["", "`certd check` or GET /api/v1/alerts lists every active finding."]
        msg.set_content("\n".join(body) + "\n\n-- \ncertd\n")
        return msg

    def _headers(self, subject_line: str, n: Notification | Digest) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = one_line(subject_line, 200)
        msg["From"] = self.config.sender
        msg["To"] = ", ".join(self.config.to)
        msg["Date"] = format_datetime(n.at)
        # an explicit domain: make_msgid() would otherwise ask the resolver for our FQDN
        domain = self.config.sender.rpartition("@")[2] or "certd.invalid"
        msg["Message-ID"] = make_msgid("certd", domain=one_line(domain, 100))
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
        return msg

    async def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:  # loading a trust store reads files: off the loop
            cafile = str(self.config.ca_bundle) if self.config.ca_bundle else None
            self._tls = await asyncio.to_thread(ssl.create_default_context, cafile=cafile)
        return self._tls

    async def _password(self) -> str | None:
        path: Path | None = self.config.password_file
        if path is None:
            return None
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except OSError as exc:  # the message names the file, never its content
            raise NotifyError(f"{self.name}: password_file {path}: {exc.strerror}",
                              notifier=self.name) from exc
        return text.rstrip("\r\n")

    async def send(self, notification: Notification | Digest) -> None:
        c = self.config
        if c.username is not None and not (c.tls or c.starttls):
            raise NotifyError(f"{self.name}: refusing to send a password without TLS "
                              "(set starttls or tls)", notifier=self.name)
        msg = self.message(notification)
        password = await self._password()
        try:
            tls = await self._tls_context()
        except (OSError, ssl.SSLError) as exc:
            raise NotifyError(f"{self.name}: ca_bundle {c.ca_bundle}: {exc}",
                              notifier=self.name) from exc
        timeout = c.timeout.total_seconds()
        try:
            async with asyncio.timeout(timeout * 3):  # a whole, slowly trickling transaction
                await aiosmtplib.send(
                    msg.as_bytes(policy=WIRE), sender=c.sender, recipients=list(c.to), hostname=c.host, port=c.port,
                    username=c.username, password=password, use_tls=c.tls,
                    start_tls=c.starttls, tls_context=tls, timeout=timeout,
                )
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise NotifyError(f"{self.name}: authentication failed: {exc.code} "
                              f"{one_line(exc.message)}", notifier=self.name) from exc
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [e.code for e in exc.recipients]
            detail = "; ".join(f"{e.recipient}: {e.code} {one_line(e.message)}"
                               for e in exc.recipients)
            raise NotifyError(f"{self.name}: recipients refused: {detail}", notifier=self.name,
                              transient=all(400 <= code < 500 for code in codes)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise NotifyError(f"{self.name}: {exc.code} {one_line(exc.message)}",
                              notifier=self.name, transient=400 <= exc.code < 500) from exc
        except (aiosmtplib.SMTPNotSupported, ssl.SSLError) as exc:
            raise NotifyError(f"{self.name}: {one_line(str(exc))}", notifier=self.name) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLError):  # certificate not trusted, wrong name
                raise NotifyError(f"{self.name}: TLS: {one_line(str(cause))}",
                                  notifier=self.name) from exc
            detail = one_line(str(exc)) or type(exc).__name__
            raise NotifyError(f"{self.name}: {detail}", notifier=self.name,
                              transient=True) from exc

    async def close(self) -> None:
        """Nothing held open: one connection per message (alerts are rare)."""
