"""GET /metrics: the Prometheus text format, built at scrape time from the store (certificates,
event counts: they cover every process sharing the store), the monitor's last look at each
node, and this process's challenge listener.

Event counts come from the store's counters (one row per event kind, kept up to date by the
insert itself: `Store.event_counts`), not from a scan of the event log, so a scrape costs the
same with 100 events or 10 million, and purging old events (`events.retention`) never makes a
counter go down."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from certd import instances
from certd.model import utcnow
from certd.monitor.runner import Monitor
from certd.responder import ChallengeStats
from certd.rollout import RolloutStats
from certd.service import Certd
from certd.sweep import Sweeper

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RENEWAL_KINDS = {"issue.ok": "ok", "issue.failed": "failed", "issue.deferred": "deferred"}


@dataclass
class Sources:
    certd: Certd
    monitor: Monitor | None = None
    challenges: ChallengeStats | None = None
    sweeper: Sweeper | None = None
    rollout: RolloutStats | None = None  # this process's deploys (reloads, batch sizes)


class _Snapshot:
    """A prometheus_client collector over values read beforehand (collectors are sync)."""

    def __init__(self, metrics: list[Metric]):
        self.metrics = metrics

    def collect(self):
        return self.metrics


async def render(src: Sources) -> bytes:
    now = utcnow()
    overview = await src.certd.store.overview()
    counts = await src.certd.store.event_counts()
    out: list[Metric] = []

    not_after = GaugeMetricFamily("certd_certificate_not_after_timestamp_seconds",
                                  "Expiry of certd's current certificate", labels=["certificate"])
    for name, (cert, _state, _ari) in sorted(overview.items()):
        if cert is not None:
            not_after.add_metric([name], cert.not_after.timestamp())
    out.append(not_after)
    await src.certd.issuers.refresh(now)  # the cooldowns, as the store has them
    out += _issuers(src.certd, overview, counts, now)

    renewals = CounterMetricFamily("certd_renewals", "Issuance attempts by result",
                                   labels=["result"])
    for kind, result in RENEWAL_KINDS.items():
        renewals.add_metric([result], counts.get(kind, 0))
    deploys = CounterMetricFamily("certd_deploys", "Per-node deployments by result",
                                  labels=["result"])
    for kind, n in sorted(counts.items()):
        if kind.startswith("deploy.") and kind != "deploy.stopped":
            deploys.add_metric([kind.removeprefix("deploy.")], n)
    out += [renewals, deploys]
    if src.rollout is not None:
        out += _rollout(src.rollout)

    if src.challenges is not None:
        challenges = CounterMetricFamily("certd_challenge_requests",
                                         "HTTP-01 requests to this process by result",
                                         labels=["result"])
        for result, n in sorted(src.challenges.counts.items()):
            challenges.add_metric([result], n)
        out.append(challenges)

    last = src.sweeper.last if src.sweeper is not None else None
    if last is not None and last.finished_at is not None:
        out.append(GaugeMetricFamily("certd_last_sweep_timestamp_seconds",
                                     "End of the last renewal sweep",
                                     value=last.finished_at.timestamp()))
        out.append(GaugeMetricFamily("certd_last_sweep_duration_seconds",
                                     "Duration of the last renewal sweep", value=last.seconds))

    out += _instances(await instances.view(src.certd.store, now))
    if src.monitor is not None:
        out += _monitor(src.monitor, now)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(out))
    return generate_latest(registry)


def _issuers(certd: Certd, overview: dict, counts: dict, now) -> list[Metric]:
    """The CAs (acme.issuers): current certificates each issued, whether this process sends
    it new orders (not cooling down after an outage or a rate limit, whichever instance saw
    it: the cooldowns are in the store), orders moved on."""
    pool = certd.issuers
    by_issuer = GaugeMetricFamily("certd_certificates_by_issuer",
                                  "Current certificates by the CA that issued them "
                                  "(directory URL; 'unknown' for one stored before certd "
                                  "recorded it, or imported)", labels=["issuer"])
    tally: Counter = Counter()
    for cert, _state, _ari in overview.values():
        if cert is not None:
            issuer = cert.issuer or (pool.primary.directory if len(pool) == 1 else "unknown")
            tally[issuer] += 1
    for issuer, n in sorted(tally.items()):
        by_issuer.add_metric([issuer], n)
    up = GaugeMetricFamily("certd_issuer_up", "1 if new orders go to this CA (0 while it "
                           "cools down after an outage, 5xx or rate limit seen by any "
                           "instance sharing the store)",
                           labels=["issuer", "name"])
    for member in pool:
        up.add_metric([member.directory, member.name], 0 if member.cooling(now) else 1)
    fallbacks = CounterMetricFamily("certd_issuer_fallbacks",
                                    "Orders moved from one CA to the next",
                                    value=counts.get("issue.fallback", 0))
    return [by_issuer, up, fallbacks]


def _instances(view: dict) -> list[Metric]:
    """The instances sharing the store (certd/instances.py), the leases each holds, and
    whether the store answered."""
    alive = GaugeMetricFamily("certd_instances_alive",
                              "certd instances whose heartbeat the store holds, seen lately",
                              value=view["alive"])
    leases = GaugeMetricFamily("certd_instance_leases", "Leases each live instance holds",
                               labels=["instance", "host"])
    for i in view["instances"]:
        if i["alive"]:
            leases.add_metric([i["id"], i["host"]], len(i["leases"]))
    store = GaugeMetricFamily("certd_store_up", "1 if the store answered this scrape",
                              value=1 if view["store"]["ok"] else 0)
    return [alive, leases, store]


BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def _rollout(stats: RolloutStats) -> list[Metric]:
    """This process's deploys: reloads asked of each node, certificates per batch."""
    reloads = CounterMetricFamily("certd_node_reloads", "Reload commands run on each node "
                                  "by this process's deploys", labels=["frontend", "node"])
    for ref, n in sorted(stats.reloads.items()):
        reloads.add_metric([ref.frontend, ref.node], n)
    sizes = HistogramMetricFamily("certd_deploy_batch_size",
                                  "Certificates per deploy batch (this process)")
    seen = stats.batch_sizes.items()
    sizes.add_metric([], [(str(b), sum(n for size, n in seen if size <= b))
                          for b in BATCH_BUCKETS] + [("+Inf", sum(n for _, n in seen))],
                     sum_value=sum(size * n for size, n in seen))
    return [reloads, sizes]


