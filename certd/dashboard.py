"""What the operators' dashboard (certd/ui/, served at /ui/) shows beyond the certificate
views: the certificate x node matrix, counts by status, the worst findings, and the timeline of
the coming days (expiries, planned renewals with their reason, retries after a backoff). Pure
functions over what the caller read; the API handlers (certd/api/dashboard.py) only read and
serialise.

Sized for 10,000 aliases and more: the overview counts aliases from one read of their statuses
(Store.alias_statuses) and puts in its matrix the configured certificates plus the aliases that
are not deployed, worst first, at most MAX_ALIAS_ROWS of them (the count of the rest beside);
the timeline works on the sweep's one bulk read (Store.overview) and answers per-day counts
plus the first moments in order, not every moment of every certificate."""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from cryptography import x509

from certd import renewal
from certd.config import Config
from certd.model import (
    SEVERITY_RANK,
    Alert,
    AriState,
    CertificateState,
    CertStatus,
    CertSummary,
    IssuedCertificate,
)

# the state of one certificate on one node, worst first (the matrix's cells)
CELL_STATES = ("unreachable", "failed", "stale", "pending", "current")
MAX_FINDINGS = 20  # the overview's "worst findings first"
MAX_ALIAS_ROWS = 20  # aliases not deployed shown in the matrix, worst first
# an alias's status, worst first: the order of the matrix's alias rows
ALIAS_RANK = {s: i for i, s in enumerate(
    ("failed", "awaiting_dns", "issuing", "issued", "pending", "removing"))}
KINDS = ("expiry", "renewal", "retry")


def nodes(config: Config) -> list[str]:
    """Every configured node, as 'frontend/node', in configuration order."""
    return [f"{group}/{node.name}" for group, frontend in config.frontends.items()
            for node in frontend.nodes]


def cell(deployment: dict | None, unreachable: bool) -> str:
    """One matrix cell from the certificate view's deployment on that node."""
    if unreachable:
        return "unreachable"
    if deployment is None:
        return "pending"
    status = deployment["status"]
    if status in ("failed", "rolled_back"):
        return "failed"
    if status == "deployed":
        return "current" if deployment["current"] else "stale"
    return "pending"  # deploying; removed


def worst_aliases(statuses: Mapping[str, str], limit: int = MAX_ALIAS_ROWS) -> list[str]:
    """Up to `limit` aliases that are not deployed, worst status first, then by name."""
    return heapq.nsmallest(limit, (d for d, s in statuses.items() if s != "deployed"),
                           key=lambda d: (ALIAS_RANK.get(statuses[d], len(ALIAS_RANK)), d))


def _row(config: Config, view: dict, all_nodes: list[str], down: set[str], alias: bool) -> dict:
    mine = {f"{group}/{n.name}" for group in view["frontends"]
            for n in config.frontends[group].nodes} if view["frontends"] else set()
    deps = {f"{d['frontend']}/{d['node']}": d for d in view["deployments"]}
    return {"name": view["name"], "alias": alias, "status": view["status"],
            "days_left": view["days_left"],
            "cells": [cell(deps.get(node), node in down) if node in mine else None
                      for node in all_nodes]}


def overview(config: Config, configured: Sequence[dict], alias_statuses: Mapping[str, str],
             shown_aliases: Sequence[dict], alerts: Sequence[Alert]) -> dict:
    """Counts by status of the configured certificates (`configured`: their views) and of
    every alias (`alias_statuses`: domain -> status); the matrix of the configured ones, then
    of `shown_aliases` (the views of worst_aliases()), against every node of their frontend
    groups; how many aliases are not deployed and how many of those the matrix leaves out;
    the worst findings first."""
    all_nodes = nodes(config)
    down = {a.finding.node for a in alerts if a.finding.check == "unreachable"}
    rows = [_row(config, v, all_nodes, down, False) for v in configured]
    rows += [_row(config, v, all_nodes, down, True) for v in shown_aliases]
    worst = sorted(alerts, key=lambda a: (-SEVERITY_RANK[a.finding.severity],
                                          a.finding.days_remaining if a.finding.days_remaining
                                          is not None else float("inf"), a.finding.key))
    counts = Counter(v["status"] for v in configured) + Counter(alias_statuses.values())
    unserved = sum(s != "deployed" for s in alias_statuses.values())
    return {
        "counts": dict(sorted(counts.items())),
        "certificates": len(configured) + len(alias_statuses),
        "aliases": len(alias_statuses),
        "aliases_not_deployed": unserved,
        "aliases_not_shown": unserved - len(shown_aliases),
        "nodes": all_nodes,
        "matrix": rows,
        "alerts": len(alerts),
        "worst": worst[:MAX_FINDINGS],
    }


StoredRow = tuple[CertSummary | None, CertificateState | None, AriState | None]


def moments(rows: Mapping[str, StoredRow], names: Iterable[str], *,
            before_expiry: timedelta | None, ari: bool
            ) -> Iterable[tuple[datetime, str, str, str | None]]:
    """(when, certificate, kind, reason) of each of `names` that has a stored row: its
    expiry, its planned renewal (with the plan's reason: ari, before_expiry, lifetime) and a
    retry after a failure (reason `backoff`)."""
    for name in names:
        row = rows.get(name)
        if row is None:
            continue
        cert, state, ari_state = row
        if cert is not None:
            yield cert.not_after, name, "expiry", None
            plan = renewal.plan(cert, before_expiry=before_expiry,
                                ari=ari_state if ari else None)
            yield plan.at, name, "renewal", plan.reason
        if (state is not None and state.next_attempt_at is not None
                and (state.status is CertStatus.FAILED or state.attempts)):
            yield state.next_attempt_at, name, "retry", "backoff"


def timeline(found: Sequence[tuple[datetime, str, str, str | None]], now: datetime,
             days: int, limit: int) -> dict:
    """The next `days` of `found` (moments(), sorted): per day and kind how many (`per_day`,
    day 0 is today and holds what is overdue too), how many per kind and reason, and the
    first `limit` moments in order (oldest first; an overdue one marked so)."""
    end = bisect.bisect_right(found, (now + timedelta(days=days), "\U0010ffff"))
    per_day = {k: [0] * (days + 1) for k in KINDS}
    reasons: Counter[str] = Counter()
    overdue = 0
    start = now.timestamp()
    for when, _name, kind, reason in found[:end]:
        day = int((when.timestamp() - start) // 86400)
        if day < 0:
            overdue += 1
            day = 0
        per_day[kind][day] += 1
        reasons[(kind, reason)] += 1
    return {
        "now": now.isoformat(), "days": days, "total": end, "overdue": overdue,
        "per_day": per_day,
        "by_reason": {f"{k}:{r}" if r else k: n for (k, r), n in sorted(
            reasons.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))},
        "items": [{"certificate": name, "kind": kind, "at": when.isoformat(),
                   "reason": reason, "overdue": when < now}
                  for when, name, kind, reason in found[:min(end, limit)]],
    }


def history_item(cert: IssuedCertificate) -> dict:
    """One certificate of a name's history, as the dashboard shows it: never the key. The
    issuing CA's name is read from the leaf (the `issuer` is the directory it came from)."""
    try:
        issuer_name = x509.load_pem_x509_certificate(cert.cert_pem.encode()).issuer.rfc4514_string()
    except ValueError:
        issuer_name = None
    return {"serial": cert.serial, "not_before": cert.not_before.isoformat(),
            "not_after": cert.not_after.isoformat(), "issued_at": cert.issued_at.isoformat(),
            "fingerprint_sha256": cert.fingerprint_sha256, "issuer": cert.issuer,
            "issuer_name": issuer_name}
