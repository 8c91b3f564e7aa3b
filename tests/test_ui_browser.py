"""The dashboard in Debian's headless Chromium against the API alone (no CA, no nodes: a
config whose ACME directory nothing listens on, served on a real 127.0.0.1 port): what needs
many aliases or no lab. Pagination through the API's cursor, the status and text filters, a
refused token, keyboard use (the add form and the pages reachable with Tab and Enter), the
session forgotten on sign-out. The lab's daemon is driven in tests/test_ui_lab.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from certd.api.tokens import parse
from certd.dashboard import MAX_ALIAS_ROWS
from certd.model import Alias, CertificateState, CertStatus, Event, utcnow
from certd.store import make_store
from tests.certd_api import api_config, live_api
from tests.lab import browser
from tests.lab.procs import running

_browser_installed = pytest.fixture(autouse=True)(browser.require)

TOKEN = "ui-browser-token-0123456789"
N = 120  # aliases: three pages of 50
FAILED = 7  # of them failed
CERTS, NODES = 50, 20  # configured certificates x nodes in the matrix
EVENTS = 230  # three pages of 100


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui-browser")
    # the scale for the matrix: 50 configured certificates x 20 nodes
    nodes = [{"name": f"node{i:02d}", "address": f"127.0.1.{i + 1}"} for i in range(NODES)]
    cfg = api_config(tmp, domains={"default_frontends": ["web"], "preflight": False,
                                   "allow_special_use": ["example"]},
                     frontends={"web": {"nodes": nodes, "deployer": {
                         "type": "file", "path": str(tmp) + "/{node}/{certificate}"}}},
                     certificates=[{"name": f"site{i:02d}", "domains": [f"site{i:02d}.example.org"],
                                    "frontends": ["web"]} for i in range(CERTS)])

    async def plant():
        store = make_store(cfg)
        await store.open()
        try:
            for i in range(N):
                await store.add_alias(Alias(f"a{i:03d}.example.com", ("web",), "ops"))
            for i in range(FAILED):
                await store.put_state(CertificateState(
                    f"a{i * 10:03d}.example.com", CertStatus.FAILED, last_error="CA said no",
                    attempts=1, next_attempt_at=utcnow() + timedelta(hours=i + 1)))
            for i in range(EVENTS):
                await store.add_event(Event("api.domain.add", f"event {i}",
                                            certificate=f"a{i % N:03d}.example.com",
                                            data={"token": "ops"}))
        finally:
            await store.close()

    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    asyncio.run(plant())
    with live_api(cfg, parse(f"ops {TOKEN}\n", "tokens")) as base:
        yield base


@pytest.fixture
def chromium(tmp_path):
    with browser.Chromium(tmp_path / "chromium") as b:
        yield b
        pids = b.pids()  # chromedriver, the browser's processes, its crash handler
    # quit() and the PID check in stop() done: none of them is left
    assert len(pids) > 2 and not [p for p in pids if running(p)], pids


_until = browser.until_rendered


def _rows(d) -> list[str]:
    from selenium.webdriver.common.by import By
    return [r.get_attribute("data-domain")
            for r in d.find_elements(By.CSS_SELECTOR, "#view tr[data-domain]")]


def test_refused_token_stays_on_the_sign_in_form(site, chromium):
    from selenium.webdriver.common.by import By

    d = chromium.driver
    d.get(site + "/ui/")
    d.find_element(By.ID, "token").send_keys("not-the-token-0123456789")
    d.find_element(By.ID, "login-submit").click()
    _until(lambda: "401" in d.find_element(By.ID, "login-error").text, "refusal shown")
    assert d.find_element(By.ID, "nav").get_attribute("hidden") is not None
    assert d.execute_script("return sessionStorage.getItem('certd.token')") is None
    # short or odd tokens are refused before any request
    d.find_element(By.ID, "token").send_keys("short")
    d.find_element(By.ID, "login-submit").click()
    _until(lambda: "16" in d.find_element(By.ID, "login-error").text, "length refusal")


def test_pages_filters_keyboard_and_sign_out(site, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    d = chromium.driver
    d.get(site + "/ui/")
    box = d.find_element(By.ID, "token")
    box.send_keys(TOKEN)
    box.send_keys(Keys.ENTER)  # the form submits from the keyboard
    _until(lambda: d.find_element(By.ID, "who").text == "ops (admin)", "signed in")
    _until(lambda: d.find_element(By.ID, "view").get_attribute("data-page") == "overview",
           "overview")
    cards = {c.get_attribute("data-status"): c.text.split()[0]
             for c in d.find_elements(By.CSS_SELECTOR, ".card[data-status]")}
    assert cards == {"failed": str(FAILED), "pending": str(N - FAILED + CERTS)}
    # the matrix at 50 x 20 fits a laptop's width (1366 px): no horizontal scrolling; under
    # the configured certificates, the aliases not deployed, worst (failed) first, at most
    # MAX_ALIAS_ROWS of them, the rest counted
    rows = CERTS + MAX_ALIAS_ROWS
    assert len(d.find_elements(By.CSS_SELECTOR, "#matrix tbody tr")) == rows
    assert len(d.find_elements(By.CSS_SELECTOR, "#matrix td.cell")) == rows * NODES
    aliases = [r.get_attribute("data-certificate")
               for r in d.find_elements(By.CSS_SELECTOR, "#matrix tr[data-alias]")]
    assert aliases[:FAILED] == [f"a{i * 10:03d}.example.com" for i in range(FAILED)]
    assert len(aliases) == MAX_ALIAS_ROWS
    assert (f"{N} of {N} aliases are not deployed" in d.find_element(By.ID, "matrix-aliases").text
            and f"{N - MAX_ALIAS_ROWS} more are not shown" in
            d.find_element(By.ID, "matrix-aliases").text)
    width = d.execute_script("return [document.documentElement.scrollWidth, window.innerWidth,"
                             " document.getElementById('matrix').getBoundingClientRect().right]")
    assert width[0] <= width[1] and width[2] <= width[1], width
    chromium.screenshot("matrix")

    # keyboard: Tab from the brand reaches the nav links, Enter opens one
    d.find_element(By.CSS_SELECTOR, ".brand").send_keys(Keys.TAB, Keys.TAB, Keys.TAB)
    assert d.switch_to.active_element.get_attribute("data-page") == "aliases"
    d.switch_to.active_element.send_keys(Keys.ENTER)
    _until(lambda: len(_rows(d)) == 50, "first page")
    seen = _rows(d)
    assert seen == [f"a{i:03d}.example.com" for i in range(50)]
    for page in (2, 3):
        d.find_element(By.ID, "next").click()
        _until(lambda seen=tuple(seen): _rows(d) and _rows(d)[0] not in seen, f"page {page}")
        seen += _rows(d)
    assert seen == [f"a{i:03d}.example.com" for i in range(N)]
    assert d.find_element(By.ID, "next").get_attribute("disabled") is not None
    d.find_element(By.ID, "prev").click()
    _until(lambda: _rows(d) and _rows(d)[0] == "a050.example.com", "back one page")

    # filters: status, then text (server-side: the API's ?status= and ?q=)
    Select(d.find_element(By.ID, "filter-status")).select_by_value("failed")
    d.find_element(By.ID, "filter-q").send_keys(Keys.ENTER)
    _until(lambda: len(_rows(d)) == FAILED, "failed ones")
    assert _rows(d) == [f"a{i * 10:03d}.example.com" for i in range(FAILED)]
    Select(d.find_element(By.ID, "filter-status")).select_by_value("")
    d.find_element(By.ID, "filter-q").send_keys("a11", Keys.ENTER)
    _until(lambda: _rows(d) == [f"a11{i}.example.com" for i in range(10)], "text filter")

    # the timeline shows the planted retries
    d.execute_script("location.hash = '#/timeline'")
    _until(lambda: d.find_elements(By.CSS_SELECTOR, "#timeline-chart rect.retry"), "retries")
    assert "backoff" in d.find_element(By.ID, "view").text
    assert d.find_element(By.ID, "timeline-summary").text.startswith(f"{FAILED} moments")
    chromium.screenshot("timeline")
    stats = browser.png_stats(chromium.workdir / "timeline.png")
    assert stats["colours"] >= 8 and stats["dominant"] < 0.97, stats
    for days in ("30", "180"):  # the window is chosen on the page
        Select(d.find_element(By.ID, "timeline-days")).select_by_value(days)
        _until(lambda days=days: d.find_element(By.CSS_SELECTOR, "#view h1").text
               == f"Timeline: next {days} days", f"{days} days")
        # the retries are hours away: one bar of today, counted by the server
        assert d.find_element(By.ID, "timeline-summary").text.startswith(f"{FAILED} moments")
        assert d.find_element(By.CSS_SELECTOR, "#timeline-chart rect.retry title").get_attribute(
            "textContent") == f"day 0: {FAILED} retry"

    # the event log pages by the API's cursor, newest first
    d.execute_script("location.hash = '#/events'")

    def messages():
        return [r.find_elements(By.TAG_NAME, "td")[-1].text
                for r in d.find_elements(By.CSS_SELECTOR, "#view tr[data-kind]")]

    _until(lambda: messages()[:1] == [f"event {EVENTS - 1}"], "events")
    assert d.find_element(By.ID, "events-prev").get_attribute("disabled") is not None
    seen = messages()
    while d.find_element(By.ID, "events-next").get_attribute("disabled") is None:
        d.find_element(By.ID, "events-next").click()
        _until(lambda before=tuple(seen): messages() and messages()[0] not in before,
               "older events")
        seen += messages()
    assert seen == [f"event {i}" for i in reversed(range(EVENTS))]
    d.find_element(By.ID, "events-prev").click()
    _until(lambda: messages()[:1] == [f"event {EVENTS - 101}"], "newer page")

    # sign out: the token leaves the tab
    d.find_element(By.ID, "logout").click()
    _until(lambda: d.find_element(By.ID, "login").get_attribute("hidden") is None, "sign-in form")
    assert d.execute_script("return sessionStorage.getItem('certd.token')") is None
    bad = [e for e in chromium.logs() if e["level"] in ("SEVERE", "WARNING")]
    assert bad == [], bad
