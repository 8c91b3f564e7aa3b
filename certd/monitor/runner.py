"""The monitor sweep: for every certificate x every node of its frontends x every name (and
the extra `monitor.endpoints`), look at what the node really serves, judge it against what
certd believes it deployed, and hand the findings to alerting.

Probes run `monitor.concurrency` at a time, each bounded by `monitor.timeout`. Legacy
protocol handshakes are tried once per node address, not once per name. A node that answers
no probe at all becomes one `unreachable` finding (domain '*'), not one per name.

A (certificate, node) pair whose deployment has not finished is not probed nor judged (what the
node serves there is not certd's certificate yet: a hostname mismatch would be noise). Each of
its names becomes one `pending` finding (severity info; shown by `certd check` and the API,
never notified). Pending means, with `monitor.stale_grace` (15 min) as the bound: the latest
deployment row of the pair is `deploying` and began less than that ago, or there is no row at
all and the current certificate was issued less than that ago (its deployment has not begun).
A deployment that failed, or one stuck in `deploying` or never begun past that bound, is
judged: that is a problem worth an alert.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cryptography import x509

from certd.config import MonitorConfig
from certd.model import CertDetails, DeployStatus, Finding, ProbeTarget, Severity
from certd.monitor import checks, probe
from certd.monitor.alerts import PENDING, AlertBook
from certd.nodes import node_targets
from certd.service import Certd

log = logging.getLogger(__name__)

ALL_NAMES = "*"  # the domain of a node-wide finding


@dataclass(frozen=True)
class Served:
    """What one node served for one name at the last sweep (for /metrics)."""

    not_after: datetime | None  # None: nothing readable was served
    stale: bool


@dataclass
class MonitorReport:
    started_at: datetime
    duration: float = 0.0
    probes: int = 0
    findings: list[Finding] = field(default_factory=list)  # `pending` ones included
    notices: int = 0
    pending: int = 0  # names not judged: their deployment to that node has not finished


class Monitor:
    """Safe to call `sweep` from several tasks: sweeps run one at a time."""

    def __init__(self, certd: Certd, alerts: AlertBook, config: MonitorConfig,
                 trust: checks.TrustStore, clock: Callable[[], datetime] | None = None):
        self.certd = certd
        self.clock = clock or certd.clock
        self.alerts = alerts
        self.config = config
        self.trust = trust
        self.thresholds = checks.Thresholds.from_config(config)
        self.served: dict[tuple[str, str], Served] = {}  # (domain, node) -> last look
        self.last: MonitorReport | None = None
        self.session = None  # the notifiers' HTTP session (app.open_monitor; a reload uses it)
        self._lock = asyncio.Lock()

    def reconfigure(self, config: MonitorConfig, trust: checks.TrustStore) -> None:
        """A reloaded config: the next sweep uses it (one in progress finishes as it began)."""
        self.config = config
        self.trust = trust
        self.thresholds = checks.Thresholds.from_config(config)

    # what to probe ---------------------------------------------------------------------
    def targets(self, details: dict[str, CertDetails], *, endpoints: bool) -> list[ProbeTarget]:
        """The names of the certificates in `details` that have a certificate, on every node
        of their frontends; then, with `endpoints`, the extra endpoints."""
        out: list[ProbeTarget] = []
        for name, d in details.items():
            if d.summary is None:
                continue
            spec = self.certd.spec(name)
            for n in node_targets(self.certd.config, spec):
                out.extend(ProbeTarget.on_node(n.ref, domain, n.address, n.tls_port, spec.name)
                           for domain in spec.domains)
        if endpoints:
            for ep in self.config.endpoints:
                out.extend(ProbeTarget(n, ep.address, ep.port, f"{ep.address}:{ep.port}")
                           for n in ep.names)
        return out

    @staticmethod
    def expected(target: ProbeTarget, details: dict[str, CertDetails]
                 ) -> checks.Expected | None:
        d = details.get(target.certificate) if target.certificate else None
        if d is None or d.summary is None:
            return None
        cert = d.summary
        deployed_at = next((dep.updated_at for dep in d.deployments
                            if dep.ref == target.ref and dep.serial == cert.serial),
                           cert.issued_at)
        return checks.Expected(cert.serial, deployed_at)

    def pending(self, target: ProbeTarget, details: dict[str, CertDetails],
                now: datetime) -> Finding | None:
        """A `pending` finding when `target`'s deployment has not finished (see the module
        docstring), else None."""
        d = details.get(target.certificate) if target.certificate else None
        if d is None or d.summary is None or target.ref is None:
            return None
        grace = self.config.stale_grace
        row = next((dep for dep in d.deployments if dep.ref == target.ref), None)
        if row is None and now - d.summary.issued_at < grace:
            why = f"not deployed yet (issued {_ago(now - d.summary.issued_at)} ago)"
        elif (row is not None and row.status is DeployStatus.DEPLOYING
              and now - row.updated_at < grace):
            why = f"deployment in progress (began {_ago(now - row.updated_at)} ago)"
        else:
            return None
        return Finding(PENDING, Severity.INFO, target.domain, target.node,
                       f"{why}: not judged until it is done", certificate=target.certificate,
                       serial=d.summary.serial, not_after=d.summary.not_after)

    # the sweep ---------------------------------------------------------------------------
    async def sweep(self, names: Sequence[str] | None = None) -> MonitorReport:
        """Probe everything (or only the certificates `names`), update alerting, return the
        findings. Never raises for a node's trouble: that is a finding."""
        async with self._lock:
            return await self._sweep(set(names) if names is not None else None)

    async def _sweep(self, names: set[str] | None) -> MonitorReport:
        certd = self.certd
        await certd.load_aliases()
        report = MonitorReport(started_at=self.clock())
        t0 = time.monotonic()
        specs = [s.name for s in certd.specs() if names is None or s.name in names]
        details = await certd.store.details(specs)
        targets = self.targets(details, endpoints=names is None)
        now = self.clock()
        waiting: list[Finding] = []
        probed: list[ProbeTarget] = []
        for t in targets:
            found = self.pending(t, details, now)
            if found is None:
                probed.append(t)
            else:
                waiting.append(found)
        legacy = await self._legacy(probed) if self.config.protocols else {}
        limit = asyncio.Semaphore(self.config.concurrency)
        timeout = self.config.timeout.total_seconds()
        by_node: dict[str, list[Finding]] = {}
        answered: set[str] = set()
        first_seen: set[tuple[str, int]] = set()

        async def one(target: ProbeTarget) -> None:
            async with limit:
                result = await probe.probe(target, timeout=timeout, protocols=False,
                                           hsts=self.config.hsts)
            where = (target.address, target.port)
            if where in legacy and where not in first_seen:
                first_seen.add(where)  # node-wide protocol findings ride on one probe
                result = replace(result, legacy_protocols=legacy[where])
            found = checks.evaluate(result, expected=self.expected(target, details),
                                    thresholds=self.thresholds, trust=self.trust,
                                    now=self.clock())
            if result.error is None:
                answered.add(target.node)
            by_node.setdefault(target.node, []).extend(found)
            self._remember(target, result.chain, found)

        await asyncio.gather(*(one(t) for t in probed))
        report.probes = len(probed)
        for node, found in by_node.items():
            if node in answered or len({f.domain for f in found}) < 2:
                report.findings.extend(found)
            else:
                report.findings.append(_node_down(node, found))
        report.findings.extend(waiting)
        report.pending = len(waiting)
        # a pending pair's earlier alerts are left as they are: not judged, not resolved
        unjudged = {(f.certificate, f.node) for f in waiting}
        scope = None
        if names is not None or unjudged:
            def scope(f: Finding) -> bool:
                return ((names is None or f.certificate in names)
                        and (f.certificate, f.node) not in unjudged)
        report.notices = len(await self.alerts.update(report.findings, scope=scope))
        report.duration = time.monotonic() - t0
        if names is None:
            self._forget_gone(targets)
        self.last = report
        log.info("monitor: swept %d probes (%d findings, %d pending) in %.1f s", report.probes,
                 len(report.findings) - report.pending, report.pending, report.duration)
        return report

    async def _legacy(self, targets: Iterable[ProbeTarget]) -> dict[tuple[str, int], tuple]:
        first: dict[tuple[str, int], str] = {}
        for t in targets:
            first.setdefault((t.address, t.port), t.domain)
        limit = asyncio.Semaphore(self.config.concurrency)
        timeout = self.config.timeout.total_seconds()

        async def one(where: tuple[str, int], sni: str) -> tuple[tuple[str, int], tuple]:
            async with limit:
                return where, await probe.legacy_protocols(where[0], where[1], sni, timeout)

        return dict(await asyncio.gather(*(one(w, s) for w, s in first.items())))

    def _remember(self, target: ProbeTarget, chain: tuple[bytes, ...],
                  found: list[Finding]) -> None:
        not_after = None
        if chain:
            try:
                not_after = x509.load_der_x509_certificate(chain[0]).not_valid_after_utc
            except ValueError:
                pass
        stale = any(f.check == "stale" for f in found)
        self.served[(target.domain, target.node)] = Served(not_after, stale)

    def _forget_gone(self, targets: list[ProbeTarget]) -> None:
        keep = {(t.domain, t.node) for t in targets}
        for key in [k for k in self.served if k not in keep]:
            del self.served[key]


def _node_down(node: str, found: list[Finding]) -> Finding:
    """Every probe of `node` failed: one finding for the node, with the first reason."""
    first = found[0]
    names = len({f.domain for f in found})
    return Finding("unreachable", Severity.ERROR, ALL_NAMES, node,
                   f"no answer for any of {names} names: {first.message}")


def _ago(age: timedelta) -> str:
    seconds = max(0, int(age.total_seconds()))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"

