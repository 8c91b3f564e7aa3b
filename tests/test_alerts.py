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
from certd.notifiers.base import digest_title, item_line
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


@pytest.mark.parametrize("window", [0, 0.2])  # one by one; grouped (alerts.group_window)
async def test_lifecycle_reaches_webhook_and_mail_once(store, clock, receiver, smtp, ca,
                                                       tmp_path, window):
    async with aiohttp.ClientSession() as session:
        hook = WebhookNotifier(WebhookNotifierConfig(type="webhook", url=receiver.url), session)
        mail = EmailNotifier(mail_config(tmp_path, smtp, ca))
        book = book_for(store, [hook, mail], clock, group_window=timedelta(seconds=window))
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


# digests (alerts.group_window) -----------------------------------------------------------

def fleet(count: int, severity: Severity = Severity.WARNING, check: str = "hostname",
          message: str = "the name is not covered") -> list[Finding]:
    """`count` certificate/node findings: certificates c00..., each on web/fe1 and web/fe2."""
    return [replace(WARN, check=check, severity=severity, message=message,
                    certificate=f"c{i // 2:02d}", domain=f"c{i // 2:02d}.example.com",
                    node=f"web/fe{i % 2 + 1}") for i in range(count)]


async def wait_for(predicate, seconds: float = 15) -> None:
    for _ in range(int(seconds * 20)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_100_findings_one_digest_per_severity_then_one_resolved(
        store, clock, receiver, smtp, ca, tmp_path):
    """The lab's first-sweep flood, against a real webhook receiver and a real SMTP server:
    each hears one message per severity (sent by the window's timer, not by drain), then one
    grouped `resolved`; the dedupe state in the store is per finding as before."""
    findings = fleet(60) + fleet(40, Severity.CRITICAL, "chain", "does not verify")[:40]
    findings[60:] = [replace(f, certificate=f"k{i:02d}", domain=f"k{i:02d}.example.com")
                     for i, f in enumerate(findings[60:])]
    async with aiohttp.ClientSession() as session:
        hook = WebhookNotifier(WebhookNotifierConfig(type="webhook", url=receiver.url), session)
        mail = EmailNotifier(mail_config(tmp_path, smtp, ca))
        book = book_for(store, [hook, mail], clock, group_window=timedelta(seconds=0.5))
        try:
            assert len(await book.update(findings)) == 100  # decided one by one, as before
            assert len(await store.active_alerts()) == 100
            await wait_for(lambda: len(receiver.bodies) == 2 and len(smtp.messages) == 2)
            clock.advance(hours=1)
            assert await book.update(findings) == []  # the next sweep: nothing new
            await asyncio.sleep(1)  # longer than the window: nothing more arrives
            assert (len(receiver.bodies), len(smtp.messages)) == (2, 2)
            clock.advance(hours=1)
            assert len(await book.update([])) == 100  # everything cleared
            await wait_for(lambda: len(receiver.bodies) == 3 and len(smtp.messages) == 3)
            await asyncio.sleep(1)
        finally:
            await book.close()
    assert (len(receiver.bodies), len(smtp.messages)) == (3, 3)

    # the two digests of the first window go out concurrently (4 workers): either order
    crit, warn = sorted(receiver.bodies[:2], key=lambda b: b["severity"])
    resolved = receiver.bodies[2]
    got = (crit, warn, resolved)
    assert [(b["event"], b["severity"], b["count"], b["events"]) for b in got] == [
        ("digest", "critical", 40, {"finding": 40}), ("digest", "warning", 60, {"finding": 60}),
        ("digest", "info", 100, {"resolved": 100})]
    # today's keys are all there (null where a digest has no single value), plus the list
    single = {"event", "severity", "certificate", "domain", "node", "check",
              "days_remaining", "not_after", "message", "at", "text"}
    assert set(warn) == single | {"count", "events", "items"}
    assert warn["node"] is None and warn["message"] == "60 warning alerts: 60 new"
    assert len(warn["items"]) == 60 and set(warn["items"][0]) == single - {"text"}
    assert {(i["certificate"], i["node"]) for i in warn["items"]} == {
        (f.certificate, f.node) for f in findings[:60]}
    assert all(i["event"] == "finding" and i["check"] == "hostname" for i in warn["items"])
    lines = warn["text"].split("\n")
    assert lines[0] == ":warning: certd: 60 warning alerts: 60 new"
    assert lines[1] == "• c00.example.com on web/fe1: the name is not covered"
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "… and 40 more"
    assert crit["text"].startswith(":rotating_light: certd: 40 critical alerts: 40 new\n")
    assert resolved["message"] == "100 findings resolved"
    assert resolved["text"].startswith(":white_check_mark: certd: 100 findings resolved\n")
    assert {(i["event"], i["check"]) for i in resolved["items"]} == {
        ("resolved", "hostname"), ("resolved", "chain")}

    subjects = sorted(m["Subject"] for m in smtp.messages[:2]) + [smtp.messages[2]["Subject"]]
    assert subjects == ["[certd] CRITICAL 40 alerts: 40 new", "[certd] WARNING 60 alerts: 60 new",
                        "[certd] RESOLVED 100 findings"]
    [mail_warn] = [m for m in smtp.messages if m["Subject"].startswith("[certd] WARNING")]
    body = mail_warn.get_content().splitlines()
    assert body[0] == "60 warning alerts: 60 new"
    assert body[2] == "- c00.example.com on web/fe1: the name is not covered"
    assert len([x for x in body if x.startswith("- ")]) == 60  # all: under 100 lines
    assert len([x for x in body if "web/fe1" in x]) == 30


async def test_a_single_finding_keeps_the_single_notice_shape(store, clock, receiver):
    async with aiohttp.ClientSession() as session:
        hook = WebhookNotifier(WebhookNotifierConfig(type="webhook", url=receiver.url), session)
        book = book_for(store, [hook], clock, group_window=timedelta(seconds=0.2))
        try:
            await book.update([WARN])
            await wait_for(lambda: len(receiver.bodies) == 1)
        finally:
            await book.close()
    [body] = receiver.bodies
    assert set(body) == {"event", "severity", "certificate", "domain", "node", "check",
                         "days_remaining", "not_after", "message", "at", "text"}
    assert (body["event"], body["node"], body["check"]) == ("finding", "web/fe2", "expiry")
    assert body["text"] == (":warning: certd: shop.example.com on web/fe2: certificate "
                            "expires in 12.0 days (warning)")


async def test_reminders_are_grouped_with_what_is_new(store, clock):
    rec = Recorder()
    book = book_for(store, [rec], clock, group_window=timedelta(minutes=5))
    old, new = fleet(30), fleet(32)[30:]
    try:
        await book.update(old)
        await book.drain(timeout=10)  # flushes at once: `certd check` does not wait
        clock.advance(hours=25)
        assert len(await book.update(old + new)) == 32  # 30 reminders, 2 new
        await book.drain(timeout=10)
    finally:
        await book.close()
    assert [(d.event, d.severity, len(d.items)) for d in rec.got] == [
        ("digest", Severity.WARNING, 30), ("digest", Severity.WARNING, 32)]
    second = rec.got[1]
    assert second.events == {"reminder": 30, "finding": 2}
    assert digest_title(second) == "32 warning alerts: 30 reminders, 2 new"
    assert item_line(second.items[0]) == (
        "c00.example.com on web/fe1: the name is not covered (reminder)")


async def test_event_log_failures_join_the_digest(store, clock):
    """Failures forwarded from the event log (deploy.failed ...) and findings of the same
    window and severity: one message; notices that arrive later in the window join it."""
    rec = Recorder()
    book = book_for(store, [rec], clock, group_window=timedelta(seconds=0.5))
    failed = Notification(event="deploy.failed", severity=Severity.ERROR, certificate="shop",
                          node="web/fe2", message="ssh[fe2]: reload: exit 1")
    try:
        await book.notify(failed)
        await asyncio.sleep(0.1)
        await book.notify(replace(failed, node="web/fe1"))
        await book.update(fleet(4, Severity.ERROR, "unreachable", "connect: refused"))
        await book.notify(replace(failed, event="issue.failed", severity=Severity.WARNING,
                                  node=None, message="urn:ietf:params:acme:error:dns"))
        await wait_for(lambda: len(rec.got) == 2)
        await asyncio.sleep(0.7)
    finally:
        await book.close()
    digest, single = rec.got
    assert (digest.severity, digest.events) == (Severity.ERROR, {"deploy.failed": 2,
                                                                 "finding": 4})
    assert digest_title(digest) == "6 error alerts: 4 new, 2 deploy.failed"
    assert (single.event, single.severity) == ("issue.failed", Severity.WARNING)


async def test_pending_findings_are_recorded_never_notified(store, clock):
    rec = Recorder()
    book = book_for(store, [rec], clock)
    pending = replace(WARN, check="pending", severity=Severity.INFO,
                      message="deployment in progress (began 3 s ago): not judged until "
                              "it is done")
    try:
        assert await book.update([pending]) == []
        [alert] = await book.active_alerts()  # the API and `certd check` show it
        assert (alert.finding.check, alert.notified_at) == ("pending", None)
        clock.advance(days=2)
        assert await book.update([pending]) == []  # no reminder either
        clock.advance(minutes=1)
        assert await book.update([WARN]) == [_notice_of(WARN)]  # judged now: a real finding
        assert [a.finding.check for a in await book.active_alerts()] == ["expiry"]
        await book.drain(timeout=10)
    finally:
        await book.close()
    assert [(n.event, n.check) for n in rec.got] == [("finding", "expiry")]


def _notice_of(f: Finding):
    from certd.monitor.alerts import _notice
    return _notice("finding", f, T0 + timedelta(days=2, minutes=1))


async def test_log_lines_name_each_thing_once(store, clock, caplog):
    """From the check to the log line: 'finding: DOMAIN on NODE: what (severity)'."""
    from certd.config import LogNotifierConfig
    from certd.model import ProbeTarget
    from certd.monitor.checks import evaluate, load_trust_store
    from certd.monitor.probe import ProbeResult
    from certd.notifiers.log import LogNotifier

    target = ProbeTarget("shop.example.com", "127.0.0.1", 443, "web/fe1", "shop", "web")
    found = evaluate(ProbeResult(target, "connect: refused"), expected=None,
                     thresholds=None, trust=load_trust_store(None), now=T0)
    log = LogNotifier(LogNotifierConfig(type="log"))
    book = book_for(store, [log], clock, group_window=timedelta(minutes=1))
    try:
        with caplog.at_level(logging.INFO, logger="certd.alerts"):
            await book.update(found)
            await book.drain(timeout=10)
            await book.update(fleet(3, Severity.ERROR, "unreachable", "connect: refused"),
                              scope=lambda f: False)
            await book.drain(timeout=10)
    finally:
        await book.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "certd.alerts"]
    assert lines == [
        "finding: shop.example.com on web/fe1: connect: refused (error)",
        ("digest: 3 error alerts: 3 new: c00.example.com on web/fe1: connect: refused; "
         "c00.example.com on web/fe2: connect: refused; c01.example.com on web/fe1: "
         "connect: refused"),
    ]
