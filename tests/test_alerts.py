"""AlertBook: dedupe, reminders, resolution, routing and delivery — on the real SQLite store,
with a recording notifier (a real implementation of the Protocol) and, where delivery itself
is the point, a real webhook receiver and a real SMTP server (tests/notify_servers.py)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from certd.config import WebhookNotifierConfig
from certd.errors import NotifyError
from certd.model import Alert, Finding, Notification, Severity
from certd.monitor.alerts import AlertBook
from certd.notifiers.email import EmailNotifier
from certd.notifiers.webhook import WebhookNotifier
from certd.store.sqlite import SqliteStore
from tests.notify_servers import SmtpServer, mail_config
from tests.stores import opened_store

T0 = datetime(2025, 6, 1, tzinfo=UTC)
WARN = Finding(check="expiry", severity=Severity.WARNING, domain="shop.example.com",
               node="web/fe2", message="certificate expires in 12.0 days", certificate="shop",
               days_remaining=12.0, not_after=T0 + timedelta(days=12))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


class Recorder:
    """A notifier that keeps what it is sent; `fail` holds errors to raise first."""

    def __init__(self, name: str = "rec", min_severity: Severity = Severity.INFO,
                 fail: list[NotifyError] | None = None):
        self.name, self.min_severity = name, min_severity
        self.fail = list(fail or [])
        self.got: list[Notification] = []
        self.attempts = 0
        self.closed = False

    async def send(self, notification: Notification) -> None:
        self.attempts += 1
        if self.fail:
            raise self.fail.pop(0)
        self.got.append(notification)

    async def close(self) -> None:
        self.closed = True


class CountingStore(SqliteStore):
    """The SQLite store, counting the statements it runs."""

    statements = 0

    async def _exec(self, sql, params=()):
        self.statements += 1
        return await super()._exec(sql, params)

    async def _all(self, sql, params=()):
        self.statements += 1
        return await super()._all(sql, params)


@pytest.fixture
async def store(tmp_path):
    async with opened_store(tmp_path / "certd.db", CountingStore) as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return Clock()


def book_for(store, notifiers, clock, **kw) -> AlertBook:
    kw = {"repeat": timedelta(hours=24), "retries": 3, "retry_delays": (0,), **kw}
    return AlertBook(store, notifiers, clock=clock, **kw)


def events(notices) -> list[tuple[str, str, str]]:
    return [(n.event, n.severity.value, n.domain) for n in notices]


async def test_new_reminder_resolved_then_nothing(store, clock):
    rec = Recorder()
    book = book_for(store, [rec], clock)
    try:
        assert events(await book.update([WARN])) == [("finding", "warning", WARN.domain)]
        clock.advance(hours=1)
        assert await book.update([WARN]) == []  # ongoing, not yet due for a reminder
        clock.advance(hours=24)
        assert events(await book.update([WARN])) == [("reminder", "warning", WARN.domain)]
        clock.advance(hours=1)
        later = replace(WARN, days_remaining=11.0, message="certificate expires in 11.0 days")
        assert await book.update([later]) == []
        [alert] = await book.active_alerts()
        assert (alert.first_seen, alert.last_seen) == (T0, clock.now)
        assert alert.notified_at == T0 + timedelta(hours=25)
        assert alert.finding.days_remaining == 11.0  # the latest finding is kept
        clock.advance(hours=1)
        [resolved] = await book.update([])
        assert (resolved.event, resolved.severity) == ("resolved", Severity.INFO)
        assert resolved.message == "resolved (was: certificate expires in 11.0 days)"
        clock.advance(hours=30)
        assert await book.update([]) == []
        assert await book.active_alerts() == []
        await book.drain(timeout=10)
        assert [n.event for n in rec.got] == ["finding", "reminder", "resolved"]
    finally:
        await book.close()
    assert rec.closed


async def test_severity_change_is_a_new_notice(store, clock):
    rec = Recorder()
    book = book_for(store, [rec], clock)
    try:
        await book.update([WARN])
        clock.advance(minutes=5)
        crit = replace(WARN, severity=Severity.CRITICAL, message="certificate expires in 6.0 days")
        assert events(await book.update([crit])) == [("finding", "critical", WARN.domain)]
        clock.advance(minutes=5)
        assert await book.update([crit]) == []
        [alert] = await book.active_alerts()
        assert alert.notified_severity is Severity.CRITICAL
    finally:
        await book.close()


async def test_scope_keeps_other_alerts_active(store, clock):
    other = replace(WARN, domain="blog.example.com", certificate="blog")
    book = book_for(store, [Recorder()], clock)
    try:
        await book.update([WARN, other])
        clock.advance(minutes=1)
        # an on-demand check of 'shop' only: it found nothing wrong there
        notices = await book.update([], scope=lambda f: f.certificate == "shop")
        assert events(notices) == [("resolved", "info", "shop.example.com")]
        assert [a.finding.domain for a in await book.active_alerts()] == ["blog.example.com"]
        notices = await book.update([other], scope=lambda f: f.certificate == "blog")
        assert notices == []
    finally:
        await book.close()


async def test_min_severity_routing(store, clock):
    info, warn, crit = (Recorder("info", Severity.INFO), Recorder("warn", Severity.WARNING),
                        Recorder("crit", Severity.CRITICAL))
    book = book_for(store, [info, warn, crit], clock)
    low = replace(WARN, check="posture.hsts", severity=Severity.INFO, message="no HSTS")
    bad = replace(WARN, check="chain", severity=Severity.CRITICAL, message="chain broken")
    try:
        await book.update([low, WARN, bad])
        clock.advance(minutes=1)
        await book.update([])  # all three resolved
        await book.drain(timeout=10)
    finally:
        await book.close()

    def got(r: Recorder) -> set[tuple[str, str]]:
        return {(n.event, n.check) for n in r.got}
    everything = {(e, c) for e in ("finding", "resolved") for c in ("posture.hsts", "expiry",
                                                                    "chain")}
    assert got(info) == everything
    assert got(warn) == {(e, c) for e in ("finding", "resolved") for c in ("expiry", "chain")}
    # 'resolved' is info, but it reaches every notifier that heard the finding
    assert got(crit) == {("finding", "chain"), ("resolved", "chain")}


async def test_update_is_a_constant_number_of_statements(store, clock):
    findings = [replace(WARN, domain=f"n{i}.example.com") for i in range(10_000)]
    book = book_for(store, [Recorder(min_severity=Severity.CRITICAL)], clock)
    try:
        before = store.statements
        assert len(await book.update(findings)) == 10_000
        assert store.statements - before <= 5
        clock.advance(minutes=1)
        before = store.statements
        assert len(await book.update(findings[:5_000])) == 5_000  # the rest resolved
        assert store.statements - before <= 5
        assert len(await book.active_alerts()) == 5_000
    finally:
        await book.close()


async def test_store_roundtrip_resolve_and_purge(store):
    alert = Alert(WARN, first_seen=T0, last_seen=T0 + timedelta(hours=1), notified_at=T0,
                  notified_severity=Severity.WARNING)
    quiet = Alert(replace(WARN, node="web/fe1", serial="0a1b", not_after=None,
                          days_remaining=None, certificate=None), T0, T0)
    await store.put_alerts([alert, quiet])
    assert await store.active_alerts() == [quiet, alert]  # ordered by key
    await store.resolve_alerts([alert.finding.key, "no|such|key"], T0 + timedelta(hours=2))
    assert await store.active_alerts() == [quiet]
    assert await store.purge_resolved(T0 + timedelta(hours=1)) == 0
    assert await store.purge_resolved(T0 + timedelta(hours=3)) == 1
    await store.put_alert(alert)  # the key comes back: active again
    assert len(await store.active_alerts()) == 2


async def test_notify_dedupes_event_failures(store, clock):
    rec = Recorder()
    book = book_for(store, [rec], clock, repeat=timedelta(hours=1))
    failed = Notification(event="deploy.failed", severity=Severity.ERROR, certificate="shop",
                          node="web/fe2", message="ssh[fe2]: reload: exit 1")
    try:
        await book.notify(failed)
        await book.notify(failed)
        await book.notify(replace(failed, node="web/fe1"))
        clock.advance(hours=2)
        await book.notify(failed)
        await book.drain(timeout=10)
    finally:
        await book.close()
    assert [n.node for n in rec.got] == ["web/fe2", "web/fe1", "web/fe2"]


async def test_transient_failures_are_retried_permanent_ones_not(store, clock, caplog):
    flaky = Recorder("flaky", fail=[NotifyError("flaky: HTTP 500", notifier="flaky",
                                                transient=True)] * 2)
    broken = Recorder("broken", fail=[NotifyError("broken: HTTP 404", notifier="broken")] * 5)
    down = Recorder("down", fail=[NotifyError("down: refused", notifier="down",
                                              transient=True)] * 10)
    book = book_for(store, [flaky, broken, down], clock, retries=3)
    try:
        with caplog.at_level(logging.WARNING, logger="certd.monitor.alerts"):
            await book.update([WARN])
            await book.drain(timeout=10)
    finally:
        await book.close()
    assert (flaky.attempts, len(flaky.got)) == (3, 1)
    assert (broken.attempts, len(broken.got)) == (1, 0)
    assert (down.attempts, len(down.got)) == (4, 0)
    assert ("alerts: broken: finding shop.example.com on web/fe2: not delivered (permanent "
            "error): HTTP 404") in caplog.text
    assert ("alerts: down: finding shop.example.com on web/fe2: giving up after 4 attempts: "
            "refused") in caplog.text


class Stuck(Recorder):
    """A notifier whose sends never finish (until the book closes)."""

    async def send(self, notification: Notification) -> None:
        self.attempts += 1
        await asyncio.Event().wait()


async def test_a_stuck_notifier_is_bounded_and_does_not_block(store, clock, caplog):
    stuck, rec = Stuck("stuck"), Recorder("rec")
    book = book_for(store, [stuck, rec], clock, queue_size=3, workers=1)
    findings = [replace(WARN, domain=f"n{i}.example.com") for i in range(6)]
    try:
        with caplog.at_level(logging.WARNING, logger="certd.monitor.alerts"):
            assert len(await book.update(findings[:3])) == 3  # returns: sends are queued
            await book.drain(timeout=0.5)  # gives up waiting on 'stuck', says so
            assert "alerts: drain: notices still pending" in caplog.text
            # 'stuck' has one in flight and two queued: one more fits, two are dropped
            assert len(await book.update(findings[3:], scope=lambda f: False)) == 3
            await book.drain(timeout=0.5)
        assert len(rec.got) == 6  # the other notifier is not held up
        assert stuck.attempts == 1
        assert "alerts: stuck: queue full, dropped finding n4.example.com" in caplog.text
        assert "alerts: rec: queue full" not in caplog.text
    finally:
        await book.close()


async def test_email_refuses_password_without_tls(tmp_path, ca):
    server = SmtpServer(ca)  # not started: nothing must be sent anywhere
    config = mail_config(tmp_path, server, ca, starttls=False)
    with pytest.raises(NotifyError, match="without TLS") as err:
        await EmailNotifier(config).send(Notification(event="finding",
                                                      severity=Severity.WARNING, message="m"))
    assert not err.value.transient


# real receivers

@pytest.mark.parametrize("script, requests, delivered", [
    ([500, 500], 3, ["finding"]),  # transient: retried, then delivered once
    ([404, 404, 404], 1, []),  # permanent: not retried
])
async def test_webhook_retries_transient_errors_only(store, clock, receiver, script, requests,
                                                     delivered):
    receiver.script = list(script)
    async with aiohttp.ClientSession() as session:
        hook = WebhookNotifier(WebhookNotifierConfig(type="webhook", url=receiver.url), session)
        book = book_for(store, [hook], clock, retries=3)
        try:
            await book.update([WARN])
            await book.drain(timeout=30)
        finally:
            await book.close()
    assert receiver.requests == requests
    assert [b["event"] for b in receiver.bodies] == delivered


async def test_hanging_webhook_does_not_delay_email(store, clock, receiver, smtp, ca, tmp_path):
    receiver.hang = True
    async with aiohttp.ClientSession() as session:
        hook = WebhookNotifier(WebhookNotifierConfig(
            type="webhook", url=receiver.url, timeout=timedelta(seconds=60)), session)
        mail = EmailNotifier(mail_config(tmp_path, smtp, ca))
        book = book_for(store, [hook, mail], clock)
        try:
            await book.update([WARN])  # returns at once: sends run in the background
            for _ in range(200):  # bounded: up to ~20 s
                if smtp.messages:
                    break
                await asyncio.sleep(0.1)
            assert len(smtp.messages) == 1
            assert receiver.requests == 1 and receiver.bodies == []  # still hanging
        finally:
            await book.close()  # cancels the hanging send


async def test_lifecycle_reaches_webhook_and_mail_once(store, clock, receiver, smtp, ca,
                                                       tmp_path):
    async with aiohttp.ClientSession() as session:
        hook = WebhookNotifier(WebhookNotifierConfig(type="webhook", url=receiver.url), session)
        mail = EmailNotifier(mail_config(tmp_path, smtp, ca))
        book = book_for(store, [hook, mail], clock)
        try:
            await book.update([WARN])
            await book.drain(timeout=30)
            clock.advance(hours=6)
            await book.update([WARN])  # the next sweep: no repeat
            await book.drain(timeout=30)
            clock.advance(hours=6)
            await book.update([])  # a long-validity certificate now: resolved
            await book.drain(timeout=30)
        finally:
            await book.close()
    assert [(b["event"], b["severity"]) for b in receiver.bodies] == [
        ("finding", "warning"), ("resolved", "info")]
    assert [m["Subject"] for m in smtp.messages] == [
        "[certd] WARNING shop.example.com on web/fe2: certificate expires in 12.0 days",
        "[certd] RESOLVED shop.example.com on web/fe2: resolved (was: certificate expires in "
        "12.0 days)",
    ]


async def test_event_forwarder_sends_new_failures_once(store, clock):
    from certd.model import Event
    from certd.monitor.events import EventForwarder

    rec = Recorder()
    book = book_for(store, [rec], clock)
    await store.add_event(Event("issue.failed", "before start", Severity.ERROR, certificate="a"))
    forwarder = EventForwarder(store, book)
    try:
        await forwarder.start()  # history is not replayed
        await store.add_event(Event("issue.ok", "fine", certificate="a"))
        await store.add_event(Event("deploy.failed", "fe2: reload: exit 1", Severity.ERROR,
                                    certificate="a", node="fe2"))
        await store.add_event(Event("deploy.failed", "fe2: again", Severity.ERROR,
                                    certificate="a", node="fe2"))  # same within `repeat`
        assert await forwarder.forward() == 2
        assert await forwarder.forward() == 0
        await book.drain(timeout=10)
    finally:
        await book.close()
    assert [(n.event, n.certificate, n.node, n.message) for n in rec.got] == [
        ("deploy.failed", "a", "fe2", "fe2: reload: exit 1")]
