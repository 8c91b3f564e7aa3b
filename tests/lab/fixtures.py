"""pytest fixtures for the lab. Use from ``tests/conftest.py``::

    from tests.lab.fixtures import *  # noqa: F401,F403

which also brings in the hook that appends the lab's log tails to the report of
a failed test that used the ``lab`` fixture (and acme2certifier's, for ``a2c``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .a2c import Acme2Certifier
from .lab import Lab
from .postgres import PostgresCluster, postgres_cluster, postgres_database
from .salt import SaltLab, salt_venv_missing
from .sshd import SshLab, start_many

# the fixtures that start lab processes: a test using any of them (directly or through
# another fixture) is marked `lab`, so `-m "not lab"` starts none, whatever the file says
LAB_FIXTURES = frozenset({"lab", "a2c", "ssh_nodes", "ssh_fleet", "salt_lab",
                          "postgres_cluster", "postgres_database"})

__all__ = [
    "LAB_FIXTURES",
    "a2c",
    "lab",
    "postgres_cluster",
    "postgres_database",
    "pytest_collection_modifyitems",
    "pytest_runtest_makereport",
    "pytest_runtest_makereport_postgres",
    "pytest_runtest_makereport_salt",
    "pytest_runtest_makereport_sshd",
    "salt_lab",
    "ssh_fleet",
    "ssh_nodes",
]


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


# ---------------------------------------------------------------- OpenSSH (tests/lab/sshd.py)


@pytest.fixture(scope="session")
def ssh_nodes(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    """One real sshd per lab node (fe1 on 127.0.0.2, fe2 on 127.0.0.3, one common port),
    accepting one client key as root; stopped at the end of the session.

    ``.servers[node]``, ``.key_file``, ``.known_hosts``, ``.wrong_known_hosts`` (fe2's
    key wrong, fe1's right), ``.stop(node)`` / ``.start(node)``,
    ``.connect_options(node)`` (asyncssh keyword arguments).  A test that stops a
    node starts it again (``try/finally``).
    """
    started = SshLab.for_lab(lab, tmp_path_factory.mktemp("sshd"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def ssh_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SshLab]]:
    """Factory: ``ssh_fleet(n, **options)`` starts ``n`` sshd on 127.0.1.1..127.0.1.n
    (see :func:`tests.lab.sshd.start_many`); every fleet is stopped after the test."""
    fleets: list[SshLab] = []

    def factory(n: int, workdir: Path | None = None, **options: Any) -> SshLab:
        fleet = start_many(n, workdir or tmp_path_factory.mktemp("sshfleet"), **options)
        fleets.append(fleet)
        return fleet

    try:
        yield factory
    finally:
        for fleet in reversed(fleets):
            fleet.stop()


@pytest.hookimpl(hookwrapper=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_sshd(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach the tail of every sshd log to failed tests that used ``ssh_nodes``."""
    outcome = yield
    report = outcome.get_result()
    ssh = getattr(item, "funcargs", {}).get("ssh_nodes")
    if report.failed and isinstance(ssh, SshLab):
        report.sections.append(("sshd logs", ssh.logs()))


# ------------------------------------------------------------- SaltStack (tests/lab/salt.py)


@pytest.fixture(scope="session")
def salt_lab(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaltLab]:
    """salt-master + salt-api (http, eauth ``file``) + one minion per lab node ("fe1",
    "fe2"), all from ``.salt-venv`` (``bash scripts/salt-venv``), shared by the session.

    Each minion runs as root in its own mount namespace where ``salt_lab.node_root`` is
    its node's directory: ``salt_lab.deploy_path_template`` (one path for every node) and
    ``lab.deploy_path_template`` (``{node}`` paths) both land in ``lab.cert_dir(node, X)``.
    A test that stops a minion (``stop_minion``) starts it again (``start_minion``).
    Fails -- never skips -- when ``.salt-venv`` is missing.
    """
    problem = salt_venv_missing()
    if problem:
        pytest.fail(problem, pytrace=False)
    started = SaltLab.start(tmp_path_factory.mktemp("salt"), lab=lab)
    try:
        yield started
    finally:
        started.stop()


@pytest.hookimpl(hookwrapper=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_salt(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach the tail of every Salt log to failed tests that used ``salt_lab``."""
    outcome = yield
    report = outcome.get_result()
    salt = getattr(item, "funcargs", {}).get("salt_lab")
    if report.failed and isinstance(salt, SaltLab):
        report.sections.append(("salt logs", salt.logs()))


@pytest.hookimpl(hookwrapper=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_postgres(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach the tail of the PostgreSQL log to failed tests that used its cluster."""
    outcome = yield
    report = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("postgres_cluster")
    database = getattr(item, "funcargs", {}).get("postgres_database")
    cluster = cluster or getattr(database, "cluster", None)
    if report.failed and isinstance(cluster, PostgresCluster):
        report.sections.append(("postgres log", cluster.log_tail()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)
