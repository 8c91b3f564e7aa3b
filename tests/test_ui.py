"""The dashboard's server side without a browser: its files served at /ui/ with the strict
headers (and nothing else there), the read endpoints it uses (/api/v1/whoami, overview,
timeline, events, the domains' text filter) and their scopes. The browser tests are in
tests/test_ui_lab.py."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest

from certd.api.tokens import parse
from certd.api.ui import CSP
from certd.model import Alias, CertificateState, CertStatus, Event, utcnow
from tests.certd_api import api_client, api_config

ADMIN = "ui-admin-token-0123456789"
READ = "ui-read-token-0123456789a"
H = {"Authorization": f"Bearer {ADMIN}"}
R = {"Authorization": f"Bearer {READ}"}
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'


@pytest.fixture
async def client(tmp_path):
    cfg = api_config(tmp_path, domains={"default_frontends": ["web"], "preflight": False,
                                        "allow_special_use": ["example"]},
                     certificates=[{"name": "portal", "domains": ["portal.example.org"],
                                    "frontends": ["web"]}])
    async with api_client(cfg, parse(f"ops {ADMIN}\nviewer {READ} read\n", "tokens")) as c:
        yield c


def _strict(resp) -> None:
    assert resp.headers["Content-Security-Policy"] == CSP
    assert "frame-ancestors 'none'" in CSP and "unsafe-inline" not in CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("path, kind", [("/ui/", "text/html"), ("/ui/index.html", "text/html"),
                                        ("/ui/app.js", "text/javascript"),
                                        ("/ui/app.css", "text/css")])
async def test_files_served_without_a_token_with_strict_headers(client, path, kind):
    resp = await client.get(path)
    assert resp.status == 200 and resp.content_type == kind
    _strict(resp)
    body = await resp.text()
    if kind == "text/html":  # no inline script or style: only the two files
        assert "<script src=\"app.js\" defer></script>" in body
        assert body.count("<script") == 1 and "<style" not in body and "style=" not in body
        assert not re.search(r"\son[a-z]+\s*=", body)  # no onclick= and the like


@pytest.mark.parametrize("path", ["/ui/../api/v1/certificates", "/ui/%2e%2e%2fpyproject.toml",
                                  "/ui/secret.txt", "/ui/__init__.py", "/ui/static"])
async def test_nothing_else_is_served_there(client, path):
    resp = await client.get(path)
    assert resp.status in (401, 404), path
    if resp.status == 404:
        assert resp.content_type == "application/problem+json"


async def test_ui_redirects_to_the_slash_form(client):
    resp = await client.get("/ui", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/ui/"
    _strict(resp)


def test_script_never_writes_markup():
    from importlib import resources
    js = resources.files("certd.ui").joinpath("static/app.js").read_text()
    js = re.sub(r"^\s*//.*$", "", js, flags=re.MULTILINE)  # the comments may name what is avoided
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", ".style."):
        assert sink not in js, sink


async def test_whoami_names_the_token_and_scope(client):
    assert await (await client.get("/api/v1/whoami", headers=H)).json() == {
        "name": "ops", "scope": "admin"}
    assert await (await client.get("/api/v1/whoami", headers=R)).json() == {
        "name": "viewer", "scope": "read"}
    assert (await client.get("/api/v1/whoami")).status == 401


async def test_overview_matrix_counts_and_timeline(client):
    store = client.certd.store
    await client.certd.add_alias(Alias("shop.example.com", ("web",), "ops"))
    await client.certd.add_alias(Alias("quiet.example.com", ("web",), "ops"))  # nothing stored
    later = utcnow() + timedelta(hours=5)
    await store.put_state(CertificateState("shop.example.com", CertStatus.FAILED,
                                           last_error=HOSTILE, attempts=2,
                                           next_attempt_at=later))
    await client.certd.add_alias(Alias("fine.example.com", ("web",), "ops"))
    await store.put_state(CertificateState("fine.example.com", CertStatus.DEPLOYED))
    body = await (await client.get("/api/v1/overview", headers=R)).json()
    assert body["nodes"] == ["web/fe1"] and body["certificates"] == 4 and body["aliases"] == 3
    assert body["counts"] == {"deployed": 1, "failed": 1, "pending": 2}
    # the configured certificate, then the aliases not deployed, worst first
    assert body["matrix"] == [
        {"name": "portal", "alias": False, "status": "pending", "days_left": None,
         "cells": ["pending"]},
        {"name": "shop.example.com", "alias": True, "status": "failed", "days_left": None,
         "cells": ["pending"]},
        {"name": "quiet.example.com", "alias": True, "status": "pending", "days_left": None,
         "cells": ["pending"]}]
    assert body["aliases_not_deployed"] == 2 and body["aliases_not_shown"] == 0
    t = await (await client.get("/api/v1/timeline?days=30", headers=R)).json()
    assert t["days"] == 30 and t["total"] == 1 and t["overdue"] == 0
    assert [(i["certificate"], i["kind"], i["reason"]) for i in t["items"]] == [
        ("shop.example.com", "retry", "backoff")]
    assert t["per_day"]["retry"][0] == 1 and len(t["per_day"]["expiry"]) == 31
    assert t["by_reason"] == {"retry:backoff": 1}
    assert (await (await client.get("/api/v1/timeline?limit=0", headers=R)).json())[
        "items"] == []
    for bad in ("days=0", "days=x", "days=366", "limit=1001", "limit=-1", "days=%D9%A3"):
        assert (await client.get("/api/v1/timeline?" + bad, headers=R)).status == 400, bad


async def test_events_newest_first_with_the_token_and_filters(client):
    store = client.certd.store
    await store.add_event(Event("api.domain.add", "first", certificate="a.example.com",
                                data={"token": "ops"}))
    await store.add_event(Event("issue.failed", HOSTILE, certificate="b.example.com"))
    items = (await (await client.get("/api/v1/events", headers=R)).json())["items"]
    assert [(e["kind"], e["token"]) for e in items[:2]] == [("issue.failed", None),
                                                             ("api.domain.add", "ops")]
    assert items[0]["message"] == HOSTILE  # JSON as stored; the page renders it as text
    only = await (await client.get("/api/v1/events?certificate=a.example.com", headers=R)).json()
    assert [e["message"] for e in only["items"]] == ["first"]
    kind = await (await client.get("/api/v1/events?kind=issue.failed", headers=R)).json()
    assert [e["kind"] for e in kind["items"]] == ["issue.failed"]
    for bad in ("limit=0", "limit=501", "limit=x", "certificate=" + "a" * 300, "cursor=x",
                "cursor=-1", "cursor=" + "9" * 30):
        assert (await client.get("/api/v1/events?" + bad, headers=R)).status == 400, bad
    for odd in ("kind=%00", "certificate=a%01b"):  # nothing is named so: nothing matches
        resp = await client.get("/api/v1/events?" + odd, headers=R)
        assert resp.status == 200 and await resp.json() == {"items": [], "next_cursor": None}


async def test_timeline_kept_until_a_write_then_read_again(client):
    store = client.certd.store
    await client.certd.add_alias(Alias("shop.example.com", ("web",), "ops"))
    first = await (await client.get("/api/v1/timeline", headers=R)).json()
    assert first["total"] == 0
    again = await (await client.get("/api/v1/timeline", headers=R)).json()
    assert again["as_of"] == first["as_of"]  # nothing changed: the kept moments
    await store.put_state(CertificateState("shop.example.com", CertStatus.FAILED, "x", 1,
                                           utcnow() + timedelta(hours=1)))
    # a write: the kept moments answer while a read replaces them, then the new ones
    for _ in range(600):  # generous: the background read on a loaded machine
        body = await (await client.get("/api/v1/timeline", headers=R)).json()
        if body["total"] == 1:
            break
        assert body["as_of"] == first["as_of"]
        await asyncio.sleep(0.05)
    assert body["total"] == 1 and body["as_of"] > first["as_of"]


async def test_events_pages_by_cursor(client):
    for i in range(5):
        await client.certd.store.add_event(Event("api.domain.add", f"e{i}",
                                                 certificate="p.example.com"))
    seen, cursor = [], None
    while True:
        query = "limit=2&certificate=p.example.com" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get("/api/v1/events?" + query, headers=R)).json()
        seen.append([e["message"] for e in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [["e4", "e3"], ["e2", "e1"], ["e0"]]


async def test_domains_text_filter(client):
    for name in ("alpha.example.com", "beta.example.com", "alphabet.example.net"):
        await client.certd.add_alias(Alias(name, ("web",), "ops"))
    resp = await client.get("/api/v1/domains?q=ALPHA&limit=1", headers=R)
    page = await resp.json()
    assert [d["domain"] for d in page["items"]] == ["alpha.example.com"]
    rest = await (await client.get(f"/api/v1/domains?q=alpha&limit=1&cursor="
                                   f"{page['next_cursor']}", headers=R)).json()
    assert [d["domain"] for d in rest["items"]] == ["alphabet.example.net"]
    none = await (await client.get("/api/v1/domains?q=zzz", headers=R)).json()
    assert none == {"items": [], "next_cursor": None}
    assert (await (await client.get("/api/v1/domains?q=%00", headers=R)).json())["items"] == []
    assert (await client.get("/api/v1/domains?q=" + "a" * 254, headers=R)).status == 400


async def test_read_token_may_read_but_not_change(client):
    for path in ("/api/v1/overview", "/api/v1/timeline", "/api/v1/events", "/api/v1/whoami"):
        assert (await client.get(path, headers=R)).status == 200, path
    for method, path in (("POST", "/api/v1/certificates/portal/renew"),
                         ("POST", "/api/v1/certificates/portal/deploy"),
                         ("DELETE", "/api/v1/domains/shop.example.com")):
        resp = await client.request(method, path, headers=R)
        assert resp.status == 403, path
    resp = await client.post("/api/v1/domains", json={"domain": "x.example.com"}, headers=R)
    assert resp.status == 403



async def test_history_lists_serials_never_keys(client):
    from tests.test_deploy_file import issued

    first = issued()
    await client.certd.store.add_certificate(first)
    await client.certd.store.add_certificate(second := issued())
    resp = await client.get("/api/v1/certificates/portal/history", headers=R)
    body = await resp.json()
    assert [i["serial"] for i in body["items"]] == [second.serial, first.serial]
    assert body["items"][0]["issuer_name"] == "CN=portal.example.org"  # self-signed
    text = await resp.text()
    assert "PRIVATE KEY" not in text and "CERTIFICATE" not in text
    assert (await client.get("/api/v1/certificates/nope/history", headers=R)).status == 404


async def test_deployments_say_whether_the_rollout_verified_them(client):
    # `verified` is the stored fact (Deployment.verified_at), never read from the message
    from certd.model import Deployment, DeployStatus, utcnow

    store = client.certd.store
    seen = utcnow()
    await client.certd.add_alias(Alias("shop.example.com", ("web",), "ops"))
    for name in ("portal", "shop.example.com"):
        await store.put_deployment(Deployment(name, "web", "fe1", "0a", DeployStatus.DEPLOYED,
                                              "file[fe1]: placed", verified_at=seen))
        await store.put_deployment(Deployment(  # verify off: the wording alone proves nothing
            name, "web", "fe2", "0a", DeployStatus.DEPLOYED,
            "file[fe2]: placed; verified serving on 127.0.0.3:443"))
        await store.put_deployment(Deployment(name, "web", "fe3", "0a", DeployStatus.ROLLED_BACK,
                                              "verify: serves 09, not 0a", verified_at=seen))
    cert = await (await client.get("/api/v1/certificates/portal", headers=R)).json()
    alias = await (await client.get("/api/v1/domains/shop.example.com", headers=R)).json()
    for body in (cert, alias):
        assert {d["node"]: d["verified"] for d in body["deployments"]} == {
            "fe1": True, "fe2": False, "fe3": False}
    assert {d["node"]: d["verified_at"] for d in cert["deployments"]} == {
        "fe1": seen.isoformat(), "fe2": None, "fe3": None}


def test_matrix_cells_worst_state_wins():
    from certd.dashboard import cell
    assert cell(None, False) == "pending"
    assert cell({"status": "deployed", "current": True}, False) == "current"
    assert cell({"status": "deployed", "current": False}, False) == "stale"
    assert cell({"status": "rolled_back", "current": False}, False) == "failed"
    assert cell({"status": "deploying", "current": True}, False) == "pending"
    assert cell({"status": "deployed", "current": True}, True) == "unreachable"


def test_timeline_moments_window_and_overdue():
    from certd.dashboard import moments, timeline
    from certd.model import CertSummary
    now = utcnow()
    at = lambda days: now + timedelta(days=days)
    # a: 90 days issued 80 days ago, renewal (a third before expiry) overdue; b: failing
    a = CertSummary("a", "01", ("a.example",), at(-80), at(10), at(-80))
    b = CertSummary("b", "02", ("b.example",), at(-10), at(200), at(-10))
    rows = {"a": (a, CertificateState("a", CertStatus.DEPLOYED), None),
            "b": (b, CertificateState("b", CertStatus.FAILED, "x", 3, at(0.5)), None),
            "gone": (a, None, None)}  # stored, no longer configured: not asked for
    found = sorted(moments(rows, ["a", "b", "nothing-stored"], before_expiry=None, ari=True))
    t = timeline(found, now, 90, 300)
    assert [(i["certificate"], i["kind"], i["reason"], i["overdue"]) for i in t["items"]] == [
        ("a", "renewal", "lifetime", True), ("b", "retry", "backoff", False),
        ("a", "expiry", None, False)]
    assert t["total"] == 3 and t["overdue"] == 1
    assert t["per_day"]["renewal"][0] == 1 and t["per_day"]["expiry"][10] == 1
    assert sum(map(sum, t["per_day"].values())) == 3
    assert t["by_reason"] == {"expiry": 1, "renewal:lifetime": 1, "retry:backoff": 1}
    assert [i["kind"] for i in timeline(found, now, 90, 1)["items"]] == ["renewal"]
    assert timeline(found, now, 5, 300)["total"] == 2  # the expiry is 10 days away


def test_matrix_shows_the_worst_aliases_first():
    from certd.dashboard import MAX_ALIAS_ROWS, worst_aliases
    statuses = {f"d{i:03d}.example": ("deployed", "pending", "failed", "awaiting_dns")[i % 4]
                for i in range(100)}
    shown = worst_aliases(statuses)
    assert len(shown) == MAX_ALIAS_ROWS
    assert [statuses[d] for d in shown] == ["failed"] * 20  # 25 failed: the first 20 by name
    assert shown == sorted(shown) and shown[0] == "d002.example"
    assert worst_aliases({"a": "removing", "b": "pending", "c": "deployed"}) == ["b", "a"]
