"""Debian's headless Chromium driven by Selenium through Debian's chromedriver (no browser
download: both come from the `chromium` and `chromium-driver` packages, see scripts/test).

`Chromium` starts chromedriver (which starts the browser) with a private user-data directory,
collects the browser's console log, saves screenshots, and on `stop()` quits the browser and
then checks by PID that chromedriver and every Chromium process it started are gone (any
left are ended by PID, and `stop()` fails). `png_stats` reads a screenshot back (pure Python:
no imaging library in the test dependencies) to tell a real render from a blank page."""

from __future__ import annotations

import os
import shutil
import struct
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Self

from tests.lab.procs import LabError, descendants, running, start_time, stop_pids

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
QUIT_GRACE = 10.0  # seconds for every browser process to be gone after quit()


def available() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing (pip install -r requirements/test.lock)"
    return None


def require() -> None:
    """Fail (never skip) a browser test on a machine without the browser: scripts/test
    installs it, so its absence is a broken setup to see, not a test to leave out."""
    import pytest

    why = available()
    if why is not None:
        pytest.fail(why, pytrace=False)


class Chromium:
    def __init__(self, workdir: Path, *, width: int = 1366, height: int = 900):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", f"--user-data-dir={workdir / 'profile'}",
                    f"--window-size={width},{height}", "--no-first-run",
                    "--no-default-browser-check", "--disable-extensions",
                    "--disable-background-networking", "--disable-sync",
                    "--disable-component-update", "--metrics-recording-only",
                    "--password-store=basic", "--use-mock-keychain"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # HOME and XDG dirs inside workdir: nothing written to the user's ~/.config, and the
        # crash handler Chromium double-forks (reparented to PID 1, its own process group)
        # names workdir in its command line, which is how stop() finds it
        home = workdir / "home"
        home.mkdir(exist_ok=True)
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
               "XDG_CACHE_HOME": str(home / ".cache")}
        self.service = Service(executable_path=CHROMEDRIVER, env=env,
                               log_output=str(workdir / "chromedriver.log"))
        self.driver = webdriver.Chrome(service=self.service, options=options)
        self.driver.set_page_load_timeout(60)
        self.driver.set_script_timeout(30)
        # chromedriver and the browser processes it started, with their start times (a PID
        # reused later by another process is not mistaken for one of them)
        self._pids = self.pids()
        self._identity = {pid: start_time(pid) for pid in self._pids}
        self.console: list[dict] = []
        self.closed = False

    def pids(self) -> list[int]:
        """chromedriver, everything it started (the browser's processes), and what they
        double-forked away (the crash handler): any process whose command line names this
        browser's private directory."""
        root = self.service.process.pid
        mine = [root, *descendants(root)]
        marker = str(self.workdir).encode()
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if int(proc.name) not in mine and marker in (proc / "cmdline").read_bytes():
                    mine.append(int(proc.name))
            except OSError:
                continue
        return mine

    def logs(self) -> list[dict]:
        """The console entries since the last call (also kept in `console`)."""
        entries = self.driver.get_log("browser")
        self.console.extend(entries)
        return entries

    def screenshot(self, name: str) -> Path:
        path = self.workdir / f"{name}.png"
        if not self.driver.save_screenshot(str(path)):
            raise AssertionError(f"no screenshot {path}")
        return path

    def stop(self) -> None:
        """Quit the browser; every process it had is gone afterwards, or this raises."""
        if self.closed:
            return
        self.closed = True
        seen = sorted(set(self._pids) | set(self.pids()))
        for pid in seen:
            self._identity.setdefault(pid, start_time(pid))
        def left() -> list[int]:
            return [p for p in seen if self._identity.get(p) is not None and running(p)
                    and start_time(p) == self._identity[p]]

        try:
            self.driver.quit()
        finally:
            # the browser's helpers (zygote, crash handler) exit a moment after it
            deadline = time.monotonic() + QUIT_GRACE
            while left() and time.monotonic() < deadline:
                time.sleep(0.05)
            if remaining := left():
                stop_pids(remaining)
                raise LabError(f"chromium processes left {QUIT_GRACE:.0f} s after quit(): "
                               f"{remaining}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def png_stats(path: Path) -> dict:
    """width, height and the number of distinct colours of an 8-bit RGB(A) PNG (what
    Chromium's screenshots are), decoded here: a blank page has one colour."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise AssertionError(f"{path} is not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise AssertionError(f"{path}: unexpected PNG format {header}")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    colours: Counter = Counter()
    for y in range(height):
        base = y * (stride + 1)
        kind, row = raw[base], bytearray(raw[base + 1:base + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 0xFF
        elif kind == 2:
            row = bytearray((a + b) & 0xFF for a, b in zip(row, prev))
        elif kind == 3:
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        if y % 4 == 0:  # every 4th row is plenty to count colours
            colours.update(bytes(row[i:i + 3]) for i in range(0, stride, bpp * 2))
        prev = row
    return {"width": width, "height": height, "colours": len(colours),
            "dominant": colours.most_common(1)[0][1] / sum(colours.values())}


def until_rendered(predicate, what: str, timeout: float = 30, interval: float = 0.05):
    """tests.lab.procs.wait_until for a page: an element the page re-rendered under the test
    (stale) or has not rendered yet counts as "not yet", not as a failure."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
    )

    from tests.lab.procs import wait_until

    def attempt():
        try:
            return predicate()
        except (StaleElementReferenceException, NoSuchElementException):
            return None

    return wait_until(attempt, timeout, interval=interval, what=what)
