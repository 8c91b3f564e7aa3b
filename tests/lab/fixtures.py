"""pytest fixtures for the lab. Use from ``tests/conftest.py``::

    from tests.lab.fixtures import *  # noqa: F401,F403

which also brings in the hook that appends the lab's log tails to the report of
a failed test that used the ``lab`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .lab import Lab

__all__ = ["lab", "pytest_runtest_makereport"]


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One started lab shared by the whole session, stopped at its end.

    Tests share its pebble, DNS overrides and SNI map: reset what you change
    (``clear_a``, ``set_sites``) or start a private pebble with ``lab.start_pebble()``.
    """
    started = Lab.start(tmp_path_factory.mktemp("lab"))
    try:
        yield started
    finally:
        started.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach the tail of every lab log to failed tests that used ``lab``."""
    outcome = yield
    report = outcome.get_result()
    running = getattr(item, "funcargs", {}).get("lab")
    if report.failed and isinstance(running, Lab):
        report.sections.append(("lab logs", running.logs()))
