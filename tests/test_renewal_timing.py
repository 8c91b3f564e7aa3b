"""Timing rules, the sweep's decision and the budget, with a controllable clock."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from certd.budget import Budget, registered_domain
from certd.config import BudgetConfig
from certd.issuance.ari import Window, clamp_retry
from certd.model import AriState, CertificateState, CertStatus, CertSummary
from certd.renewal import backoff, decide, needs_certificate, plan
from certd.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)


class Spec:
    def __init__(self, name, *domains):
        self.name, self.domains = name, domains


def cert(name="c", days=90.0, serial="01", domains=("a.example.org",), start=T0):
    return CertSummary(name, serial, domains, start, start + timedelta(days=days), start)


@pytest.mark.parametrize("days, before", [(90, 30), (45, 15), (6, 3), (64, 64 / 3)])
def test_lifetime_rule(days, before):
    c = cert(days=days)
    p = plan(c)
    assert p.reason == "lifetime"
    assert abs((c.not_after - p.at) - timedelta(days=before)) < timedelta(seconds=1)


def test_before_expiry_and_its_limit():
    assert plan(cert(days=90), before_expiry=timedelta(days=20)).at == T0 + 70 * DAY
    assert plan(cert(days=90), before_expiry=timedelta(days=45)).at == T0 + 45 * DAY
    # a lead time past half the lifetime (a 30-day one on 45-day or 160-hour certificates)
    # would renew a fresh certificate at once, every sweep: the lifetime rule decides instead
    for days, at in ((45, 30), (6, 3)):
        p = plan(cert(days=days), before_expiry=timedelta(days=30))
        assert (p.at, p.reason) == (T0 + at * DAY, "lifetime")


def test_ari_window_wins_and_inverted_or_stale_windows_are_ignored():
    c = cert(days=90)
    renew_at = T0 + 50 * DAY
    good = AriState("c", "01", T0 + 40 * DAY, T0 + 60 * DAY, renew_at, T0 + DAY)
    assert plan(c, before_expiry=timedelta(days=20), ari=good).at == renew_at
    assert plan(c, ari=good).reason == "ari"
    inverted = AriState("c", "01", T0 + 60 * DAY, T0 + 40 * DAY, renew_at, T0 + DAY)
    assert plan(c, ari=inverted).reason == "lifetime"
    empty = AriState("c", "01", T0 + 40 * DAY, T0 + 40 * DAY, renew_at, T0 + DAY)
    assert plan(c, ari=empty).reason == "lifetime"
    other_serial = AriState("c", "02", T0 + 40 * DAY, T0 + 60 * DAY, renew_at, T0 + DAY)
    assert plan(c, before_expiry=timedelta(days=20), ari=other_serial).reason == "before_expiry"


def test_window_pick_is_inside_and_spread():
    w = Window(T0, T0 + DAY)
    rng = random.Random(1)
    picks = [w.pick(rng) for _ in range(200)]
    assert all(T0 <= p <= T0 + DAY for p in picks)
    assert max(picks) - min(picks) > timedelta(hours=20)
    assert not Window(T0 + DAY, T0).usable and not Window(T0, T0).usable


def test_retry_after_clamped_to_a_minute_and_a_day():
    assert clamp_retry(None, timedelta(hours=6)) == timedelta(hours=6)
    assert clamp_retry(0, timedelta(hours=6)) == timedelta(minutes=1)
    assert clamp_retry(10 * 86400, timedelta(hours=6)) == timedelta(days=1)
    assert clamp_retry(3600, timedelta(hours=6)) == timedelta(hours=1)


def test_needs_certificate_reasons():
    c = cert(days=90)
    assert needs_certificate(None, ("a.example.org",), T0) == "missing"
    assert needs_certificate(c, ("b.example.org",), T0) == "domains changed"
    assert needs_certificate(c, ("a.example.org",), T0 + 10 * DAY) is None
    assert needs_certificate(c, ("a.example.org",), T0 + 61 * DAY) == "due (lifetime)"
    assert needs_certificate(c, ("a.example.org",), T0 + 91 * DAY) == "expired"


def test_backoff_grows_to_daily_with_jitter_and_respects_retry_after():
    rng = random.Random(7)
    expected = [60, 600, 6000, 86400, 86400]
    for attempts, base in enumerate(expected, start=1):
        for _ in range(20):
            d = backoff(attempts, rng=rng).total_seconds()
            assert 0.9 * base <= d <= 1.1 * base
    assert backoff(1, retry_after=3600, rng=rng) >= timedelta(hours=1)
    steps = [timedelta(seconds=1), timedelta(seconds=2)]
    assert backoff(5, rng=rng, steps=steps) <= timedelta(seconds=2.2)


def test_decide_orders_due_work_by_urgency_and_computes_wake_time():
    specs = [Spec("fresh", "f.example.org"), Spec("due", "d.example.org"),
             Spec("expired", "e.example.org"), Spec("new", "n.example.org"),
             Spec("backoff", "b.example.org"), Spec("issued", "i.example.org")]
    now = T0 + 70 * DAY
    overview = {
        "fresh": (cert("fresh", domains=("f.example.org",), start=T0 + 60 * DAY), None, None),
        "due": (cert("due", domains=("d.example.org",)), None, None),
        "expired": (cert("expired", days=45, domains=("e.example.org",)), None, None),
        "backoff": (cert("backoff", days=45, domains=("b.example.org",)),
                    CertificateState("backoff", CertStatus.FAILED, "x", 2, now + timedelta(hours=1)),
                    None),
        "issued": (cert("issued", domains=("i.example.org",), start=T0 + 69 * DAY),
                   CertificateState("issued", CertStatus.ISSUED), None),
    }
    d = decide(specs, overview, now, before_expiry=None, ari=False)
    assert [x.name for x in d.due] == ["expired", "due", "new"]
    assert [x.reason for x in d.due] == ["expired", "due (lifetime)", "missing"]
    assert d.deploy == ["issued"]
    assert d.wake_at == now + timedelta(hours=1)  # the backing-off one is next
    assert d.ari_checks == []


def test_decide_asks_ari_for_new_serials_and_when_the_check_is_due():
    specs = [Spec("a", "a.example.org"), Spec("b", "b.example.org"), Spec("c", "c.example.org")]
    now = T0 + DAY
    overview = {
        "a": (cert("a", domains=("a.example.org",)), None, None),
        "b": (cert("b", serial="02", domains=("b.example.org",)), None,
              AriState("b", "01", None, None, None, now + DAY)),  # window of an older serial
        "c": (cert("c", domains=("c.example.org",)), None,
              AriState("c", "01", T0 + 50 * DAY, T0 + 55 * DAY, T0 + 52 * DAY,
                        now + timedelta(hours=5))),
    }
    d = decide(specs, overview, now, before_expiry=None, ari=True)
    assert d.ari_checks == ["a", "b"]
    assert d.wake_at == now + timedelta(hours=5)
    # c's ARI moment, once reached, makes it due with reason ari
    later = decide(specs, overview, T0 + 53 * DAY, before_expiry=None, ari=True)
    assert "due (ari)" in [x.reason for x in later.due if x.name == "c"]


async def test_budget_queues_by_due_time(tmp_path):
    store = SqliteStore(tmp_path / "db")
    await store.open()
    try:
        budget = Budget(store, BudgetConfig(orders_per_3h=2, certificates_per_domain_per_week=3,
                                            failed_validations_per_name_per_hour=2), "acct")
        domains = ("www.shop.example.co.uk",)
        assert registered_domain(domains[0]) == "example.co.uk"
        assert (await budget.check(domains, T0)).ok
        await budget.record_order(T0)
        await budget.record_order(T0 + timedelta(minutes=30))
        verdict = await budget.check(domains, T0 + timedelta(hours=1))
        assert not verdict.ok and verdict.retry_at == T0 + timedelta(hours=3)
        assert "orders per account" in verdict.reason
        assert (await budget.check(domains, T0 + timedelta(hours=3, seconds=1))).ok

        later = T0 + DAY
        for i in range(3):
            await budget.record_certificate((f"n{i}.example.co.uk",), later + timedelta(hours=i))
        verdict = await budget.check(("other.example.co.uk",), later + timedelta(hours=5))
        assert not verdict.ok and verdict.retry_at == later + timedelta(days=7)
        assert (await budget.check(("x.elsewhere.org",), later + timedelta(hours=5))).ok

        t = T0 + 20 * DAY
        await budget.record_failed_validation(["bad.example.org"], t)
        await budget.record_failed_validation(["bad.example.org"], t + timedelta(minutes=5))
        verdict = await budget.check(("bad.example.org",), t + timedelta(minutes=10))
        assert not verdict.ok and verdict.retry_at == t + timedelta(hours=1)
        await budget.purge(t + timedelta(days=30))
        assert (await budget.check(("bad.example.org",), t + timedelta(days=30))).ok
    finally:
        await store.close()
