"""The dashboard with N aliases in the store (default 10,000): `certd run` on a store filled
as bench/api_bench.py fills it, then (unless --bare) made a fleet: 98 % of the aliases hold
a certificate (issued over the last 60 days, 90-day lifetime), are `deployed` and recorded on
both nodes; the other 2 % `failed` with a retry planned, so the timeline has ~20,000 moments
in 90 days and the overview's matrix has aliases to show (--bare: as api_bench leaves them:
no certificate, every order failing at the unreachable CA). The monitor is off (the bench's
nodes do not exist: it would mark every cell unreachable). Then Debian's headless
Chromium (tests/lab/browser.py) signs in and opens each page R times. Reported per page:

  - load: from the navigation (hash change) until the page's content is in the DOM, measured
    in the page (its status line: the API requests + building the DOM), median and max;
  - API: the JSON the page fetched (bytes on the wire, from the browser's resource timing);
  - and once: the cold load of /ui/ (the three static files, their weight) until signed in;
  - the API endpoints alone (timed from Python): the server's share of a page's load.

    .venv/bin/python bench/ui_bench.py [-n 10000] [-r 5]

Not a test: no assertion. Target (issue 15): pages load in under 300 ms with 10,000 aliases.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._proc import free_port, rss_mb, stop
from bench.api_bench import TOKEN, alias_domain, config_data, populate, wait_for
from tests.lab import browser

PAGES = ["overview", "timeline", "aliases", "alerts", "events", "aliases/{alias}",
         "certificates/{alias}"]
STATIC = ("/ui/", "/ui/app.js", "/ui/app.css")


def open_page(chromium, page: str) -> tuple[float, int, int]:
    """(load ms as the page measured it, API bytes fetched, API requests)."""
    d = chromium.driver
    d.execute_script("performance.clearResourceTimings();"
                     "document.getElementById('view').removeAttribute('data-page');"
                     "document.getElementById('status').textContent = '';"
                     "if (location.hash === arguments[0])"
                     "  window.dispatchEvent(new HashChangeEvent('hashchange'));"
                     "else location.hash = arguments[0];", "#/" + page)
    deadline = time.monotonic() + 120
    text = ""
    while time.monotonic() < deadline:
        text = d.execute_script("return document.getElementById('status').textContent")
        if text.startswith("Loaded"):
            break
        time.sleep(0.01)
    else:
        raise SystemExit(f"{page}: not loaded: {text!r}")
    ms = float(re.search(r"in (\d+) ms", text).group(1))
    entries = d.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/'))"
        ".map(e => e.transferSize || e.encodedBodySize)")
    return ms, sum(entries), len(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="aliases in the store")
    parser.add_argument("-r", type=int, default=5, help="loads of each page")
    parser.add_argument("--screenshots", type=Path, help="save a PNG of each page here")
    parser.add_argument("--bare", action="store_true",
                        help="aliases only: no certificates, no deployments")
    args = parser.parse_args()
    if (why := browser.available()) is not None:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory(prefix="certd-ui-") as tmp:
        root = Path(tmp)
        api_port = free_port()
        data = config_data(root, api_port)
        (root / "state").mkdir(mode=0o700)
        (root / "api-tokens").write_text(f"bench {TOKEN}\n")
        (root / "api-tokens").chmod(0o600)
        t0 = time.perf_counter()
        asyncio.run(populate(root / "state" / "certd.db", args.n))
        if not args.bare:
            asyncio.run(fleet(root / "state" / "certd.db", args.n))
        print(f"store: {args.n} aliases added{'' if args.bare else ', a fleet made of them'} "
              f"in {time.perf_counter() - t0:.1f} s")
        data["monitor"] = {"enabled": False}
        config_path = root / "config.yaml"
        config_path.write_text(yaml.safe_dump(data))
        log_path = root / "certd.log"
        with open(log_path, "w") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "certd", "-c", str(config_path), "run"],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            up = wait_for(log_path, "api listening", 120, daemon)
            swept = wait_for(log_path, "sweep done", 1800, daemon)
            print(f"api listening after {up:.1f} s; first sweep done {up + swept:.1f} s")
            base = f"http://127.0.0.1:{api_port}"
            weights = {p: len(requests.get(base + p, timeout=10).content) for p in STATIC}
            print("static files: " + ", ".join(f"{p} {w / 1024:.1f} KiB"
                                                for p, w in weights.items())
                  + f" (total {sum(weights.values()) / 1024:.1f} KiB, uncompressed)")
            api_times(base)
            with browser.Chromium(root / "chromium") as chromium:
                measure(chromium, base, args)
            print(f"daemon RSS at the end: {rss_mb(daemon.pid):.0f} MB")
        finally:
            stop(daemon)


FAILING = 50  # one alias in FAILING fails (the rest is deployed)


async def fleet(path: Path, n: int) -> None:
    """The aliases of populate() as a deployed fleet: a certificate each (one real key and
    leaf, so the records are well-formed; the serial, names and dates per alias), `deployed`
    on both nodes; every FAILING-th alias failed instead, retrying within the day."""
    from dataclasses import replace
    from datetime import timedelta

    from certd.model import (
        CertificateState,
        CertStatus,
        Deployment,
        DeployStatus,
        utcnow,
    )
    from certd.store.sqlite import SqliteStore
    from tests.test_deploy_file import issued

    base, now = issued(), utcnow()
    store = SqliteStore(path)
    await store.open()
    try:
        async with store.transaction():
            for i in range(n):
                name = alias_domain(i)
                if i % FAILING == FAILING - 1:
                    await store.put_state(CertificateState(
                        name, CertStatus.FAILED, "urn:ietf:params:acme:error:dns: NXDOMAIN", 2,
                        now + timedelta(minutes=7 * (i % 200))))
                    continue
                start = now - timedelta(days=60 * i / n, minutes=5)
                cert = replace(base, name=name, serial=f"{i + 1:032x}", domains=(name,),
                               not_before=start, not_after=start + timedelta(days=90),
                               issued_at=start)
                await store.add_certificate(cert)
                await store.put_state(CertificateState(name, CertStatus.DEPLOYED))
                for node in ("fe1", "fe2"):
                    await store.put_deployment(Deployment(
                        name, "web", node, cert.serial, DeployStatus.DEPLOYED,
                        f"file[{node}]: placed; verified serving on 127.0.0.2:443", start,
                        "bench", 0.5, verified_at=start))
    finally:
        await store.close()


API = ("/api/v1/overview", "/api/v1/timeline?days=90", "/api/v1/timeline?days=180",
       "/api/v1/domains?limit=50", "/api/v1/events?limit=100", "/api/v1/alerts")


def api_times(base: str, runs: int = 7) -> None:
    """The server's share: each endpoint the pages read, timed from this process."""
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        for path in API:
            times, size = [], 0
            for _ in range(runs):
                t0 = time.perf_counter()
                resp = http.get(base + path, timeout=60)
                times.append((time.perf_counter() - t0) * 1000)
                size = len(resp.content)
            print(f"API {path:<28} median {statistics.median(times):6.0f} ms, "
                  f"min {min(times):5.0f} ms, first {times[0]:5.0f} ms, {size / 1024:7.1f} KiB")
        # the timeline's moments are kept against the store's change stamp: after a write
        # (here: an alias added) the kept ones answer while a background read replaces them
        after, fresh = [], []
        for i in range(3):
            http.post(base + "/api/v1/domains", json={"domain": f"bench-write-{i}.example.com"},
                      timeout=60).raise_for_status()
            t0 = time.perf_counter()
            first = http.get(base + "/api/v1/timeline?days=90", timeout=60).json()["as_of"]
            after.append((time.perf_counter() - t0) * 1000)
            while http.get(base + "/api/v1/timeline?limit=0", timeout=60).json()["as_of"] == first:
                time.sleep(0.01)
            fresh.append((time.perf_counter() - t0) * 1000)
        print("API /api/v1/timeline after a write: "
              + ", ".join(f"{t:.0f}" for t in after) + " ms (the kept moments); the new ones "
              "read in the background, served after " + ", ".join(f"{t:.0f}" for t in fresh)
              + " ms")


