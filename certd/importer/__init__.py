"""`certd import`: certificates another ACME client obtained (certbot, acme.sh, or a pair of
files) become the current certificates of the certificates certd manages, with no new order:
deployed by the next sweep or `certd deploy`, monitored, renewed by certd when due.

    source (certbot.read, acmesh.read, pair) -> plan.make_plan -> plan.apply (Certd.adopt)

The rules are in `plan`; `run` is what the CLI calls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from certd import keys
from certd.app import open_certd
from certd.config import Config
from certd.deployers.base import DeployResult
from certd.errors import CertdError
from certd.importer import files
from certd.importer.files import ImportRefused
from certd.importer.model import Found, Source, Unreadable
from certd.importer.plan import Plan, apply, make_plan
from certd.model import IssuedCertificate, utcnow
from certd.service import _configured_specs

__all__ = ["ImportRefused", "Outcome", "Plan", "Source", "pair", "run"]


def pair(name: str, cert: Path, key: Path, chain: Path | None = None) -> Source:
    """One certificate from files the operator names: `cert` (the full chain, or the leaf with
    `chain`) and `key`, for the configured certificate `name`."""
    where = str(cert)
    try:
        certs = files.certificates(files.read_file(cert, "--cert", root=None), "--cert")
        if chain is not None:
            certs += files.certificates(files.read_file(chain, "--chain", root=None), "--chain")
        key_pem = keys.key_to_pem(files.private_key(files.read_file(key, "--key", root=None),
                                                    "--key"))
        found: Found | Unreadable = Found("files", name, files.shown(where, 200), tuple(certs),
                                          key_pem, target=name)
    except ImportRefused as exc:
        found = Unreadable("files", name, files.shown(where, 200), str(exc))
    return Source(f"files {files.shown(where, 200)}", (found,))


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    adopted: tuple[IssuedCertificate, ...] = ()
    deployed: dict[str, list[DeployResult] | BaseException] = field(default_factory=dict)


async def run(config: Config, source: Source, *, dry_run: bool = False, replace: bool = False,
              account: bool = True, deploy: bool = False) -> Outcome:
    """Plan the import of `source`; unless `dry_run` or the plan has problems, write it; with
    `deploy`, push what was imported to its nodes at once (else the next sweep or
    `certd deploy NAME` does). A dry run before the store exists does not create it."""
    database = config.database_path  # None: not a file (the store is opened to plan)
    if dry_run and database is not None and not database.exists():
        plan = await make_plan(config, list(_configured_specs(config).values()), None, source,
                               utcnow(), replace=replace, account=account)
        return Outcome(plan)
    async with open_certd(config) as certd:
        plan = await make_plan(config, certd.specs(), certd.store, source, certd.clock(),
                               replace=replace, account=account)
        if dry_run or not plan.ok:
            return Outcome(plan)
        adopted = tuple(await apply(certd, plan))
        deployed: dict[str, list[DeployResult] | BaseException] = {}
        if deploy and adopted:
            results = await asyncio.gather(*(certd.deploy(c.name) for c in adopted),
                                           return_exceptions=True)
            deployed = {c.name: r for c, r in zip(adopted, results)}
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, CertdError):
                    raise r
        return Outcome(plan, adopted, deployed)
