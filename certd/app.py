"""The one place that builds and wires everything, and the daemon's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from certd import daemon_status, notifiers, pidfile, responder, sdnotify, workers
from certd import reload as reloading
from certd.api import alerts
from certd.api import app as api
from certd.api.http import TOKENS
from certd.api.tokens import load_or_create
from certd.config import Config, ListenerLimits, split_listen
from certd.errors import CertdError, StoreError
from certd.issuance import dns01, dns_persist
from certd.issuance.http01 import Http01Solver
from certd.issuance.issuers import build_pool, read_secrets
from certd.issuance.solvers import Solvers
from certd.listener import Guard, GuardedSite
from certd.monitor import checks
from certd.monitor.alerts import AlertBook
from certd.monitor.events import EventForwarder
from certd.monitor.runner import Monitor
from certd.scheduler import Scheduler
from certd.service import Certd, build_deployers
from certd.store import make_store
from certd.sweep import Sweeper

log = logging.getLogger(__name__)

@contextlib.asynccontextmanager
async def open_certd(config: Config) -> AsyncIterator[Certd]:
    """Build store, ACME client, issuer and deployers; close them all on exit."""
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:  # a line for the operator, not a traceback
        raise StoreError(f"state_dir {config.state_dir}: cannot create it: "
                         f"{exc.strerror or exc}") from None
    store = make_store(config)
    await store.open()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))
    certd = None
    try:
        # which challenge proves which name (certd/issuance/solvers.py): http-01 by default;
        # rules (dns-01 for some names) go into this list, first match wins
        solvers = Solvers([], default=Http01Solver(store, ttl=config.challenge.ttl))
        # the CAs in order (acme.issuers, or the single acme.directory): one ACME client,
        # account and budget each, the solvers shared (certd/issuance/issuers.py)
        issuers = build_pool(config, store, session, secrets=await read_secrets(config),
                             solvers=solvers)
        issuer = issuers.primary.issuer
        # aliases added with validation dns-persist: the customer's persistent record
        solvers.add(dns_persist.for_spec, dns_persist.build(config, issuer))
        # dns-01 rules (config challenges:): RFC 2136 updates with TSIG; the secrets are read
        # here, once. A rule covers the names config.challenge_rule gives it (first match)
        for rule, solver in await asyncio.to_thread(dns01.build, config):
            solvers.add(dns01_matcher(lambda: certd.config if certd else config, rule), solver)
        certd = Certd(config, store, issuers, build_deployers(config, store))
        await certd.load_aliases()
        yield certd
    finally:
        if certd is not None:
            await certd.close()
        await session.close()
        await store.close()


def dns01_matcher(current: Callable[[], Config], rule) -> Callable:
    """The Solvers matcher of one dns-01 rule: the names the running config's rules give it
    (the certificate's `challenge`, else the first rule that covers the name). `challenges`
    itself only changes with a restart (certd/reload.py), so the rule compares equal."""
    return lambda spec, name: current().challenge_rule(name, spec.name) == rule


DRAIN_SECONDS = 10  # queued notices get this long to go out when the monitor closes


@contextlib.asynccontextmanager
async def open_monitor(config: Config, certd: Certd) -> AsyncIterator[Monitor]:
    """The monitor with its alerting (notifiers, dedupe) and trust store; queued notices get
    a few seconds to go out on exit."""
    trust = await asyncio.to_thread(checks.load_trust_store, config.monitor.ca_bundle)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
    monitor = Monitor(certd, build_alerts(config, certd, session), config.monitor, trust)
    monitor.session = session  # a reload builds its new notifiers on it
    try:
        yield monitor
    finally:
        await monitor.alerts.drain(DRAIN_SECONDS)  # the current set (a reload may swap it)
        await monitor.alerts.close()
        await session.close()


def build_alerts(config: Config, certd: Certd, session: aiohttp.ClientSession) -> AlertBook:
    """The notifiers of `config.alerts` behind one AlertBook (dedupe, retries, digests)."""
    return AlertBook(certd.store, [notifiers.build(n, session) for n in config.alerts.notifiers],
                     repeat=config.alerts.repeat, retries=config.alerts.retries,
                     group_window=config.alerts.group_window, clock=certd.clock)


async def start_site(app: web.Application, listen: str, what: str,
                     limits: ListenerLimits | None = None, *, sock=None,
                     label: str | None = None) -> web.AppRunner:
    """Serve `app` on `listen` within `limits` (connection cap, head and idle timeouts, a
    fixed 400 for unparsable requests: certd/listener.py); on `sock`, a listening socket
    bound for `listen` already (an API worker's), if given. `what` names the listener in its
    limits' log lines, `label` (default: `what`) in the "listening" line."""
    app.on_response_prepare.append(_server_header)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = split_listen(listen)
    try:
        await GuardedSite(runner, host, port, Guard(what, limits or ListenerLimits()),
                          sock=sock).start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(f"{what}: cannot listen on {listen}: {exc.strerror or exc}",
                          in_use=exc.errno == errno.EADDRINUSE) from None
    log.info("%s listening on %s", label or what, listen)
    return runner


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """'certd' instead of aiohttp's 'Python/3.11 aiohttp/3.x': versions help only a scanner."""
    response.headers["Server"] = "certd"


class ListenError(CertdError):
    def __init__(self, message: str, *, in_use: bool):
        self.in_use = in_use
        super().__init__(message)


async def api_app(config: Config, certd: Certd, monitor: Monitor | None = None,
                  challenge_stats: responder.ChallengeStats | None = None,
                  sweeper: Sweeper | None = None) -> web.Application:
    tokens = await asyncio.to_thread(load_or_create, config.tokens_path)
    return api.build_app(certd, tokens, monitor=monitor, challenge_stats=challenge_stats,
                         sweeper=sweeper)


@contextlib.asynccontextmanager
async def challenge_listener(config: Config, certd: Certd, *, shared: bool = False
                             ) -> AsyncIterator[web.AppRunner | None]:
    """Serve challenges for the life of the block. With `shared`, an address already in use
    is taken to be a running daemon reading the same store (the CLI's case): yields None."""
    try:
        runner = await start_site(responder.build_app(certd.store), config.challenge.listen,
                                  "challenge responder", config.challenge.limits)
    except ListenError as exc:
        if not (shared and exc.in_use):
            raise
        log.info("challenge responder: %s is in use; relying on the running daemon",
                 config.challenge.listen)
        yield None
        return
    try:
        yield runner
    finally:
        await runner.cleanup()


async def run_daemon(config: Config, stop: asyncio.Event,
                     notify: sdnotify.Notifier | None = None, *,
                     reload_wanted: asyncio.Event | None = None,
                     load_config: Callable[[], Config] | None = None) -> None:
    """Listeners first (challenges must be answerable before any order), then the scheduler
    until `stop` is set. A failing CA or node is logged and retried; it never ends the daemon.
    `notify` (default: systemd's, from the environment; a no-op outside systemd) hears
    WATCHDOG=1 from this loop, READY=1, STATUS= lines and STOPPING=1; a reload says
    notify.reloading(), then notify.ready() (or notify.status() with why it was refused).
    Setting `reload_wanted` (SIGHUP) re-reads the config through `load_config` and applies
    it without a restart (certd/reload.py)."""
    notify = notify or sdnotify.Notifier.from_environ()
    async with (notify.watching(), open_certd(config) as certd,
                challenge_listener(config, certd) as challenges,
                open_monitor(config, certd) as monitor):
        stats = challenges.app[responder.STATS] if challenges else None
        pidfile.write(config.state_dir)  # `certd reload` finds this process by it
        # what startup built (config, specs of thousands of aliases, trust store) lives as
        # long as the daemon: keep it out of the collector's full passes, whose pauses
        # otherwise show in the API's tail latency
        gc.freeze()
        sweeper = Sweeper(certd)
        api = await api_app(config, certd, monitor, stats, sweeper)
        api_runner, pool = await _serve_api(config, certd, api)
        forwarder = EventForwarder(certd.store, monitor.alerts)
        await forwarder.start()  # before the first sweep, so its failures are forwarded too
        scheduler = Scheduler(sweeper, config.renewal,
                              monitor=monitor if config.monitor.enabled else None,
                              events=forwarder)
        scheduler.start()
        notify.ready()  # the store is open, both listeners are bound
        status = asyncio.create_task(daemon_status.report(notify, sweeper))
        reloads = None
        if reload_wanted is not None and load_config is not None:
            running = reloading.Running(
                certd, monitor, scheduler, forwarder, api[TOKENS], load_config,
                load_tokens=lambda c: load_or_create(c.tokens_path),
                load_trust=lambda c: checks.load_trust_store(c.monitor.ca_bundle),
                build_alerts=lambda c: build_alerts(c, certd, monitor.session))
            reloads = asyncio.create_task(_reloads(running, reload_wanted, notify, pool))
        try:
            await stop.wait()
            log.info("certd stopping")
        finally:
            notify.stopping()
            status.cancel()
            if reloads is not None:
                reloads.cancel()
            pidfile.remove(config.state_dir)
            if pool is not None:
                await pool.stop()  # first: no job comes from a worker after this
                pool.sock.close()
            await scheduler.stop()
            if api_runner is not None:
                await api_runner.cleanup()
    log.info("certd stopped")


async def _serve_api(config: Config, certd: Certd, api: web.Application
                     ) -> tuple[web.AppRunner | None, workers.WorkerPool | None]:
    """The API listener: served here (`api.workers: 1`), or bound here and served by
    `api.workers` worker processes (certd/workers.py)."""
    count = config.api.worker_count()
    if count == 1:
        return await start_site(api, config.api.listen, "api", config.api.limits), None
    try:
        sock = workers.listening_socket(config.api.listen)
    except workers.ListenSocketError as exc:
        raise ListenError(str(exc), in_use=exc.in_use) from None
    pool = workers.WorkerPool(config, certd, sock, count, metrics_sources=api[alerts.SOURCES])
    try:
        await pool.start()
    except BaseException:
        await pool.stop()
        sock.close()
        raise
    log.info("api listening on %s (%d worker processes)", config.api.listen, count)
    return None, pool


async def _reloads(running: reloading.Running, wanted: asyncio.Event,
                   notify: sdnotify.Notifier, pool: workers.WorkerPool | None = None) -> None:
    """One reload per burst of SIGHUPs, one at a time."""
    while True:
        await wanted.wait()
        wanted.clear()
        notify.reloading()
        try:
            ok = await reloading.reload(running)
            if ok and pool is not None:
                await pool.restart(running.certd.config)
        except Exception:  # noqa: BLE001 - a failed reload never ends the daemon
            log.exception("config reload failed")
            ok = False
        notify.ready()
        if not ok:
            notify.status("config reload refused; the running config is kept (see the log)")
