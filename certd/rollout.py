"""Getting a batch of stored certificates onto every node of their frontends, and proving it.

Per frontend group, the batch goes node by node as the strategy says (parallel; or rolling: the
canary node takes the whole batch first, then max_parallel nodes at a time). On each node the
deployer places every set, then checks and reloads once. A node whose check or reload fails
for the batch is split in halves (bisection) until the certificate(s) it refuses are isolated:
the others are deployed, the refused ones rolled back and recorded. Then every certificate is
verified by a TLS handshake per name (bounded concurrency); one that is not served is rolled
back alone on that node. Each (certificate, node) gets a record naming its batch and how long
it took."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from certd import verify
from certd.config import Config, FrontendConfig
from certd.deployers.base import LEFT_ALONE, Deployer, DeployResult, Placement, Target
from certd.model import (
    CertificateSpec,
    Deployment,
    DeployStatus,
    Event,
    IssuedCertificate,
    NodeRef,
    Severity,
)
from certd.nodes import NodeTarget, node_targets
from certd.store.base import Store

log = logging.getLogger(__name__)

# a changed host key, a symlink planted where keys go: may be an attack, page someone
CRITICAL_KINDS = ("host_key", "refused")
BATCH_KINDS = ("check", "reload")  # failures of a node's whole batch: bisected
VERIFY_CONCURRENCY = 32  # certificates being verified at once per step


def targets(config: Config, spec: CertificateSpec) -> list[Target]:
    """The deployers' view of `nodes.node_targets`: one Target per node, templates rendered."""
    return [deploy_target(n) for n in node_targets(config, spec)]


def deploy_target(n: NodeTarget) -> Target:
    fe = n.frontend
    return Target.render(
        frontend=n.ref.frontend, node=n.ref.node, address=n.address, certificate=n.certificate,
        path=fe.deployer.path, check=fe.check, reload=fe.reload,
        timeout=fe.command_timeout.total_seconds(), port=n.ssh_port, minion=n.minion)


def steps(nodes: list[str], frontend: FrontendConfig) -> list[list[str]]:
    """parallel: every node at once (the deployer bounds it by max_parallel); rolling: the
    first node alone (the canary), then max_parallel at a time."""
    if frontend.deployer.strategy == "parallel" or len(nodes) <= 1:
        return [nodes]
    step = frontend.deployer.max_parallel
    return [nodes[:1]] + [nodes[i:i + step] for i in range(1, len(nodes), step)]


def new_batch_id() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True)
class Work:
    """One certificate of a batch and the nodes it goes to."""

    spec: CertificateSpec
    cert: IssuedCertificate
    targets: tuple[Target, ...]


@dataclass
class RolloutStats:
    """This process's counters for /metrics: reload commands asked of each node, batch sizes."""

    reloads: Counter = field(default_factory=Counter)  # NodeRef -> reloads
    batch_sizes: Counter = field(default_factory=Counter)  # certificates per batch -> batches

    def count_reloads(self, results: list[DeployResult]) -> None:
        """A node reloaded if any of its results got past the reload (ok, or failing at it),
        and again if a failed reload was undone."""
        seen: dict[NodeRef, int] = {}
        for r in results:
            t = r.target
            if not t.reload:
                continue
            ran = 1 if r.ok or r.kind == "reload" else 0
            ran += 1 if r.kind == "reload" and r.rolled_back else 0
            seen[t.ref] = max(seen.get(t.ref, 0), ran)
        self.reloads.update(seen)


