"""The dashboard in a real browser (Debian's headless Chromium, driven by Selenium through
chromedriver) against a running `certd run` in the lab (pebble, haproxy, two nginx nodes):
sign in; the lab's certificate served on both nodes in the overview's matrix; an alias added
through the form reaches `deployed` (and both nodes serve it), then is removed through the
page; a refused name shows the policy's error inline; a read-only token sees no button and the
API answers it 403; markup in an error or event message is shown as text and never runs; the
strict CSP on every /ui/ response, enforced by the browser, with no console error; a
screenshot of each page (checked: a real render, not a blank page), kept under the test's
temp dir."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
import requests

from certd import config as configuration
from certd.api.ui import CSP
from certd.model import Alias, CertificateState, CertStatus, Event, utcnow
from certd.store import make_store
from tests.certd_lab import Daemon, lab_config_data, served_serial, write_config
from tests.lab import browser
from tests.lab.procs import running, wait_until

pytestmark = pytest.mark.lab
_browser_installed = pytest.fixture(autouse=True)(browser.require)

ADMIN = "ui-lab-admin-token-0123456789"
VIEWER = "ui-lab-view-token-0123456789"
CERT = "ui-site"
CERT_NAME = "ui-site.test"
OTHERS = ("ui-api", "ui-shop")  # more rows in the matrix
ALIAS = "ui-customer.test"
WAITING_ALIAS = "ui-waiting.test"  # planted: added, not yet picked up (pending)
HOSTILE_ALIAS = "ui-hostile.test"
HOSTILE = ('<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'
           '<b id="injected">bold</b>')


@pytest.fixture(scope="module")
def dashboard(lab, tmp_path_factory):
    """`certd run` with one configured certificate and aliases on the `web` frontend, its
    configured certificate deployed on both nodes; yields (base URL, config, tmp dir)."""
    tmp = tmp_path_factory.mktemp("ui")
    lab.set_sites({CERT: [CERT_NAME], ALIAS: [ALIAS], HOSTILE_ALIAS: [HOSTILE_ALIAS],
                   **{name: [f"{name}.test"] for name in OTHERS}})
    # a CA of its own issuing Let's Encrypt's 90 days (pebble's default, 5 years, is a
    # finding of the monitor, and puts nothing in the timeline's window)
    pebble = lab.start_pebble(validity_seconds=90 * 86400)
    data = lab_config_data(lab, tmp / "state", [
        {"name": name, "domains": [f"{name}.test"], "frontends": ["web"]}
        for name in (CERT, *OTHERS)], pebble)
    data["domains"]["default_frontends"] = ["web"]
    # the monitor trusts the lab CA (a new pebble root per run), as a fleet trusts its CA's
    # root: its findings are the fleet's, not "does not verify against the trust store"
    (tmp / "pebble-root.pem").write_text(pebble.root_pem())
    data["monitor"] = {"ca_bundle": str(tmp / "pebble-root.pem")}
    data["api"]["tokens_file"] = str(tmp / "tokens")
    (tmp / "tokens").write_text(f"ops {ADMIN} admin\nviewer {VIEWER} read\n")
    (tmp / "tokens").chmod(0o600)
    daemon = Daemon(write_config(tmp / "c.yaml", data), tmp / "certd.log")
    base = f"http://{data['api']['listen']}"
    try:
        daemon.wait_log("api listening")
        wait_until(lambda: {c["status"] for c in _get(base, "/api/v1/certificates")["items"]}
                   == {"deployed"}, 180, interval=0.5, what="the certificates deployed")
        yield base, configuration.parse(data), tmp
    finally:
        try:
            assert daemon.stop() == 0, daemon.log_tail()
        finally:
            pebble.stop()


async def _store_call(cfg, call):
    """`call(store)` on a store handle of the daemon's config, opened for it alone."""
    store = make_store(cfg)
    await store.open()
    try:
        return await call(store)
    finally:
        await store.close()


