"""What certd does — issue, deploy, sweep — over parts it is given. `certd.app` wires them."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from collections.abc import AsyncIterator
from typing import Callable

from certd import deployers, failpoints, instances, nodes, preflight, renewal, rollout
from certd.batching import DeployQueue, Request
from certd.budget import Budget
from certd.config import Config, split_listen
from certd.deployers.base import Deployer, DeployResult, Target
from certd.errors import AcmeError, CertdError
from certd.issuance import ari, dns_persist
from certd.issuance.dns01 import Dns01Solver
from certd.issuance.http01 import Http01Solver
from certd.issuance import issuers as issuers_pool
from certd.issuance.issuer import Issuer
from certd.issuance.issuers import IssuerPool
from certd.issuance.solvers import ChallengeType
from certd.issuance.status import ORDER_UNFINISHED, AcmeStatus
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
# the certificate Certd._preflight is checking, for the http-01 solver's probe (a solver's
# preflight takes only the name; the nodes to probe are that certificate's)
_PREFLIGHT_SPEC: contextvars.ContextVar[CertificateSpec | None] = contextvars.ContextVar(
    "certd_preflight_spec", default=None)
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


class _LeaseLost(Exception):
    """The fencing check failed: another owner took this process's lease over."""


class _Superseded(Exception):
    """The certificate just deployed is no longer the current one (rolls its unit back)."""


class BudgetDeferred(CertdError):
    """The request budget is spent: the order waits until `retry_at`."""

    def __init__(self, message: str, retry_at: datetime, account_wide: bool = False):
        self.retry_at = retry_at
        self.account_wide = account_wide  # no order of this account can go before retry_at
        super().__init__(message)