class Rollout:
    def __init__(self, config: Config, store: Store, deployers: dict[str, Deployer],
                 clock: Callable[[], datetime], stats: RolloutStats | None = None):
        self.config = config
        self.store = store
        self.deployers = deployers
        self.clock = clock
        self.stats = stats or RolloutStats()
        self._running = 0  # run_batch/remove calls in progress
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def _working(self):
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def idle(self) -> None:
        """Return once no batch or removal of this rollout is in progress (a reloaded
        config's retired deployers are closed after that)."""
        await self._idle.wait()

    async def run(self, spec: CertificateSpec, cert: IssuedCertificate,
                  chosen: list[Target]) -> list[DeployResult]:
        """One certificate: a batch of one."""
        return (await self.run_batch([Work(spec, cert, tuple(chosen))]))[spec.name]

    async def run_batch(self, work: list[Work], batch: str | None = None
                        ) -> dict[str, list[DeployResult]]:
        """Every group's share of the batch at once; results per certificate name, in the
        order of its targets."""
        with self._working():
            return await self._run_batch(work, batch)

    async def _run_batch(self, work: list[Work], batch: str | None
                         ) -> dict[str, list[DeployResult]]:
        batch = batch or new_batch_id()
        self.stats.batch_sizes[len(work)] += 1
        specs = {w.spec.name: w.spec for w in work}
        by_group: dict[str, list[Placement]] = {}
        for w in work:
            for t in w.targets:
                by_group.setdefault(t.frontend, []).append(Placement(t, w.cert))
        groups = await asyncio.gather(*(self._group(g, ps, specs, batch)
                                        for g, ps in by_group.items()))
        done = {r.target: r for results in groups for r in results}
        return {w.spec.name: [done[t] for t in w.targets if t in done] for w in work}

    async def remove(self, spec: CertificateSpec, chosen: list[Target]) -> list[DeployResult]:
        with self._working():
            return await self._remove(spec, chosen)

    async def _remove(self, spec: CertificateSpec, chosen: list[Target]) -> list[DeployResult]:
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
        names = sorted({t.certificate for t in chosen})
        details = await self.store.details(names)
        return {(d.certificate, d.frontend, d.node) for name in names
                for d in details[name].deployments if d.status != DeployStatus.REMOVED}

    async def _group(self, group: str, batch: list[Placement],
                     specs: dict[str, CertificateSpec], batch_id: str) -> list[DeployResult]:
        """One group's share, step by step. Rolling: a certificate that fails on a step goes
        no further (deploy.stopped names the nodes it left untouched); the others go on."""
        frontend = self.config.frontends[group]
        nodes = list(dict.fromkeys(p.target.node for p in batch))
        plan = steps(nodes, frontend)
        out: list[DeployResult] = []
        stopped: set[str] = set()
        for i, step_nodes in enumerate(plan):
            mine = [p for p in batch
                    if p.target.node in step_nodes and p.cert.name not in stopped]
            if not mine:
                continue
            results = await self._step(frontend, group, mine, specs, batch_id)
            out += results
            if frontend.deployer.strategy != "rolling":
                continue
            for name in sorted({r.target.certificate for r in results if not r.ok}):
                stopped.add(name)
                left = [p.target.node for p in batch if p.cert.name == name
                        and any(p.target.node in later for later in plan[i + 1:])]
                if left:
                    await self._stopped(name, group, left, i == 0, batch_id,
                                        next(p.cert.serial for p in batch if p.cert.name == name))
        return out

    async def _stopped(self, name: str, group: str, left: list[str], canary: bool,
                       batch_id: str, serial: str) -> None:
        message = (f"rollout[{name}/{group}]: stopped after "
                   f"{'the canary' if canary else 'a failed batch'}; "
                   f"untouched: {', '.join(left)}")
        log.error("%s", message, extra={"event": "deploy.stopped", "certificate": name})
        await self.store.add_event(Event(
            "deploy.stopped", message, Severity.ERROR, certificate=name,
            data={"frontend": group, "untouched": left, "serial": serial, "batch": batch_id}))

    async def _step(self, frontend: FrontendConfig, group: str, batch: list[Placement],
                    specs: dict[str, CertificateSpec], batch_id: str) -> list[DeployResult]:
        """Some nodes' share: claim, deploy (bisecting batch-wide failures), verify, record."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deployer = self.deployers[group]
        await self._claim(batch)
        results = await self._deploy(deployer, batch)
        finished = [loop.time()] * len(batch)
        verified: list[datetime | None] = [None] * len(batch)
        if frontend.verify:
            results = await self._verify(frontend, deployer, batch, results, specs, finished,
                                         verified)
        for p, r, end, seen in zip(batch, results, finished, verified):
            await self._record(r, p.cert, batch_id, end - started, seen)
        await self._batch_event(group, batch, results, batch_id, loop.time() - started)
        return results

    async def _deploy(self, deployer: Deployer, batch: list[Placement]) -> list[DeployResult]:
        """The deployer's results, where a node's batch-wide failure was split until each
        refused certificate stands alone (the nodes are bisected concurrently)."""
        results = await deployer.deploy(batch)
        self.stats.count_reloads(results)
        by_node: dict[NodeRef, list[int]] = {}
        for i, r in enumerate(results):
            by_node.setdefault(r.target.ref, []).append(i)

        async def settle(indexes: list[int]) -> None:
            budget = [4 * math.ceil(math.log2(max(2, len(indexes)))) + 4]
            settled = await self._bisect(deployer, [batch[i] for i in indexes],
                                         [results[i] for i in indexes], budget)
            for i, r in zip(indexes, settled):
                results[i] = r

        await asyncio.gather(*(settle(ix) for ix in by_node.values()))
        return results

    async def _bisect(self, deployer: Deployer, batch: list[Placement],
                      results: list[DeployResult], budget: list[int]) -> list[DeployResult]:
        """One node. The placements that failed together (check or reload: the node's whole
        batch was rolled back) are deployed again in halves, recursively, until each refused
        one stands alone. `budget` caps the tries (a node whose check fails for everything
        would otherwise cost 2n); what is left undecided keeps the batch's failure."""
        together = [i for i, r in enumerate(results) if not r.ok and r.kind in BATCH_KINDS]
        if len(together) < 2 or budget[0] <= 0:
            return results
        out = list(results)
        middle = len(together) // 2
        for half in (together[:middle], together[middle:]):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            part = [batch[i] for i in half]
            again = await deployer.deploy(part)
            self.stats.count_reloads(again)
            for i, r in zip(half, await self._bisect(deployer, part, again, budget)):
                out[i] = r
        return out

    async def _claim(self, batch: list[Placement]) -> None:
        """Record the nodes about to receive files that have no record yet, before anything
        is written: killed between the write and `_record`, certd must still know, at
        removal, that a key may lie there."""
        names = sorted({p.cert.name for p in batch})
        details = await self.store.details(names)
        known = {(d.certificate, d.frontend, d.node) for name in names
                 for d in details[name].deployments if d.status != DeployStatus.REMOVED}
        for p in batch:
            t = p.target
            if (t.certificate, t.frontend, t.node) not in known:
                await self.store.put_deployment(Deployment(
                    t.certificate, t.frontend, t.node, "", DeployStatus.DEPLOYING,
                    f"deploying serial {p.cert.serial}", self.clock()))

    async def _verify(self, frontend: FrontendConfig, deployer: Deployer,
                      batch: list[Placement], results: list[DeployResult],
                      specs: dict[str, CertificateSpec], finished: list[float],
                      verified: list[datetime | None]) -> list[DeployResult]:
        """Every deployed certificate checked on its node (VERIFY_CONCURRENCY at a time); those
        not served are rolled back together (one reload per node) and fail alone. For each
        one seen serving its serial on every name, `verified[i]` is set to when (the
        deployment's stored `verified_at`)."""
        timeout = frontend.verify_timeout.total_seconds()
        gate = asyncio.Semaphore(VERIFY_CONCURRENCY)
        loop = asyncio.get_running_loop()

        async def check(i: int) -> tuple[str, str] | None:
            t, serial = batch[i].target, batch[i].cert.serial
            domains = specs[t.certificate].domains
            async with gate:
                seen = await asyncio.gather(*(
                    verify.wait_serving(t.address, frontend.tls_port, name, serial, timeout)
                    for name in domains))
            finished[i] = loop.time()
            verified[i] = self.clock()
            return next(((name, what) for name, (ok, what) in zip(domains, seen) if not ok),
                        None)

        deployed = [i for i, r in enumerate(results) if r.ok]
        bad = dict(zip(deployed, await asyncio.gather(*(check(i) for i in deployed))))
        failing = [i for i in deployed if bad[i] is not None]
        backs = await deployer.roll_back([batch[i].target for i in failing]) if failing else []
        self.stats.count_reloads([b for b in backs if b.rolled_back])
        out = list(results)
        for i in deployed:
            t = batch[i].target
            if bad[i] is not None:
                verified[i] = None
            else:
                out[i] = DeployResult(t, True, f"{results[i].message}; verified serving on "
                                      f"{t.address}:{frontend.tls_port}",
                                      output=results[i].output)
        for i, back in zip(failing, backs):
            t, (name, what) = batch[i].target, bad[i]
            out[i] = DeployResult(
                t, False,
                f"{deployer.kind}[{t.node}]: verify: {t.address}:{frontend.tls_port} "
                f"serves {what} for {name}, not {batch[i].cert.serial} after {timeout:g}s; "
                + (back.message if back.ok else f"rollback failed: {back.message}"),
                rolled_back=back.ok, output=results[i].output + back.output, kind="verify")
        return out

    async def _record(self, result: DeployResult, cert: IssuedCertificate, batch: str,
                      seconds: float, verified_at: datetime | None = None) -> None:
        """`verified_at`: when the node was seen serving `cert` (None: not verified); kept
        only on a successful record (a failed one keeps no claim about what is served)."""
        t = result.target
        if result.ok:
            status, serial = DeployStatus.DEPLOYED, cert.serial
        else:
            status = DeployStatus.ROLLED_BACK if result.rolled_back else DeployStatus.FAILED
            serial = await self._held_serial(t)
            verified_at = None
        await self.store.put_deployment(Deployment(
            t.certificate, t.frontend, t.node, serial, status, result.message, self.clock(),
            batch, round(seconds, 3), verified_at))
        kind = "deploy.ok" if result.ok else f"deploy.{result.kind or 'failed'}"
        severity = (Severity.INFO if result.ok else
                    Severity.CRITICAL if result.kind in CRITICAL_KINDS else Severity.ERROR)
        await self.store.add_event(Event(
            kind, result.message, severity, certificate=t.certificate, node=t.node,
            data={"frontend": t.frontend, "serial": cert.serial, "ok": result.ok,
                  "rolled_back": result.rolled_back, "output": result.output[-4000:],
                  "batch": batch},
        ))
        (log.info if result.ok else log.error)("%s", result.message, extra={
            "event": "deploy.ok" if result.ok else "deploy.failed",
            "certificate": result.target.certificate, "node": result.target.node})

    async def _batch_event(self, group: str, batch: list[Placement],
                           results: list[DeployResult], batch_id: str, seconds: float) -> None:
        """One line per node and batch: how many certificates, how many made it, how long."""
        nodes: dict[NodeRef, list[DeployResult]] = {}
        for r in results:
            nodes.setdefault(r.target.ref, []).append(r)
        for ref, rs in nodes.items():
            ok = sum(r.ok for r in rs)
            message = (f"batch[{batch_id}] {ref}: {ok} of {len(rs)} certificates "
                       f"deployed in {seconds:.2f}s")
            log.info("%s", message, extra={"event": "batch.done", "node": ref.node,
                                           "duration_ms": round(seconds * 1000)})
            await self.store.add_event(Event(
                "batch.done", message, Severity.INFO, node=ref.node,
                data={"frontend": group, "batch": batch_id, "size": len(rs), "ok": ok,
                      "seconds": round(seconds, 3)}))

    async def _held_serial(self, target: Target) -> str:
        """After a failed deploy the node keeps what it had (rolled back), if we know it."""
        for d in await self.store.deployments(target.certificate):
            if d.frontend == target.frontend and d.node == target.node:
                return d.serial
        return ""
