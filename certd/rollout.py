"""Getting one stored certificate onto every node of its frontends, and proving it: batches
by strategy (parallel, or rolling behind a canary), a TLS check of each node after its reload,
rollback of a node that does not serve the new certificate, and a record per node."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from certd import verify
from certd.config import Config, FrontendConfig
from certd.deployers.base import LEFT_ALONE, Deployer, DeployResult, Target
from certd.model import (
    CertificateSpec,
    Deployment,
    DeployStatus,
    Event,
    IssuedCertificate,
    Severity,
)
from certd.store.base import Store

log = logging.getLogger(__name__)

# a changed host key, a symlink planted where keys go: may be an attack, page someone
CRITICAL_KINDS = ("host_key", "refused")


def targets(config: Config, spec: CertificateSpec) -> list[Target]:
    out = []
    for group in spec.frontends:
        frontend = config.frontends[group]
        for node in frontend.nodes:
            out.append(Target.render(
                frontend=group, node=node.name, address=node.address,
                certificate=spec.name, path=frontend.deployer.path,
                check=frontend.check, reload=frontend.reload,
                timeout=frontend.command_timeout.total_seconds(),
                port=node.ssh_port, minion=node.minion,
            ))
    return out


def batches(targets: list[Target], frontend: FrontendConfig) -> list[list[Target]]:
    """parallel: one batch (the deployer bounds it by max_parallel); rolling: the first node
    alone (the canary), then max_parallel at a time."""
    if frontend.deployer.strategy == "parallel" or len(targets) <= 1:
        return [targets]
    step = frontend.deployer.max_parallel
    return [targets[:1]] + [targets[i:i + step] for i in range(1, len(targets), step)]


class Rollout:
    def __init__(self, config: Config, store: Store, deployers: dict[str, Deployer],
                 clock: Callable[[], datetime]):
        self.config = config
        self.store = store
        self.deployers = deployers
        self.clock = clock

    async def run(self, spec: CertificateSpec, cert: IssuedCertificate,
                  chosen: list[Target]) -> list[DeployResult]:
        by_group: dict[str, list[Target]] = {}
        for t in chosen:
            by_group.setdefault(t.frontend, []).append(t)
        groups = await asyncio.gather(*(self._group(spec, cert, g, ts)
                                        for g, ts in by_group.items()))
        return [r for results in groups for r in results]

    async def remove(self, spec: CertificateSpec, chosen: list[Target]) -> list[DeployResult]:
        """Delete the certificate's files from the nodes (all groups at once) and reload.

        Only nodes the store says certd deployed to (a deployment recorded for this
        certificate, not already removed) are touched; the others get nothing removed and
        no reload, reported as "nothing deployed by certd here". On a touched node the
        deployer still removes only what carries certd's marker (deployers/layout.py)."""
        held = await self._deployed(chosen)
        skipped = [DeployResult(t, True, f"{self.deployers[t.frontend].kind}[{t.node}]: "
                                f"nothing deployed by certd here; {t.path} left alone")
                   for t in chosen if (t.certificate, t.frontend, t.node) not in held]
        by_group: dict[str, list[Target]] = {}
        for t in chosen:
            if (t.certificate, t.frontend, t.node) in held:
                by_group.setdefault(t.frontend, []).append(t)
        groups = await asyncio.gather(*(self.deployers[g].remove(ts)
                                        for g, ts in by_group.items()))
        done = {r.target: r for rs in groups for r in rs}
        for r in skipped:
            await self.store.add_event(Event(
                "remove.ok", r.message, Severity.INFO, certificate=r.target.certificate,
                node=r.target.node, data={"frontend": r.target.frontend}))
        for r in done.values():
            t = r.target
            await self.store.put_deployment(Deployment(
                t.certificate, t.frontend, t.node, "",
                DeployStatus.REMOVED if r.ok else DeployStatus.FAILED, r.message, self.clock()))
            severity = (Severity.ERROR if not r.ok else
                        Severity.WARNING if r.kind == LEFT_ALONE else Severity.INFO)
            await self.store.add_event(Event(
                "remove.ok" if r.ok else "remove.failed", r.message, severity,
                certificate=t.certificate, node=t.node, data={"frontend": t.frontend}))
        skipped_by = {r.target: r for r in skipped}
        return [done.get(t) or skipped_by[t] for t in chosen]

    async def _deployed(self, chosen: list[Target]) -> set[tuple[str, str, str]]:
        """(certificate, frontend, node) where certd placed files that are not yet removed
        (a failed deploy counts: it may have written part of a set)."""
        held: set[tuple[str, str, str]] = set()
        for name in {t.certificate for t in chosen}:
            held |= {(d.certificate, d.frontend, d.node)
                     for d in await self.store.deployments(name)
                     if d.status != DeployStatus.REMOVED}
        return held

    async def _group(self, spec: CertificateSpec, cert: IssuedCertificate, group: str,
                     chosen: list[Target]) -> list[DeployResult]:
        frontend = self.config.frontends[group]
        deployer = self.deployers[group]
        out: list[DeployResult] = []
        plan = batches(chosen, frontend)
        for i, batch in enumerate(plan):
            await self._claim(batch, cert)
            results = await deployer.deploy(batch, cert)
            if frontend.verify:
                results = await self._verify(spec, cert, frontend, deployer, results)
            for result in results:
                await self._record(result, cert)
            out += results
            if frontend.deployer.strategy == "rolling" and not all(r.ok for r in results):
                left = [t.node for b in plan[i + 1:] for t in b]
                if left:
                    message = (f"rollout[{spec.name}/{group}]: stopped after "
                               f"{'the canary' if i == 0 else 'a failed batch'}; "
                               f"untouched: {', '.join(left)}")
                    log.error("%s", message)
                    await self.store.add_event(Event(
                        "deploy.stopped", message, Severity.ERROR, certificate=spec.name,
                        data={"frontend": group, "untouched": left, "serial": cert.serial}))
                break
        return out

    async def _claim(self, batch: list[Target], cert: IssuedCertificate) -> None:
        """Record the nodes about to receive files that have no record yet, before anything
        is written: killed between the write and `_record`, certd must still know, at
        removal, that a key may lie there."""
        known = {(d.frontend, d.node) for d in await self.store.deployments(cert.name)
                 if d.status != DeployStatus.REMOVED}
        for t in batch:
            if (t.frontend, t.node) not in known:
                await self.store.put_deployment(Deployment(
                    t.certificate, t.frontend, t.node, "", DeployStatus.DEPLOYING,
                    f"deploying serial {cert.serial}", self.clock()))

    async def _verify(self, spec: CertificateSpec, cert: IssuedCertificate,
                      frontend: FrontendConfig, deployer: Deployer,
                      results: list[DeployResult]) -> list[DeployResult]:
        timeout = frontend.verify_timeout.total_seconds()

        async def check(result: DeployResult) -> DeployResult:
            if not result.ok:
                return result
            t = result.target
            seen = await asyncio.gather(*(
                verify.wait_serving(t.address, frontend.tls_port, name, cert.serial, timeout)
                for name in spec.domains))
            bad = [(name, what) for name, (ok, what) in zip(spec.domains, seen) if not ok]
            if not bad:
                return DeployResult(t, True, f"{result.message}; verified serving on "
                                    f"{t.address}:{frontend.tls_port}", output=result.output)
            name, what = bad[0]
            [back] = await deployer.roll_back([t])
            return DeployResult(
                t, False,
                f"{deployer.kind}[{t.node}]: verify: {t.address}:{frontend.tls_port} "
                f"serves {what} for {name}, not {cert.serial} after {timeout:g}s; "
                + (back.message if back.ok else f"rollback failed: {back.message}"),
                rolled_back=back.ok, output=result.output + back.output, kind="verify")

        return list(await asyncio.gather(*(check(r) for r in results)))

    async def _record(self, result: DeployResult, cert: IssuedCertificate) -> None:
        t = result.target
        if result.ok:
            status, serial = DeployStatus.DEPLOYED, cert.serial
        else:
            status = DeployStatus.ROLLED_BACK if result.rolled_back else DeployStatus.FAILED
            serial = await self._held_serial(t)
        await self.store.put_deployment(Deployment(t.certificate, t.frontend, t.node, serial,
                                                   status, result.message, self.clock()))
        kind = "deploy.ok" if result.ok else f"deploy.{result.kind or 'failed'}"
        severity = (Severity.INFO if result.ok else
                    Severity.CRITICAL if result.kind in CRITICAL_KINDS else Severity.ERROR)
        await self.store.add_event(Event(
            kind, result.message, severity, certificate=t.certificate, node=t.node,
            data={"frontend": t.frontend, "serial": cert.serial, "ok": result.ok,
                  "rolled_back": result.rolled_back, "output": result.output[-4000:]},
        ))
        (log.info if result.ok else log.error)("%s", result.message)

    async def _held_serial(self, target: Target) -> str:
        """After a failed deploy the node keeps what it had (rolled back), if we know it."""
        for d in await self.store.deployments(target.certificate):
            if d.frontend == target.frontend and d.node == target.node:
                return d.serial
        return ""