class Certd:
    def __init__(self, config: Config, store: Store, issuer: Issuer | IssuerPool | None,
                 deployers_by_frontend: dict[str, Deployer], *, owner: str | None = None,
                 clock: Callable[[], datetime] = utcnow):
        self.config = config
        self.store = store
        # the CAs in order (certd/issuance/issuers.py); `issuer` is the first one's
        self.issuers = issuer if isinstance(issuer, IssuerPool) else \
            issuers_pool.wrap(config, store, issuer)
        if self.issuers.store is None:  # the cooldowns are kept where everything else is
            self.issuers.store = store
        issuer = self.issuer = self.issuers.primary.issuer
        solvers = getattr(issuer, "solvers", None)  # None: a test's stand-in issuer
        for solver in solvers.all() if solvers is not None else ():
            # http-01's path checks need the config, the nodes and the account: ours
            if isinstance(solver, Http01Solver) and solver.probe is None:
                solver.probe = self.http01_preflight
            if isinstance(solver, Dns01Solver) and solver.caa is None:  # CAA for dns-01
                solver.caa = self.dns01_caa
        self.deployers = deployers_by_frontend
        self.owner = owner or owner_id()
        self.clock = clock
        self.budget = self.issuers.primary.budget  # each issuer has its own (issuers.py)
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
        issuers_pool.rebudget(self.issuers, config, self.store)
        self.budget = self.issuers.primary.budget
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
                               self.config.acme.key_type,
                               challenge=dns_persist.challenge_of(alias.validation),
                               profile=alias.profile or self.config.acme.profile)

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
            revoked = await self._issuer_of(cert).revoke(cert)
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
                     reason: str) -> IssuedCertificate | None:
        name = spec.name
        resume = await self._unfinished_order(name)
        try:
            replaces = await self._replaces(current) if current else None
        except AcmeError as exc:  # the CA is unreachable: a failure like any other
            if len(self.issuers) == 1:
                await self._failed(name, exc)
                raise
            replaces = None  # its CA is down: another one takes the order, without replaces
        if resume is None and self.is_alias(name) and (
                self.config.domains.preflight
                or spec.challenge == ChallengeType.DNS_PERSIST01):  # its record: always
            await self._preflight(spec)
        elif resume is None and self._dns01_names(spec):
            # a configured certificate with dns-01 names: its zone must take updates with the
            # key (a wrong TSIG key costs no order)
            await self._preflight(spec, self._dns01_names(spec))
        reuse = current.key_pem if current and self.config.acme.reuse_key else None
        issued, replaces = await self._order_in_turn(spec, current, reason, resume, replaces,
                                                     reuse)
        # one unit of work: the certificate with its key, the order done (its key copy
        # dropped), the budget, the state and the event, all or none; first of all (fencing)
        # this owner must still hold `issue:NAME`: an instance cut off from the store longer
        # than the takeover time has lost it to another, which resumed or redid the order
        try:
            async with self.store.transaction():
                if not await self.store.extend_lease(f"issue:{name}", self.owner,
                                                     self._lease_until()):
                    raise _LeaseLost
                stored = await self._store_issued(spec, issued, reason, replaces)
        except _LeaseLost:
            log.warning("certificate[%s]: lease issue:%s was taken over while ordering; "
                        "serial %s not stored (the new holder stores its own)", name, name,
                        issued.serial, extra={"event": "issue.fenced", "certificate": name})
            await self.store.add_event(Event(
                "issue.fenced", f"certificate[{name}]: issued serial {issued.serial} after "
                "another instance took the lease over; not stored", Severity.WARNING,
                certificate=name, data={"serial": issued.serial, "owner": self.owner}))
            return None
        return stored

    async def _order_in_turn(self, spec: CertificateSpec, current: IssuedCertificate | None,
                             reason: str, resume: Order | None, replaces: str | None,
                             reuse: str | None) -> tuple[IssuedCertificate, str | None]:
        """Order from the first issuer that is not cooling down and has budget; a CA that is
        down, answers 5xx or rateLimited, or refuses a name hands the order to the next one
        (an `issue.fallback` event and a log line each time). `replaces` goes only to the CA
        that issued `current`; an unfinished order is resumed only at the CA it was placed
        with. Returns the certificate (its `issuer` set) and the `replaces` it was ordered
        with. Raises BudgetDeferred when every issuer's budget is spent, AcmeError (recorded,
        backed off) when no CA issued it."""
        name, pool, now = spec.name, self.issuers, self.clock()
        await pool.refresh(now)  # the cooldowns any process sharing the store started
        ready, cooling = pool.candidates(now)
        if spec.challenge == ChallengeType.DNS_PERSIST01:
            # the customer's record names the first CA and its account: no fallback
            ready = [m for m in ready if m is pool.primary]
            cooling = [m for m in cooling if m is pool.primary]
        owner = pool.for_certificate(current) if current is not None else None
        at = pool.for_order(resume) if resume is not None else None
        if resume is not None and at not in ready:  # its CA is gone or cooling down
            log.info("certificate[%s]: unfinished order %s left behind: its CA is %s", name,
                     resume.url, "cooling down" if at else "no longer configured")
            resume = None
        if resume is not None:
            ready = [at] + [m for m in ready if m is not at]
        if not ready:
            until = pool.next_ready(now)
            exc = AcmeError(
                "acme: every issuer is cooling down: " + "; ".join(
                    f"{m.name} until {m.cooling_until.isoformat(timespec='seconds')} "
                    f"({m.cooling_reason})" for m in cooling),
                type="certd:issuers-down", transient=True,
                retry_after=(until - now).total_seconds() if until else None)
            await self._failed(name, exc)
            raise exc
        deferred: list = []  # budget verdicts of the issuers skipped for budget
        failures: list[tuple[str, AcmeError]] = []
        started = False
        async with self._orders:
            for i, member in enumerate(ready):
                last = i == len(ready) - 1
                this_resume = resume if member is at else None
                this_replaces = replaces if member is owner else None
                ari_renewal = this_replaces is not None and reason == "due (ari)"
                if this_resume is None and not ari_renewal:
                    verdict = await member.budget.check(spec.domains, now)
                    if not verdict.ok:
                        deferred.append(verdict)
                        if not last:
                            await self._fell_back(name, member, ready[i + 1], "budget",
                                                  verdict.reason)
                        continue
                if not started:
                    started = True
                    log.info("certificate[%s]: ordering (%s)", name, reason,
                             extra={"event": "order.start", "certificate": name})
                    await self._set_state(name, status=CertStatus.ISSUING)
                try:
                    if this_resume is None:
                        # a profile this CA does not offer: refused before anything is
                        # ordered or counted (the next CA may offer it)
                        await self._check_profile(member, spec)
                    if this_resume is None and not ari_renewal:
                        await member.budget.record_order(now)
                    issued = await member.issuer.issue(spec, replaces=this_replaces,
                                                       resume=this_resume, key_pem=reuse)
                except AcmeError as exc:
                    if exc.identifier:
                        await member.budget.record_failed_validation([exc.identifier],
                                                                     self.clock())
                    why = issuers_pool.fallback_reason(exc)
                    if len(pool) == 1 or why is None:
                        await self._failed(name, exc)
                        raise
                    await pool.failed(member, exc, why, self.clock())
                    failures.append((f"{member.name}: {why}", exc))
                    if not last:
                        await self._fell_back(name, member, ready[i + 1], why,
                                              issuers_pool.problem_text(exc))
                    continue
                await pool.succeeded(member)
                return replace(issued, issuer=member.directory), this_replaces
        if not failures:  # every issuer's budget is spent: wait for the first to free
            verdict = min(deferred, key=lambda v: v.retry_at)
            await self._set_state(name, next_attempt_at=verdict.retry_at,
                                  last_error=verdict.reason)
            await self.store.add_event(Event(
                "issue.deferred", f"certificate[{name}]: {verdict.reason}", Severity.WARNING,
                certificate=name, data={"retry_at": verdict.retry_at.isoformat()}))
            raise BudgetDeferred(f"certificate[{name}]: {verdict.reason}; queued until "
                                 f"{verdict.retry_at.isoformat(timespec='seconds')}",
                                 verdict.retry_at, all(v.account_wide for v in deferred))
        last_exc = failures[-1][1]
        waits = [last_exc.retry_after] if last_exc.retry_after is not None else []
        until = pool.next_ready(self.clock())
        if until is not None:
            waits.append((until - self.clock()).total_seconds())
        waits += [(v.retry_at - self.clock()).total_seconds() for v in deferred]
        exc = AcmeError(
            "acme: no issuer could order it: " + "; ".join(
                [f"{who} ({issuers_pool.problem_text(e)})" for who, e in failures]
                + [v.reason for v in deferred]),
            type=last_exc.type, detail=last_exc.detail, status=last_exc.status,
            retry_after=max(0.0, min(waits)) if waits else None,
            transient=any(e.transient for _, e in failures), identifier=last_exc.identifier)
        await self._failed(name, exc)
        raise exc

    @staticmethod
    async def _check_profile(member, spec: CertificateSpec) -> None:
        """AcmeError (certd:profile) if `member`'s CA lists profiles but not the one `spec`
        asks for (certd/issuance/profiles.py; the directory is cached)."""
        profile_for = getattr(member.issuer, "profile_for", None)  # None: a test stand-in
        if spec.profile is not None and profile_for is not None:
            await profile_for(spec)

    async def _fell_back(self, name: str, member, to, why: str, detail: str) -> None:
        """An order moved from `member` to the next issuer `to`: one event, one log line."""
        message = (f"certificate[{name}]: issuer {member.name}: {why}; ordering from "
                   f"{to.name} instead")
        log.warning("%s (%s)", message, detail,
                    extra={"event": "issue.fallback", "certificate": name,
                           "issuer": member.directory})
        await self.store.add_event(Event(
            "issue.fallback", message, Severity.WARNING, certificate=name,
            data={"from": member.directory, "to": to.directory, "reason": why,
                  "detail": detail}))

    async def _store_issued(self, spec: CertificateSpec, issued: IssuedCertificate,
                            reason: str, replaces: str | None) -> IssuedCertificate:
        """The writes after an issuance (inside `_order`'s unit of work)."""
        name = spec.name
        stored = await self.store.add_certificate(issued)
        failpoints.hit("issue:stored")
        member = self.issuers.by_directory(issued.issuer) or self.issuers.primary
        await member.issuer.finished(issued.order_url, spec)
        await member.budget.record_certificate(spec.domains, self.clock())
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
        (kind IMPORTED), all in one unit of work. Under the `issue:NAME` lease, checked in
        that unit as an issuance's is (`_order`: fencing), and only if the current certificate
        is still the one the caller planned against (`expected`: its serial, None for none);
        CertdError otherwise, or while another process holds the lease, or once it took it
        over. Adopting the current certificate again completes an adoption a crash cut short
        (state, event: a store written by a certd that did not write them in one unit)."""
        name = cert.name
        await self.resolve(name)
        lease = f"issue:{name}"
        if not await self._take_lease(lease, wait=False):
            raise CertdError(f"certificate[{name}]: another certd is issuing it; try again "
                             "later")
        try:
            async with self.store.transaction():
                # fencing: cut off from the store past the takeover time, this process has
                # lost the lease to another, whose certificate must not be replaced by this
                if not await self.store.extend_lease(lease, self.owner, self._lease_until()):
                    raise _LeaseLost
                current = await self.store.current_certificate(name)
                if current is not None and current.serial == cert.serial:
                    if await self.adopted(name, cert.serial) is not None:
                        return current  # done before
                    stored = current
                elif (current.serial if current else None) != expected:
                    raise CertdError(f"certificate[{name}]: changed while importing (now "
                                     f"serial {current.serial if current else 'none'}); "
                                     "not imported")
                else:
                    stored = await self.store.add_certificate(cert)
                    failpoints.hit("import:stored")
                await self._set_state(name, status=CertStatus.ISSUED, last_error=None,
                                      attempts=0, next_attempt_at=None)
                await self.store.add_event(event)
            return stored
        except _LeaseLost:
            log.warning("certificate[%s]: lease issue:%s was taken over while importing; "
                        "serial %s not imported", name, name, cert.serial,
                        extra={"event": "import.fenced", "certificate": name})
            raise CertdError(f"certificate[{name}]: another certd took the issue lease over "
                             "while importing; not imported, try again") from None
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

    def _dns01_names(self, spec: CertificateSpec) -> list[str]:
        solvers = getattr(self.issuer, "solvers", None)
        return [d for d in spec.domains
                if solvers is not None
                and isinstance(solvers.for_identifier(spec, d), Dns01Solver)]

    async def dns01_caa(self, domain: str) -> None:
        """The dns-01 solver's CAA check (certd/preflight.py), for dns-01."""
        domains = self.config.domains
        result = await preflight.check_caa(
            domain, resolver=split_listen(domains.resolver) if domains.resolver else None,
            ca_identities=self.issuers.caa_identities(),
            account_uri=self._caa_accounts(), method=ChallengeType.DNS01.value)
        if not result.ok:
            raise AcmeError(f"preflight[{domain}]: {result.reason}; nothing sent to the CA",
                            type="certd:preflight")

    async def _preflight(self, spec: CertificateSpec, only: list[str] | None = None) -> None:
        """Would the CA's validation succeed? Each name (of `only`, if given) asks the solver
        that will prove it (certd/issuance/solvers.py). If not, fail like an order would
        (state, backoff, event) without sending anything to the CA."""
        await self._ensure_accounts()
        for domain in (spec.domains if only is None else only):
            solver = self.issuer.solvers.for_identifier(spec, domain)
            checking = _PREFLIGHT_SPEC.set(spec)  # http01_preflight probes its nodes
            try:
                await solver.preflight(domain)
            except CertdError as exc:
                if isinstance(exc, AcmeError) and exc.type == dns_persist.ERROR_TYPE:
                    # not a failure: the customer's record is not visible (yet)
                    await self._awaiting_dns(spec.name, exc)
                    raise
                failure = exc if isinstance(exc, AcmeError) and exc.type == "certd:preflight" \
                    else AcmeError(f"preflight[{domain}]: {exc}; nothing sent to the CA",
                                   type="certd:preflight")
                await self._failed(spec.name, failure)
                raise failure from None
            finally:
                _PREFLIGHT_SPEC.reset(checking)

    async def _awaiting_dns(self, name: str, exc: AcmeError) -> None:
        """A dns-persist alias whose record certd does not see: status awaiting_dns, checked
        again after dns_persist.recheck_delay (1 min doubling to 1 h); an event when the
        status or the reason changes (not once a minute)."""
        state = await self.store.get_state(name) or CertificateState(name)
        waiting = state.status is CertStatus.AWAITING_DNS
        attempts = state.attempts + 1 if waiting else 1
        next_at = self.clock() + dns_persist.recheck_delay(attempts)
        await self._set_state(name, status=CertStatus.AWAITING_DNS, last_error=str(exc),
                              attempts=attempts, next_attempt_at=next_at)
        if not waiting or state.last_error != str(exc):
            await self.store.add_event(Event(
                "issue.awaiting_dns", str(exc), Severity.INFO, certificate=name,
                data={"next_attempt_at": next_at.isoformat()}))
        log.info("certificate[%s]: %s (check %d; next at %s)", name, exc, attempts,
                 next_at.isoformat(timespec="seconds"),
                 extra={"event": "issue.awaiting_dns", "certificate": name})

    async def http01_preflight(self, domain: str) -> None:
        """The http-01 solver's preflight (certd/preflight.py): CAA for http-01, the probe
        through every node of every certificate that has `domain`, and through the name's own
        DNS. AcmeError(certd:preflight) with the reason if any fails."""
        config = self.config
        domains = config.domains
        checking = _PREFLIGHT_SPEC.get()  # the certificate _preflight checks, if it is one
        specs = ([checking] if checking is not None and domain in checking.domains
                 else [s for s in self._specs.values() if domain in s.domains])
        paths = list(dict.fromkeys(
            (n.ref.node, n.address, n.http_port)
            for spec in specs for n in nodes.node_targets(config, spec)))
        result = await preflight.preflight(
            domain, store=self.store, nodes=paths,
            resolver=split_listen(domains.resolver) if domains.resolver else None,
            ca_identities=self.issuers.caa_identities(),
            account_uri=self._caa_accounts(),
            http_port=domains.validation_port,
            allow_networks=domains.preflight_allow_networks,
            method=ChallengeType.HTTP01.value)
        if not result.ok:
            raise AcmeError(f"preflight[{domain}]: {result.reason}; nothing sent to the CA",
                            type="certd:preflight")

    async def _unfinished_order(self, name: str) -> Order | None:
        """The last order, if a previous run left it unfinished (crash, CA outage)."""
        orders = await self.store.orders(name, limit=1)
        if orders and orders[0].status in ORDER_UNFINISHED:
            return orders[0]
        if orders and orders[0].status == AcmeStatus.VALID and orders[0].key_pem:
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
        member = self.issuers.for_certificate(current)
        if member is None:  # its CA is no longer configured: no other CA takes `replaces`
            return None
        return await ari.replaces(member.issuer.client, current)

    def _issuer_of(self, cert: IssuedCertificate) -> Issuer:
        """The Issuer of the CA that issued `cert` (revocation goes there), AcmeError if that
        CA is no longer configured."""
        member = self.issuers.for_certificate(cert)
        if member is None:
            raise AcmeError(f"certificate[{cert.name}]: its CA ({cert.issuer}) is no longer "
                            "among acme.issuers", type="certd:issuer")
        return member.issuer

    def ari_client(self, cert: IssuedCertificate):
        """The ACME client of the CA that issued `cert`: ARI is asked of it only (None when
        that CA is no longer configured)."""
        member = self.issuers.for_certificate(cert)
        return member.issuer.client if member is not None else None

    async def _ensure_accounts(self) -> None:
        """The accounts preflight's CAA check names (RFC 8657 accounturi): the one CA's (an
        error if it cannot be reached, as always); with several, those that answer."""
        if len(self.issuers) == 1:
            await self.issuer.ensure_account()
            return
        for member in self.issuers:
            try:
                await member.issuer.ensure_account()
            except AcmeError as exc:
                log.info("issuer[%s]: no account for preflight: %s", member.name,
                         issuers_pool.problem_text(exc))

    def _caa_accounts(self):
        """The account URI preflight's CAA check compares accounturi with: the one CA's, or,
        with several, each CAA identity's own CA's account."""
        if len(self.issuers) == 1:
            return self.issuer.client.account_uri
        out: dict[str, str | None] = {}
        for member in self.issuers:
            for identity in member.caa_identities:
                out.setdefault(identity, member.issuer.client.account_uri)
        return out

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

    def _lease_until(self) -> datetime:
        """When a lease taken now expires by default: the order timeout and a margin."""
        return self.clock() + self.config.acme.order_timeout + LEASE_MARGIN

    async def _try_lease(self, lease: str, ttl: timedelta | None = None) -> bool:
        """One try: take the lease (for `ttl`, by default the order timeout and a margin),
        or take it over from a dead process on this host."""
        now = self.clock()
        until = now + ttl if ttl else self._lease_until()
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
        every request settled.

        Not fenced (no `extend_lease` check before the rollout's writes, unlike `issue:NAME`):
        a deployment record is a fact about a node, true whoever writes it. A holder that lost
        `deploy:NAME` while cut off may still have changed a node; dropping its record would
        leave the store claiming what the node no longer has (a removal skipping a node that
        holds a key, an `only_stale` deploy skipping a stale node: never corrected). Written
        anyway, the worst is a record older than the node (the other holder's write came
        first): the node looks stale and is deployed again (deploy sync), harmless. The lease
        only keeps two processes from working on the same nodes at once. The state
        'deployed' is guarded by what it claims instead (`_mark_deployed`)."""
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
                await self._mark_deployed(w.spec.name, w.cert.serial)
        return out

    async def _mark_deployed(self, name: str, serial: str) -> None:
        """The state 'deployed', if `serial` is still the current certificate: one issued
        during the rollout (under `issue:NAME`, by this process or another) keeps its
        'issued' until it is deployed itself. The state is written first, then the current
        certificate read, in one unit: the write's row lock orders it against the issuing
        unit's state write (PostgreSQL, read committed; SQLite's unit holds the write lock),
        so either the new certificate is seen and this rolls back, or its 'issued' lands
        after. No lease check here either (`_deploy_batch` says why)."""
        try:
            async with self.store.transaction():
                await self._set_state(name, status=CertStatus.DEPLOYED)
                summary = (await self.store.details([name]))[name].summary
                if summary is None or summary.serial != serial:
                    raise _Superseded
        except _Superseded:
            log.info("certificate[%s]: serial %s deployed, but a newer certificate was "
                     "stored meanwhile; it goes out next", name, serial,
                     extra={"certificate": name})

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
                                    c.key_type or config.acme.key_type,
                                    profile=c.profile or config.acme.profile)
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
