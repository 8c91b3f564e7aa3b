"""What certd does — issue, deploy, sweep — over parts it is given. `certd.app` wires them."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

from certd import deployers, renewal
from certd.config import Config
from certd.deployers.base import Deployer, DeployResult, Target
from certd.errors import AcmeError, CertdError
from certd.issuance.issuer import Issuer
from certd.model import (
    CertificateSpec,
    CertificateState,
    CertStatus,
    Deployment,
    DeployStatus,
    Event,
    IssuedCertificate,
    Severity,
    utcnow,
)
from certd.store.base import Store

log = logging.getLogger(__name__)

MAX_CONCURRENT_ORDERS = 10
MAX_CONCURRENT_NODES = 10
LEASE_MARGIN = timedelta(minutes=1)


def owner_id() -> str:
    """Who holds a lease: host, process and a random part (two runs never share one)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Certd:
    def __init__(self, config: Config, store: Store, issuer: Issuer,
                 deployers_by_frontend: dict[str, Deployer], *, owner: str | None = None):
        self.config = config
        self.store = store
        self.issuer = issuer
        self.deployers = deployers_by_frontend
        self.owner = owner or owner_id()
        self._orders = asyncio.Semaphore(MAX_CONCURRENT_ORDERS)
        self._nodes = asyncio.Semaphore(MAX_CONCURRENT_NODES)

    # what should exist ----------------------------------------------------------------
    def specs(self) -> list[CertificateSpec]:
        return [
            CertificateSpec(c.name, tuple(c.domains), tuple(c.frontends),
                            c.key_type or self.config.acme.key_type)
            for c in self.config.certificates
        ]

    def spec(self, name: str) -> CertificateSpec:
        for spec in self.specs():
            if spec.name == name:
                return spec
        raise CertdError(f"certificate {name!r} is not configured")

    # issuance ---------------------------------------------------------------------------
    async def renew(self, name: str, *, force: bool = False) -> IssuedCertificate | None:
        """Issue a certificate for `name` if it needs one (or `force`). Returns the stored
        certificate, or None when another process holds the lease. Raises AcmeError."""
        spec = self.spec(name)
        lease = f"issue:{name}"
        now = utcnow()
        until = now + self.config.acme.order_timeout + LEASE_MARGIN
        if not await self.store.acquire_lease(lease, self.owner, until, now):
            log.info("certificate[%s]: another certd is issuing it; skipping", name)
            return None
        try:
            current = await self.store.current_certificate(name)
            # checked again under the lease: another process may have just done the work
            reason = "forced" if force else renewal.needs_certificate(current, spec.domains,
                                                                       utcnow())
            if reason is None:
                return current
            async with self._orders:
                log.info("certificate[%s]: ordering (%s)", name, reason)
                await self._set_state(name, status=CertStatus.ISSUING)
                try:
                    issued = await self.issuer.issue(spec)
                except AcmeError as exc:
                    await self._failed(name, exc)
                    raise
            stored = await self.store.add_certificate(issued)
            await self._set_state(name, status=CertStatus.ISSUED, last_error=None, attempts=0,
                                  next_attempt_at=None)
            await self.store.add_event(Event(
                "issue.ok", f"certificate[{name}]: issued serial {stored.serial}",
                certificate=name,
                data={"serial": stored.serial, "not_after": stored.not_after.isoformat(),
                      "reason": reason},
            ))
            return stored
        finally:
            await self.store.release_lease(lease, self.owner)

    async def _failed(self, name: str, exc: AcmeError) -> None:
        state = await self.store.get_state(name) or CertificateState(name)
        attempts = state.attempts + 1
        next_at = utcnow() + renewal.backoff(attempts, exc.retry_after)
        await self._set_state(name, status=CertStatus.FAILED, last_error=str(exc),
                              attempts=attempts, next_attempt_at=next_at)
        await self.store.add_event(Event(
            "issue.failed", str(exc), Severity.ERROR, certificate=name,
            data={"type": exc.type, "detail": exc.detail, "status": exc.status,
                  "attempts": attempts, "next_attempt_at": next_at.isoformat()},
        ))
        log.error("certificate[%s]: %s (attempt %d; next at %s)", name, exc, attempts,
                  next_at.isoformat(timespec="seconds"))

    async def _set_state(self, name: str, **changes) -> None:
        state = await self.store.get_state(name) or CertificateState(name)
        await self.store.put_state(replace(state, updated_at=utcnow(), **changes))

    # deployment -------------------------------------------------------------------------
    def targets(self, spec: CertificateSpec) -> list[Target]:
        out = []
        for group in spec.frontends:
            frontend = self.config.frontends[group]
            for node in frontend.nodes:
                out.append(Target.render(
                    frontend=group, node=node.name, address=node.address,
                    certificate=spec.name, path=frontend.deployer.path,
                    check=frontend.check, reload=frontend.reload,
                    timeout=frontend.command_timeout.total_seconds(),
                ))
        return out

    async def deploy(self, name: str, *, only_stale: bool = False) -> list[DeployResult]:
        """Push the stored certificate to every node of its frontends (or, with `only_stale`,
        to the nodes that do not hold it yet). Raises CertdError if nothing is stored."""
        spec = self.spec(name)
        cert = await self.store.current_certificate(name)
        if cert is None:
            raise CertdError(f"certificate[{name}]: nothing stored to deploy; run renew first")
        targets = self.targets(spec)
        if only_stale:
            done = {(d.frontend, d.node) for d in await self.store.deployments(name)
                    if d.serial == cert.serial and d.status is DeployStatus.DEPLOYED}
            targets = [t for t in targets if (t.frontend, t.node) not in done]
        results = await asyncio.gather(*(self._deploy_one(t, cert) for t in targets))
        all_done = {(d.frontend, d.node) for d in await self.store.deployments(name)
                    if d.serial == cert.serial and d.status is DeployStatus.DEPLOYED}
        if all((t.frontend, t.node) in all_done for t in self.targets(spec)):
            await self._set_state(name, status=CertStatus.DEPLOYED)
        return list(results)

    async def _deploy_one(self, target: Target, cert: IssuedCertificate) -> DeployResult:
        async with self._nodes:
            result = await self.deployers[target.frontend].deploy(target, cert)
        if result.ok:
            status = DeployStatus.DEPLOYED
        else:
            status = DeployStatus.ROLLED_BACK if result.rolled_back else DeployStatus.FAILED
        await self.store.put_deployment(Deployment(
            target.certificate, target.frontend, target.node,
            cert.serial if result.ok else await self._held_serial(target), status,
            result.message,
        ))
        await self.store.add_event(Event(
            "deploy.ok" if result.ok else "deploy.failed", result.message,
            Severity.INFO if result.ok else Severity.ERROR,
            certificate=target.certificate, node=target.node,
            data={"frontend": target.frontend, "serial": cert.serial,
                  "rolled_back": result.rolled_back, "output": result.output[-4000:]},
        ))
        (log.info if result.ok else log.error)("%s", result.message)
        return result

    async def _held_serial(self, target: Target) -> str:
        """After a failed deploy the node keeps what it had (rolled back) — if we know it."""
        for d in await self.store.deployments(target.certificate):
            if d.frontend == target.frontend and d.node == target.node:
                return d.serial
        return ""

    # the sweep: the seam the scheduler calls -----------------------------------------
    async def ensure(self, name: str, now: datetime | None = None) -> None:
        """Issue if needed and not backing off, then bring every node up to date."""
        state = await self.store.get_state(name)
        now = now or utcnow()
        backing_off = state and state.next_attempt_at and state.next_attempt_at > now
        current = await self.store.current_certificate(name)
        if not backing_off and renewal.needs_certificate(current, self.spec(name).domains, now):
            await self.renew(name)
        if await self.store.current_certificate(name) is not None:
            await self.deploy(name, only_stale=True)

    async def sweep(self) -> None:
        """One pass over every configured certificate. Never raises: errors are recorded."""
        await self.store.purge_challenges(utcnow())

        async def one(name: str) -> None:
            try:
                await self.ensure(name)
            except CertdError as exc:
                log.warning("certificate[%s]: %s", name, exc)
            except Exception:  # a bug must not stop the other certificates
                log.exception("certificate[%s]: unexpected error", name)

        specs = self.specs()
        await asyncio.gather(*(one(spec.name) for spec in specs))
        log.info("sweep done: %d certificates", len(specs))

    async def close(self) -> None:
        for deployer in set(self.deployers.values()):
            await deployer.close()


def build_deployers(config: Config) -> dict[str, Deployer]:
    return {name: deployers.build(fe.deployer) for name, fe in config.frontends.items()}
