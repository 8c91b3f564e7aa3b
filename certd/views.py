"""How a certificate is shown to people and scripts: one JSON-ready dict, shared by
`certd status --json` and the REST API, so both say the same thing. Views of many
certificates are built from one batch read (Store.details), not from queries per name."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from certd import renewal
from certd.model import CertDetails, CertificateSpec, DeployStatus
from certd.service import Certd


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def build_view(certd: Certd, spec: CertificateSpec, details: CertDetails, now: datetime) -> dict:
    cert, state = details.summary, details.state
    ari = details.ari if certd.config.acme.ari else None
    plan = (renewal.plan(cert, before_expiry=certd.config.renewal.before_expiry, ari=ari)
            if cert else None)
    deps = details.deployments
    return {
        "name": spec.name,
        "domains": list(spec.domains),
        "frontends": list(spec.frontends),
        "status": state.status.value if state else "pending",
        "serial": cert.serial if cert else None,
        "not_before": _iso(cert.not_before) if cert else None,
        "not_after": _iso(cert.not_after) if cert else None,
        "fingerprint_sha256": cert.fingerprint_sha256 if cert else None,
        # the CA that issued it: its directory URL and its name in acme.issuers
        **_issuer(certd, cert),
        # the ACME profile the current certificate was ordered with, and the one the next
        # order asks for (certificates[].profile, an alias's, acme.profile)
        "profile": cert.profile if cert else None,
        "profile_wanted": spec.profile,
        "days_left": round((cert.not_after - now).total_seconds() / 86400, 1) if cert else None,
        "renewal_at": _iso(plan.at) if plan else None,
        "renewal_reason": plan.reason if plan else None,
        "deployed_nodes": sorted(
            str(d.ref) for d in deps
            if cert and d.serial == cert.serial and d.status.value == "deployed"
        ),
        "deployments": [
            {"frontend": d.frontend, "node": d.node, "serial": d.serial,
             "status": d.status.value, "current": bool(cert and d.serial == cert.serial),
             # certd saw the node serve it after the reload (frontends.*.verify), and when:
             # stored with the record by the rollout (certd/rollout.py _verify)
             "verified": d.status == DeployStatus.DEPLOYED and d.verified_at is not None,
             "verified_at": (_iso(d.verified_at) if d.status == DeployStatus.DEPLOYED
                             else None),
             "message": d.message, "updated_at": d.updated_at.isoformat(),
             "batch": d.batch or None, "seconds": d.seconds}
            for d in deps
        ],
        "last_error": state.last_error if state else None,
        "attempts": state.attempts if state else 0,
        "next_attempt_at": _iso(state.next_attempt_at) if state else None,
    }


def _issuer(certd: Certd, cert) -> dict:
    """`issuer` (directory URL; for a certificate stored before certd recorded it, the one
    CA when there is only one) and `issuer_name` (None when no longer configured)."""
    pool = certd.issuers
    directory = cert.issuer if cert else None
    if cert and directory is None and len(pool) == 1:
        directory = pool.primary.directory
    member = pool.by_directory(directory)
    return {"issuer": directory, "issuer_name": member.name if member else None}


async def certificate_views(certd: Certd, specs: Sequence[CertificateSpec], now: datetime
                            ) -> list[dict]:
    """The views of `specs` (from the config, an alias the caller holds, or
    Certd.resolve/all_specs: never a name looked up in a copy another process can stale)."""
    details = await certd.store.details([s.name for s in specs])
    return [build_view(certd, s, details[s.name], now) for s in specs]


def text_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows (the header first) as aligned lines for a terminal."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def name_list(names: Sequence[str], limit: int = 5) -> str:
    """Names someone typed, for one line of an error: odd ones (control or bidi characters,
    spaces, empty, over-long) quoted and escaped, the first `limit`, then a count."""
    def one(name: str) -> str:
        if name.isprintable() and 0 < len(name) <= 100 and " " not in name:
            return name
        text = repr(name)
        return text if len(text) <= 60 else text[:57] + "..."
    shown = ", ".join(one(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