def _monitor(monitor: Monitor, now) -> list[Metric]:
    expiry = GaugeMetricFamily("certd_served_certificate_expiry_seconds",
                               "Seconds until the certificate a node served at the last "
                               "monitor sweep expires (negative: expired)",
                               labels=["domain", "node"])
    stale = GaugeMetricFamily("certd_served_certificate_stale",
                              "1 if the node served another serial than certd's current one",
                              labels=["domain", "node"])
    for (domain, node), served in sorted(monitor.served.items()):
        if served.not_after is not None:
            expiry.add_metric([domain, node], (served.not_after - now).total_seconds())
        stale.add_metric([domain, node], 1 if served.stale else 0)
    out: list[Metric] = [expiry, stale]
    report = monitor.last
    if report is not None:
        out.append(GaugeMetricFamily("certd_monitor_last_sweep_timestamp_seconds",
                                     "Start of the last monitor sweep",
                                     value=report.started_at.timestamp()))
        out.append(GaugeMetricFamily("certd_monitor_last_sweep_duration_seconds",
                                     "Duration of the last monitor sweep",
                                     value=report.duration))
        findings = GaugeMetricFamily("certd_monitor_findings",
                                     "Findings of the last monitor sweep by severity",
                                     labels=["severity"])
        by_severity = Counter(f.severity.value for f in report.findings)
        for severity in ("info", "warning", "error", "critical"):
            findings.add_metric([severity], by_severity.get(severity, 0))
        out.append(findings)
    return out