def measure(chromium, base: str, args: argparse.Namespace) -> None:
    d = chromium.driver
    t0 = time.perf_counter()
    d.get(base + "/ui/")
    d.find_element("id", "token").send_keys(TOKEN)
    d.find_element("id", "login-submit").click()
    while not (d.execute_script("return document.getElementById('status').textContent")
               .startswith("Loaded")):
        time.sleep(0.01)
    print(f"cold: /ui/ opened, signed in, overview shown in "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms (wall clock, incl. WebDriver)")
    alias = alias_domain(args.n // 2)
    print(f"{'page':<28} {'median ms':>9} {'max ms':>7} {'API KiB':>8} {'requests':>8}")
    for page in PAGES:
        page = page.format(alias=alias)
        results = [open_page(chromium, page) for _ in range(args.r)]
        times = [r[0] for r in results]
        print(f"{page[:28]:<28} {statistics.median(times):>9.0f} {max(times):>7.0f} "
              f"{results[-1][1] / 1024:>8.1f} {results[-1][2]:>8}")
        if args.screenshots:
            args.screenshots.mkdir(parents=True, exist_ok=True)
            d.save_screenshot(str(args.screenshots / (page.replace("/", "_") + ".png")))
    errors = [e for e in chromium.logs() if e["level"] == "SEVERE"]
    print(f"console errors: {len(errors)}")


if __name__ == "__main__":
    main()
