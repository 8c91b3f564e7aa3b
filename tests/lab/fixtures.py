"""pytest fixtures for the lab. Use from ``tests/conftest.py``::

    from tests.lab.fixtures import *  # noqa: F401,F403

which also brings in the hook that appends the lab's log tails to the report of
a failed test that used the ``lab`` fixture (and acme2certifier's, for ``a2c``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .a2c import Acme2Certifier
from .lab import Lab

__all__ = ["a2c", "lab", "pytest_runtest_makereport"]


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


@pytest.fixture
def a2c(
    lab: Lab, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Acme2Certifier]:
    """A fresh acme2certifier (ARI-capable ACME server) validating through ``lab``.

    Function-scoped: it starts in ~0.5 s, and each test gets its own DB, CA, order
    log and ARI window.  Defaults: plain HTTP, 90-day certificates, window
    ``"future"``.  Pass :meth:`Acme2Certifier.start` keyword arguments through
    indirect parametrisation::

        @pytest.mark.parametrize("a2c", [{"validity_seconds": 600, "window": "past"}],
                                 indirect=True)
    """
    options = dict(getattr(request, "param", None) or {})
    server = Acme2Certifier.start(tmp_path_factory.mktemp("a2c"), lab=lab, **options)
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach the tail of every lab log to failed tests that used ``lab``."""
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    running = funcargs.get("lab")
    if report.failed and isinstance(running, Lab):
        report.sections.append(("lab logs", running.logs()))
    acme2certifier = funcargs.get("a2c")
    if report.failed and isinstance(acme2certifier, Acme2Certifier):
        report.sections.append(("acme2certifier log", acme2certifier.log_tail(60)))
