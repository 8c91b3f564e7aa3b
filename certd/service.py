"""What certd does — issue, deploy, sweep — over parts it is given. `certd.app` wires them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from collections.abc import AsyncIterator
from typing import Callable

from cryptography import x509

from certd import deployers, failpoints, instances, nodes, preflight, renewal, rollout
from certd.batching import DeployQueue, Request
from certd.budget import Budget
from certd.config import Config, split_listen
from certd.deployers.base import Deployer, DeployResult, Target
from certd.errors import AcmeError, CertdError
from certd.issuance import ari
from certd.issuance.issuer import Issuer
from certd.model import (
    Alias,
    CertificateSpec,
    CertificateState,
    CertStatus,
    DeployStatus,
    Event,
    IssuedCertificate,
    NodeRef,
    Order,
    Severity,
    utcnow,
)
from certd.rollout import Rollout, RolloutStats, Work
from certd.store.base import Store

log = logging.getLogger(__name__)

LEASE_MARGIN = timedelta(minutes=1)
LEASE_POLL = 0.2  # seconds between tries of a busy lease, when waiting for it
IMPORTED = "certificate.imported"  # the event of Certd.adopt


def owner_id() -> str:
    """Who holds a lease: host, process and a random part (two runs never share one)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _dead_here(owner: str) -> bool:
    """True if `owner` is a process on this host that no longer exists (killed, crashed)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class BudgetDeferred(CertdError):
    """The request budget is spent: the order waits until `retry_at`."""

    def __init__(self, message: str, retry_at: datetime, account_wide: bool = False):
        self.retry_at = retry_at
        self.account_wide = account_wide  # no order of this account can go before retry_at
        super().__init__(message)


class Certd:
    def __init__(self, config: Config, store: Store, issuer: Issuer,
                 deployers_by_frontend: dict[str, Deployer], *, owner: str | None = None,
                 clock: Callable[[], datetime] = utcnow):
        self.config = config
        self.store = store
        self.issuer = issuer
        self.deployers = deployers_by_frontend
        self.owner = owner or owner_id()
        self.clock = clock
        self.budget = Budget(store, config.renewal.budget, account=config.acme.directory)
        self._configured = _configured_specs(config)
        self._specs = dict(self._configured)  # + the aliases the last load_aliases saw
        self._orders_max = config.renewal.max_concurrent
        self._orders = asyncio.Semaphore(self._orders_max)
        self._rollout = Rollout(config, store, deployers_by_frontend, clock)
        self._renewing = 0  # renew() calls in progress: an open batch waits for them
        self._retired: set[Deployer] = set()  # replaced by a reload, closed once idle
        self._retiring: set[asyncio.Task] = set()
        self._queue = DeployQueue(self._deploy_batch,
                                  window=config.deploy.batch_window.total_seconds(),
                                  batch_max=config.deploy.batch_max,
                                  busy=lambda: self._renewing > 0)

    async def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config (same store, CA account and listeners: the caller refused
        changes to those). Certificates, frontends, nodes, deployers and renewal settings
        take effect for work that starts from now on; orders and batches in flight finish
        with what they started with. A frontend whose deployer settings did not change keeps
        its deployer (and its SSH connections); the others are closed once the batches in
        flight are done."""
        kept = {name: self.deployers[name] for name, fe in config.frontends.items()
                if name in self.config.frontends and name in self.deployers
                and self.config.frontends[name].deployer == fe.deployer}
        fresh = {name: deployers.build(fe.deployer, self.store)
                 for name, fe in config.frontends.items() if name not in kept}
        retired = [d for d in set(self.deployers.values())
                   if all(d is not k for k in kept.values())]
        old_rollout = self._rollout
        self.config = config
        self.deployers = {**kept, **fresh}
        self.budget = Budget(self.store, config.renewal.budget, account=config.acme.directory)
        if config.renewal.max_concurrent != self._orders_max:  # holders release the old one
            self._orders_max = config.renewal.max_concurrent
            self._orders = asyncio.Semaphore(self._orders_max)
        self._rollout = Rollout(config, self.store, self.deployers, self.clock,
                                stats=old_rollout.stats)
        self._queue.window = config.deploy.batch_window.total_seconds()
        self._queue.batch_max = config.deploy.batch_max
        self._configured = _configured_specs(config)
        self._specs = dict(self._configured)
        await self.load_aliases()
        if retired:
            self._retired.update(retired)
            task = asyncio.get_running_loop().create_task(
                _close_after(old_rollout, retired, self._retired))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    # what should exist ----------------------------------------------------------------
    def specs(self) -> list[CertificateSpec]:
        return list(self._specs.values())

    def alias_spec(self, alias: Alias) -> CertificateSpec:
        return CertificateSpec(alias.domain, (alias.domain,), alias.frontends,
                               self.config.acme.key_type)

    async def load_aliases(self) -> None:
        """Add the API's aliases to the configured certificates (and forget removed ones).
        Called at start and before every sweep: another process may have changed them."""
        aliases = await self.store.list_aliases()
        self._specs = {**self._configured,
                       **{a.domain: self.alias_spec(a) for a in aliases
                          if not a.removing and a.domain not in self._configured}}

    async def add_alias(self, alias: Alias) -> tuple[Alias, bool]:
        if alias.domain in self._configured:
            raise CertdError(f"{alias.domain!r} is the name of a configured certificate")
        stored, created = await self.store.add_alias(alias)
        if not stored.removing:
            self._specs[stored.domain] = self.alias_spec(stored)
        return stored, created

    async def remove_alias(self, domain: str, *, revoke: bool = False) -> list[DeployResult]:
        """Stop renewing `domain`, delete its files from every node (reloading them), forget
        it. Nodes that fail keep it marked removing; calling again retries them. With
        `revoke`, the current certificate is then revoked at the CA (after the removal, so no
        node is left serving a revoked certificate on purpose); raises AcmeError if the CA
        refuses."""
        alias = await self.store.get_alias(domain)
        if alias is None:
            raise CertdError(f"alias {domain!r} does not exist")
        spec = self.alias_spec(alias)
        await self.store.mark_alias_removing(domain)
        self._specs.pop(domain, None)
        results = await self._rollout.remove(spec, self.targets(spec))
        if revoke:
            await self._revoke(domain)
        if all(r.ok for r in results):
            await self.store.delete_alias(domain)
            if self.is_alias(domain):  # gone from every node: its keys go too (issue 10)
                await self.store.destroy_keys(domain)
        return results

    async def _revoke(self, name: str) -> None:
        cert = await self.store.current_certificate(name)
        if cert is None or cert.not_after <= self.clock():
            return
        try:
            revoked = await self.issuer.revoke(cert)
        except AcmeError as exc:
            await self.store.add_event(Event("revoke.failed", f"revoke {name}: {exc}",
                                             Severity.ERROR, certificate=name,
                                             data={"serial": cert.serial}))
            raise
        await self.store.add_event(Event(
            "revoke.ok", f"revoked {name} serial {cert.serial}" if revoked
            else f"{name} serial {cert.serial} was already revoked",
            certificate=name, data={"serial": cert.serial}))

    def spec(self, name: str) -> CertificateSpec:
        """`name`'s spec as this process last saw it (the config, and the aliases read at the
        last sweep): for work over everything known. For one name someone asks about, use
        `resolve`, which asks the store."""
        try:
            return self._specs[name]
        except KeyError:
            raise CertdError(f"certificate {name!r} is not configured") from None

    async def resolve(self, name: str) -> CertificateSpec:
        """`name`'s spec from the one source of truth: the config for configured
        certificates, the store for aliases (which another process may have added or removed
        since this one last looked). CertdError if neither has it (or it is being removed)."""
        configured = self._configured.get(name)
        if configured is not None:
            return configured
        alias = await self.store.get_alias(name)
        if alias is None or alias.removing:
            self._specs.pop(name, None)
            raise CertdError(f"certificate {name!r} is not configured")
        spec = self._specs[name] = self.alias_spec(alias)
        return spec

    async def all_specs(self) -> list[CertificateSpec]:
        """Every certificate: the config's and the store's aliases, read now."""
        await self.load_aliases()
        return self.specs()

    async def plan(self, cert) -> renewal.Plan:
        ari = await self.store.get_ari(cert.name) if self.config.acme.ari else None
        return renewal.plan(cert, before_expiry=self.config.renewal.before_expiry, ari=ari)

    # issuance ---------------------------------------------------------------------------
    async def renew(self, name: str, *, force: bool = False, wait: bool = False,
                    requested_at: datetime | None = None) -> IssuedCertificate | None:
        """Issue a certificate for `name` if it needs one, or if `force`d and nobody renewed it
        since `requested_at`. Returns the current certificate, or None when another process
        holds the lease (and `wait` is false). Raises AcmeError, BudgetDeferred."""
        spec = await self.resolve(name)
        self._renewing += 1
        try:
            return await self._renew(spec, force, wait, requested_at or self.clock())
        finally:
            self._renewing -= 1
            self._queue.poke()  # the last order done: an open batch may close now

    async def _renew(self, spec: CertificateSpec, force: bool, wait: bool,
                     requested_at: datetime) -> IssuedCertificate | None:
        name = spec.name
        lease = f"issue:{name}"
        if not await self._take_lease(lease, wait):
            log.info("certificate[%s]: another certd is issuing it; skipping", name)
            return None
        try:
            # checked again under the lease: another process may have just done the work
            current = await self.store.current_certificate(name)
            if force:
                renewed_since = current is not None and current.issued_at >= requested_at
                reason = None if renewed_since else "forced"
            else:
                when = await self.plan(current) if current else None
                reason = renewal.needs_certificate(current, spec.domains, self.clock(), when)
                if reason is None and await self._unfinished_order(name):
                    reason = "resume"  # an interrupted order: finish it rather than abandon it
            if reason is None:
                return current
            return await self._order(spec, current, reason)
        finally:
            await self.store.release_lease(lease, self.owner)

    async def _order(self, spec: CertificateSpec, current: IssuedCertificate | None,
                     reason: str) -> IssuedCertificate:
        name = spec.name
        resume = await self._unfinished_order(name)
        try:
            replaces = await self._replaces(current) if current else None
        except AcmeError as exc:  # the CA is unreachable: a failure like any other
            await self._failed(name, exc)
            raise
        ari_renewal = replaces is not None and reason == "due (ari)"
        if resume is None and self.is_alias(name) and self.config.domains.preflight:
            await self._preflight(spec)
        now = self.clock()
        if resume is None and not ari_renewal:
            verdict = await self.budget.check(spec.domains, now)
            if not verdict.ok:
                await self._set_state(name, next_attempt_at=verdict.retry_at,
                                      last_error=verdict.reason)
                await self.store.add_event(Event(
                    "issue.deferred", f"certificate[{name}]: {verdict.reason}", Severity.WARNING,
                    certificate=name, data={"retry_at": verdict.retry_at.isoformat()}))
                raise BudgetDeferred(f"certificate[{name}]: {verdict.reason}; queued until "
                                     f"{verdict.retry_at.isoformat(timespec='seconds')}",
                                     verdict.retry_at, verdict.account_wide)
        reuse = current.key_pem if current and self.config.acme.reuse_key else None
        async with self._orders:
            log.info("certificate[%s]: ordering (%s)", name, reason,
                     extra={"event": "order.start", "certificate": name})
            await self._set_state(name, status=CertStatus.ISSUING)
            if resume is None and not ari_renewal:
                await self.budget.record_order(now)
            try:
                issued = await self.issuer.issue(spec, replaces=replaces, resume=resume,
                                                 key_pem=reuse)
            except AcmeError as exc:
                if exc.identifier:
                    await self.budget.record_failed_validation([exc.identifier], self.clock())
                await self._failed(name, exc)
                raise
        # one unit of work: the certificate with its key, the order done (its key copy
        # dropped), the budget, the state and the event, all or none
        async with self.store.transaction():
            stored = await self.store.add_certificate(issued)
            failpoints.hit("issue:stored")
            await self.issuer.finished(issued.order_url, spec)
            await self.budget.record_certificate(spec.domains, self.clock())
            await self._set_state(name, status=CertStatus.ISSUED, last_error=None, attempts=0,
                                  next_attempt_at=None)
            await self.store.add_event(Event(
                "issue.ok", f"certificate[{name}]: issued serial {stored.serial}",
                certificate=name,
                data={"serial": stored.serial, "not_after": stored.not_after.isoformat(),
                      "reason": reason, "replaces": replaces},
            ))
        return stored

    # certificates certd did not order (certd import: certd/importer/) -------------------
    async def adopt(self, cert: IssuedCertificate, event: Event, *,
                    expected: str | None) -> IssuedCertificate:
        """Make `cert`, which another client obtained (checked by certd/importer/), the current
        certificate of its name, stored as an issued one is: one row with its key (atomic),
        then the state 'issued' (the next sweep, or `certd deploy`, pushes it), then `event`
        (kind IMPORTED). Under the `issue:NAME` lease, and only if the current certificate is
        still the one the caller planned against (`expected`: its serial, None for none);
        CertdError otherwise, or while another process holds the lease. Adopting the current
        certificate again completes an adoption a crash cut short (state, event)."""
        name = cert.name
        await self.resolve(name)
        lease = f"issue:{name}"
        if not await self._take_lease(lease, wait=False):
            raise CertdError(f"certificate[{name}]: another certd is issuing it; try again "
                             "later")
        try:
            current = await self.store.current_certificate(name)
            if current is not None and current.serial == cert.serial:
                if await self.adopted(name, cert.serial) is not None:
                    return current  # done before
                stored = current
            elif (current.serial if current else None) != expected:
                raise CertdError(f"certificate[{name}]: changed while importing (now serial "
                                 f"{current.serial if current else 'none'}); not imported")
            else:
                stored = await self.store.add_certificate(cert)
                failpoints.hit("import:stored")
            await self._set_state(name, status=CertStatus.ISSUED, last_error=None, attempts=0,
                                  next_attempt_at=None)
            await self.store.add_event(event)
            return stored
        finally:
            await self.store.release_lease(lease, self.owner)

    async def adopted(self, name: str, serial: str) -> dict | None:
        """The data of the IMPORTED event that made `serial` current for `name`, if any."""
        for event in await self.store.events(certificate=name, kind=IMPORTED, limit=20):
            if event.data.get("serial") == serial:
                return event.data
        return None

    def is_alias(self, name: str) -> bool:
        return name not in {c.name for c in self.config.certificates}

    async def _preflight(self, spec: CertificateSpec) -> None:
        """Would the CA's validation succeed? If not, fail like an order would (state, backoff,
        event) without sending anything to the CA."""
        await self.issuer.ensure_account()
        domains = self.config.domains
        paths = [(n.ref.node, n.address, n.http_port)
                 for n in nodes.node_targets(self.config, spec)]
        for domain in spec.domains:
            result = await preflight.preflight(
                domain, store=self.store, nodes=paths,
                resolver=split_listen(domains.resolver) if domains.resolver else None,
                ca_identities=self.config.acme.caa_identities,
                account_uri=self.issuer.client.account_uri,
                http_port=domains.validation_port,
                allow_networks=domains.preflight_allow_networks)
            if not result.ok:
                exc = AcmeError(f"preflight[{domain}]: {result.reason}; nothing sent to the CA",
                                type="certd:preflight")
                await self._failed(spec.name, exc)
                raise exc

    async def _unfinished_order(self, name: str) -> Order | None:
        """The last order, if a previous run left it unfinished (crash, CA outage)."""
        orders = await self.store.orders(name, limit=1)
        if orders and orders[0].status in ("pending", "ready", "processing"):
            return orders[0]
        if orders and orders[0].status == "valid" and orders[0].key_pem:
            return orders[0]  # issued by the CA, never stored: download it
        return None

    async def _replaces(self, current: IssuedCertificate) -> str | None:
        """The ARI certID for `replaces`, when the CA offers ARI."""
        if not self.config.acme.ari:
            return None
        if current.order_url is None:  # imported: a CA refuses `replaces` for a certificate
            adopted = await self.adopted(current.name, current.serial)  # of another account
            if not (adopted and adopted.get("same_account")):
                return None
        try:
            if not await self.issuer.client.offers_ari():
                return None
            return ari.cert_id(x509.load_pem_x509_certificate(current.cert_pem.encode()))
        except (ValueError, x509.ExtensionNotFound):
            return None

    async def _take_lease(self, lease: str, wait: bool) -> bool:
        """Take the lease; take it over from a dead process on this host; with `wait`, keep
        trying until the holder's order would have timed out."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (self.config.acme.order_timeout + LEASE_MARGIN).total_seconds()
        while True:
            if await self._try_lease(lease):
                return True
            if not wait or loop.time() > give_up:
                return False
            await asyncio.sleep(LEASE_POLL)

    @contextlib.asynccontextmanager
    async def claimed(self, lease: str) -> AsyncIterator[bool]:
        """`async with certd.claimed("ari:NAME") as mine:` — one try at the lease (taken
        over from a dead holder as `_try_lease` does), released on the way out if taken.
        `mine` false: another instance holds it and does the work. Re-check under it that
        the work is still due."""
        mine = await self._try_lease(lease)
        try:
            yield mine
        finally:
            if mine:
                await self.store.release_lease(lease, self.owner)

    async def _try_lease(self, lease: str, ttl: timedelta | None = None) -> bool:
        """One try: take the lease (for `ttl`, by default the order timeout and a margin),
        or take it over from a dead process on this host."""
        now = self.clock()
        until = now + (ttl or self.config.acme.order_timeout + LEASE_MARGIN)
        if await self.store.acquire_lease(lease, self.owner, until, now):
            return True
        holder = await self.store.lease_holder(lease, now)
        if holder and holder != self.owner and (
                _dead_here(holder) or await instances.stopped(self.store, holder, now)
        ) and await self.store.take_over_lease(lease, holder, self.owner, until):
            log.warning("lease %s: holder %s is dead; taken over", lease, holder)
            return True
        return False

    async def _failed(self, name: str, exc: AcmeError) -> None:
        state = await self.store.get_state(name) or CertificateState(name)
        attempts = state.attempts + 1
        next_at = self.clock() + renewal.backoff(attempts, exc.retry_after,
                                                 steps=self.config.renewal.backoff)
        await self._set_state(name, status=CertStatus.FAILED, last_error=str(exc),
                              attempts=attempts, next_attempt_at=next_at)
        await self.store.add_event(Event(
            "issue.failed", str(exc), Severity.ERROR, certificate=name,
            data={"type": exc.type, "detail": exc.detail, "status": exc.status,
                  "attempts": attempts, "next_attempt_at": next_at.isoformat()},
        ))
        log.error("certificate[%s]: %s (attempt %d; next at %s)", name, exc, attempts,
                  next_at.isoformat(timespec="seconds"),
                  extra={"event": "issue.failed", "certificate": name, "error": str(exc)})

    async def _set_state(self, name: str, **changes) -> None:
        state = await self.store.get_state(name) or CertificateState(name)
        await self.store.put_state(replace(state, updated_at=self.clock(), **changes))

    # deployment -------------------------------------------------------------------------
    def targets(self, spec: CertificateSpec) -> list[Target]:
        return rollout.targets(self.config, spec)

    async def deploy(self, name: str, *, only_stale: bool = False) -> list[DeployResult]:
        """Push the stored certificate to every node of its frontends (or, with `only_stale`,
        to the nodes that do not hold it yet), verify each node serves it, roll back those
        that do not. It goes out in the next batch (certd/batching.py) with whatever else is
        deployable by then. Raises CertdError if nothing is stored."""
        await self.resolve(name)  # unknown names fail here, not in someone else's batch
        return await self._queue.submit(name, only_stale)

    @property
    def rollout_stats(self) -> RolloutStats:
        return self._rollout.stats

    async def _deploy_batch(self, requests: list[Request]) -> None:
        """A closed batch: the `deploy:NAME` lease of each certificate (one whose lease another
        process holds waits for it, then joins a later batch), then one rollout for all, then
        every request settled."""
        wanted: dict[str, list[Request]] = {}
        for r in requests:
            wanted.setdefault(r.name, []).append(r)
        taken = []
        for name, rs in wanted.items():
            if await self._try_lease(f"deploy:{name}"):
                taken.append(name)
            else:
                for r in rs:
                    asyncio.get_running_loop().create_task(self._after_lease(r))
        try:
            outcome = await self._deploy_many(
                {n: all(r.only_stale for r in wanted[n]) for n in taken})
        finally:
            for name in taken:
                await self.store.release_lease(f"deploy:{name}", self.owner)
        for name in taken:
            for r in wanted[name]:
                if r.future.done():
                    continue
                if isinstance(outcome[name], Exception):
                    r.future.set_exception(outcome[name])
                else:
                    r.future.set_result(outcome[name])

    async def _after_lease(self, request: Request) -> None:
        """Another process deploys this certificate: wait for its lease, then queue again."""
        try:
            if await self._take_lease(f"deploy:{request.name}", wait=True):
                self._queue.put(request)
            elif not request.future.done():
                request.future.set_exception(CertdError(
                    f"certificate[{request.name}]: another certd keeps deploying it"))
        except Exception as exc:  # the caller must not wait forever
            if not request.future.done():
                request.future.set_exception(exc)

    async def _deploy_many(self, only_stale: dict[str, bool]
                           ) -> dict[str, list[DeployResult] | Exception]:
        """Under the leases: what each certificate still needs (checked again: another
        process may have deployed it meanwhile), one rollout, the certificates' states."""
        out: dict[str, list[DeployResult] | Exception] = {}
        work: list[Work] = []
        names = list(only_stale)
        details = await self.store.details(names)
        for name in names:
            try:
                spec = await self.resolve(name)
            except CertdError as exc:  # an alias removed while it waited
                out[name] = exc
                continue
            cert = await self.store.current_certificate(name)
            if cert is None:
                out[name] = CertdError(f"certificate[{name}]: nothing stored to deploy; "
                                       "run renew first")
                continue
            chosen = self.targets(spec)
            if only_stale[name]:
                done = _holding(details[name].deployments, cert.serial)
                chosen = [t for t in chosen if t.ref not in done]
            work.append(Work(spec, cert, tuple(chosen)))
        results = await self._rollout.run_batch([w for w in work if w.targets]) if work else {}
        after = await self.store.details([w.spec.name for w in work])
        for w in work:
            out[w.spec.name] = results.get(w.spec.name, [])
            done = _holding(after[w.spec.name].deployments, w.cert.serial)
            if all(t.ref in done for t in self.targets(w.spec)):
                await self._set_state(w.spec.name, status=CertStatus.DEPLOYED)
        return out

    async def close(self) -> None:
        await self._queue.close()
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for deployer in set(self.deployers.values()) | self._retired:
            await _close_quietly(deployer)


def _holding(deployments, serial: str) -> set[NodeRef]:
    """The nodes that hold `serial`, deployed."""
    return {d.ref for d in deployments
            if d.serial == serial and d.status is DeployStatus.DEPLOYED}


def _configured_specs(config: Config) -> dict[str, CertificateSpec]:
    return {c.name: CertificateSpec(c.name, tuple(c.domains), tuple(c.frontends),
                                    c.key_type or config.acme.key_type)
            for c in config.certificates}


async def _close_after(rollout: Rollout, retired: list[Deployer],
                       pending: set[Deployer]) -> None:
    """Close deployers a reload replaced, once the rollout that used them is idle."""
    await rollout.idle()
    for deployer in retired:
        pending.discard(deployer)
        await _close_quietly(deployer)


async def _close_quietly(deployer: Deployer) -> None:
    try:
        await deployer.close()
    except Exception:  # noqa: BLE001 - a connection that fails to close is not news
        log.debug("closing a deployer failed", exc_info=True)


def build_deployers(config: Config, store=None) -> dict[str, Deployer]:
    return {name: deployers.build(fe.deployer, store) for name, fe in config.frontends.items()}