def _get(base: str, path: str, token: str = ADMIN) -> dict:
    resp = requests.get(base + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return resp.json()


@pytest.fixture
def chromium(tmp_path):
    with browser.Chromium(tmp_path / "chromium") as b:
        yield b
        pids = b.pids()  # chromedriver, the browser's processes, its crash handler
    # quit() and the PID check in stop() done: none of them is left
    assert len(pids) > 2 and not [p for p in pids if running(p)], pids


def _sign_in(chromium, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    d = chromium.driver
    d.get(base + "/ui/")
    field = d.find_element(By.ID, "token")
    assert field.get_attribute("type") == "password"
    field.send_keys(token)
    d.find_element(By.ID, "login-submit").click()
    _until(lambda: d.find_element(By.ID, "who").text, 30, what="signed in")
    # the token is in the tab's session storage, never in a URL or a cookie
    assert d.execute_script("return sessionStorage.getItem('certd.token')") == token
    assert token not in d.current_url and d.get_cookies() == []


def _open(chromium, page: str, ready_css: str, timeout: float = 30):
    """Navigate to `#/page` and wait for the page's content (`ready_css` inside #view)."""
    from selenium.webdriver.common.by import By

    d = chromium.driver
    # the page shown again when it is the one already open (no hashchange then)
    d.execute_script("document.getElementById('view').removeAttribute('data-page');"
                     "if (location.hash === arguments[0])"
                     "  window.dispatchEvent(new HashChangeEvent('hashchange'));"
                     "else location.hash = arguments[0];", "#/" + page)
    first = page.split("/")[0]
    _until(lambda: d.find_element(By.ID, "view").get_attribute("data-page") == first
               and d.find_elements(By.CSS_SELECTOR, "#view " + ready_css), timeout,
               what=f"page {page} ({ready_css})")
    return d.find_element(By.ID, "view")


def _check_screenshot(chromium, name: str) -> None:
    path = chromium.screenshot(name)
    stats = browser.png_stats(path)
    assert path.stat().st_size > 10_000, (path, path.stat().st_size)
    assert stats["width"] >= 1000 and stats["height"] >= 600, stats
    assert stats["colours"] >= 8 and stats["dominant"] < 0.97, (path, stats)  # not blank


def _no_console_errors(chromium, *expected: int) -> None:
    """Nothing logged at WARNING or above (a CSP violation, a script error), but the failed
    loads of `expected` statuses the test caused on purpose (Chromium logs a fetch's 4xx)."""
    allowed = tuple(f"status of {status} " for status in expected)
    bad = [e for e in chromium.logs() if e["level"] in ("SEVERE", "WARNING")
           and not ("Failed to load resource" in e["message"]
                    and any(a in e["message"] for a in allowed))]
    assert bad == [], bad


def _until(predicate, timeout: float, what: str):
    return browser.until_rendered(predicate, what, timeout, interval=0.1)


def _headers_strict(base: str) -> None:
    for path in ("/ui/", "/ui/app.js", "/ui/app.css", "/ui/index.html", "/ui/missing.js"):
        resp = requests.get(base + path, timeout=10)
        assert resp.headers["Content-Security-Policy"] == CSP, path
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        assert resp.headers["Referrer-Policy"] == "no-referrer", path


def test_operator_sees_the_fleet_adds_and_removes_an_alias(lab, dashboard, chromium):
    from selenium.webdriver.common.by import By

    base, cfg, _ = dashboard
    _headers_strict(base)
    _sign_in(chromium, base, ADMIN)
    d = chromium.driver

    # overview: the configured certificate, the serial both nodes really serve, "current"
    serial = _get(base, f"/api/v1/certificates/{CERT}")["serial"]
    for node in lab.nodes:
        assert served_serial(lab, node.name, CERT_NAME) == serial
    view = _open(chromium, "overview", f"tr[data-certificate='{CERT}']")
    row = view.find_element(By.CSS_SELECTOR, f"tr[data-certificate='{CERT}']")
    cells = {c.get_attribute("data-node"): (c.get_attribute("data-state"), c.text,
                                             c.get_attribute("class"))
             for c in row.find_elements(By.CSS_SELECTOR, "td.cell")}
    # the state as colour (the class) and as text (a short word, in full in the legend)
    assert cells == {"web/fe1": ("current", "ok", "cell st-current"),
                     "web/fe2": ("current", "ok", "cell st-current")}
    assert "ok current" in view.find_element(By.CSS_SELECTOR, ".legend").text
    _check_screenshot(chromium, "overview")

    # certificate page: names, serial, both nodes' deployments; admin's buttons there
    view = _open(chromium, f"certificates/{CERT}", "#last-error")
    assert CERT_NAME in view.text and serial in view.text
    nodes = {r.get_attribute("data-node") for r in
             view.find_elements(By.CSS_SELECTOR, "tr[data-node]")}
    assert nodes == {"web/fe1", "web/fe2"}
    # the rollout saw each node serve it after the reload (frontends.web.verify, the default)
    assert [c.text for c in view.find_elements(By.CSS_SELECTOR, "tr[data-node] td.verified")
            ] == ["yes", "yes"]
    assert d.find_elements(By.ID, "renew") and d.find_elements(By.ID, "deploy")
    assert [r.get_attribute("data-serial") for r in
            view.find_elements(By.CSS_SELECTOR, "tr[data-serial]")] == [serial]
    assert "Pebble" in view.text  # the issuing CA's name, from the certificate
    _check_screenshot(chromium, "certificate")

    # the timeline: one bar segment per (day, kind) that has moments; the lab CA's
    # certificates may outlive the 90 days, so compare with the API rather than expect one
    view = _open(chromium, "timeline", "#timeline-chart")
    moments = _get(base, "/api/v1/timeline?days=90")["items"]
    days = {(m["kind"], max(0, (datetime.fromisoformat(m["at"]) - utcnow()).days))
            for m in moments}
    bars = d.find_elements(By.CSS_SELECTOR, "#timeline-chart rect")
    assert abs(len(bars) - len(days)) <= len(days) // 10 + 1, (len(bars), days)  # day edges
    assert len(view.find_elements(By.CSS_SELECTOR, "tbody tr")) == max(1, len(moments))
    _check_screenshot(chromium, "timeline")

    # a refused name: the policy's words inline, as text
    view = _open(chromium, "aliases", "#add-form")
    box = d.find_element(By.ID, "add-domain")
    box.send_keys("*.wild.test")
    d.find_element(By.ID, "add-submit").click()
    _until(lambda: d.find_element(By.ID, "add-error").text, 20, what="inline error")
    assert "wildcard" in d.find_element(By.ID, "add-error").text
    box.clear()
    box.send_keys("<b>x</b>.test")
    d.find_element(By.ID, "add-submit").click()
    _until(lambda: "wildcard" not in d.find_element(By.ID, "add-error").text
               and d.find_element(By.ID, "add-error").text, 20, what="second inline error")
    assert d.find_elements(By.CSS_SELECTOR, "#add-error *") == []  # no element from the text
    _check_screenshot(chromium, "aliases-refused")

    # add through the form; the page follows it to `deployed`
    box.clear()
    box.send_keys(ALIAS)
    d.find_element(By.ID, "add-submit").click()
    _until(lambda: d.find_elements(By.ID, "alias-status")
               and d.find_element(By.ID, "title").text == ALIAS, 30, "alias page")
    _until(lambda: d.find_element(By.ID, "alias-status").text in ("deployed", "failed"),
               240, what=f"{ALIAS} deployed or failed")
    alias = _get(base, f"/api/v1/domains/{ALIAS}")
    assert d.find_element(By.ID, "alias-status").text == "deployed", alias
    alias_serial = alias["certificate"]["serial"]
    for node in lab.nodes:
        assert served_serial(lab, node.name, ALIAS) == alias_serial
    _until(lambda: len(d.find_elements(By.CSS_SELECTOR, "#view tr[data-node]")) == 2, 30,
               what="both deployments listed")
    assert [c.text for c in d.find_elements(By.CSS_SELECTOR, "#view td.verified")] == [
        "yes", "yes"]
    assert {d["verified"] for d in alias["deployments"]} == {True}
    _check_screenshot(chromium, "alias")
    view = _open(chromium, "overview", f"tr[data-certificate='{CERT}']")
    # a deployed alias is counted, not a row of the matrix (that lists those not deployed)
    assert len(view.find_elements(By.CSS_SELECTOR, "tr[data-certificate]")) == 1 + len(OTHERS)
    assert "Every alias (1) is deployed" in d.find_element(By.ID, "matrix-aliases").text

    # one more alias, as another process adds it (straight into the store): pending until the
    # daemon's next sweep picks it up, a row of the matrix meanwhile
    asyncio.run(_store_call(cfg, lambda s: s.add_alias(Alias(WAITING_ALIAS, ("web",), "ops"))))
    try:
        view = _open(chromium, "overview", f"tr[data-certificate='{WAITING_ALIAS}']")
        row = view.find_element(By.CSS_SELECTOR, f"tr[data-certificate='{WAITING_ALIAS}']")
        assert row.get_attribute("data-alias") == "1" and "pending" in row.text
        assert "1 of 2 aliases are not deployed" in d.find_element(By.ID, "matrix-aliases").text
        # the lab's monitor trusts its CA: no finding says the chain does not verify
        assert "trust store" not in d.find_element(By.ID, "view").text
        _check_screenshot(chromium, "overview-with-alias")  # docs/dashboard.png comes from here
    finally:
        asyncio.run(_store_call(cfg, lambda s: s.delete_alias(WAITING_ALIAS)))

    # remove it through the page (with its confirmation)
    _open(chromium, f"aliases/{ALIAS}", "#remove")
    d.find_element(By.ID, "remove").click()
    d.switch_to.alert.accept()
    wait_until(lambda: requests.get(base + f"/api/v1/domains/{ALIAS}", timeout=10, headers={
        "Authorization": f"Bearer {ADMIN}"}).status_code == 404, 120, interval=0.5,
        what="alias forgotten")
    for node in lab.nodes:
        wait_until(lambda node=node: served_serial(lab, node.name, ALIAS) != alias_serial, 30, interval=0.5,
                   what=f"{node.name} no longer serves {ALIAS}")

    # the audit log names the token
    view = _open(chromium, "events", "tr[data-kind='api.domain.remove']")
    added = [r.text for r in view.find_elements(By.CSS_SELECTOR, "tr[data-kind='api.domain.add']")]
    assert added and all("ops" in r for r in added)
    _check_screenshot(chromium, "events")
    _open(chromium, "alerts", "table")
    _check_screenshot(chromium, "alerts")
    _no_console_errors(chromium, 404, 422)  # the refused names; the removed alias's page

    # the CSP is in force: a script injected into the page is refused, and says so
    d.execute_script("const s = document.createElement('script');"
                     "s.textContent = 'window.__pwned = 1'; document.body.append(s);")
    assert d.execute_script("return window.__pwned") is None
    refused = [e["message"] for e in chromium.logs() if e["level"] == "SEVERE"]
    assert any("Content Security Policy" in m for m in refused), refused


def test_read_only_token_sees_but_cannot_change(dashboard, chromium):
    from selenium.webdriver.common.by import By

    base, _, _ = dashboard
    _sign_in(chromium, base, VIEWER)
    d = chromium.driver
    assert "viewer (read)" in d.find_element(By.ID, "who").text
    _open(chromium, "overview", f"tr[data-certificate='{CERT}']")
    _open(chromium, f"certificates/{CERT}", "#last-error")
    assert d.find_elements(By.CSS_SELECTOR, "#view button") == []  # no renew, no deploy
    _open(chromium, "aliases", "#filters")
    assert d.find_elements(By.ID, "add-form") == []
    _check_screenshot(chromium, "read-only")
    # and the API refuses the token, called from the page itself with its session's token
    statuses = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const h = {"Authorization": "Bearer " + sessionStorage.getItem("certd.token"),
                   "Content-Type": "application/json"};
        Promise.all([
          fetch("/api/v1/certificates/ui-site/renew", {method: "POST", headers: h}),
          fetch("/api/v1/certificates/ui-site/deploy", {method: "POST", headers: h}),
          fetch("/api/v1/domains", {method: "POST", headers: h,
                                    body: JSON.stringify({domain: "ro.example.test"})}),
          fetch("/api/v1/domains/ui-site.test", {method: "DELETE", headers: h}),
        ]).then(rs => done(rs.map(r => r.status)), e => done(String(e)));""")
    assert statuses == [403, 403, 403, 403]
    _no_console_errors(chromium, 403)


def test_markup_in_errors_and_events_is_shown_as_text(lab, dashboard, chromium):
    from selenium.webdriver.common.by import By

    base, cfg, _ = dashboard
    lab.add_a(HOSTILE_ALIAS, "127.0.0.9")  # nothing serves there: its preflight fails
    try:
        resp = requests.post(base + "/api/v1/domains", json={"domain": HOSTILE_ALIAS},
                             headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
        assert resp.status_code == 202, resp.text
        wait_until(lambda: _get(base, f"/api/v1/domains/{HOSTILE_ALIAS}")["status"] == "failed",
                   120, interval=0.5, what="preflight failure")
    finally:
        lab.clear_a(HOSTILE_ALIAS)

    async def plant():  # as if the CA's problem detail and an event held markup
        store = make_store(cfg)
        await store.open()
        try:
            await store.put_state(CertificateState(
                HOSTILE_ALIAS, CertStatus.FAILED, last_error=HOSTILE, attempts=1,
                next_attempt_at=utcnow() + timedelta(days=1)))
            await store.add_event(Event("issue.failed", HOSTILE, certificate=HOSTILE_ALIAS))
        finally:
            await store.close()

    asyncio.run(plant())
    assert _get(base, f"/api/v1/domains/{HOSTILE_ALIAS}")["last_error"] == HOSTILE
    _sign_in(chromium, base, ADMIN)
    d = chromium.driver
    for page in (f"aliases/{HOSTILE_ALIAS}", f"certificates/{HOSTILE_ALIAS}"):
        view = _open(chromium, page, "#last-error")
        assert view.find_element(By.ID, "last-error").text == HOSTILE
        rows = view.find_elements(By.CSS_SELECTOR, "tr[data-kind='issue.failed'] td.message")
        assert HOSTILE in [r.text for r in rows]
    _check_screenshot(chromium, "hostile")
    view = _open(chromium, "aliases", f"tr[data-domain='{HOSTILE_ALIAS}']")
    assert HOSTILE in view.text
    _open(chromium, "events", "tr[data-kind='issue.failed']")
    # nothing the text held became an element, nothing ran
    assert d.find_elements(By.CSS_SELECTOR, "#view script, #view img, #injected") == []
    assert d.execute_script("return window.__pwned") is None
    _no_console_errors(chromium)
    requests.delete(base + f"/api/v1/domains/{HOSTILE_ALIAS}",
                    headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
