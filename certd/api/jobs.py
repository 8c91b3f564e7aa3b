"""The work an API request starts and the response does not wait for (issue and deploy a new
alias, renew, deploy, remove). In the daemon's own process it runs there (`Local`); in an API
worker process (certd/workers.py) it is handed to the daemon's main process as one JSON line
on a pipe (`Forward`), so that orders and deploys happen in the one process that runs the
scheduler, once per request. The request's checks, its store writes (the alias, the quota,
the audit event) are done by the handler before, in whichever process serves it: if a line is
lost (the main process restarting), the main process's sweep still finds the alias due."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from certd import aliases
from certd.api.http import background
from certd.errors import CertdError
from certd.service import Certd

log = logging.getLogger(__name__)

OPS = ("issue", "renew", "deploy", "remove")
MAX_LINE = 4096  # bytes: a domain name and a flag or two


async def perform(certd: Certd, op: str, args: dict[str, Any]) -> None:
    """Do one job. Failures are recorded by the service (state, events); here only logged."""
    name = args["name"]
    if op == "issue":
        await aliases.issue_and_deploy(certd, name)
    elif op == "remove":
        await aliases.finish_removal(certd, name, revoke=bool(args.get("revoke")))
    elif op == "renew":
        force = bool(args.get("force", True))
        try:
            if await certd.renew(name, force=force, wait=True) is not None:
                await certd.deploy(name, only_stale=not force)
        except CertdError as exc:
            log.warning("api: renew %s: %s", name, exc)
    elif op == "deploy":
        try:
            await certd.deploy(name)
        except CertdError as exc:
            log.warning("api: deploy %s: %s", name, exc)
    else:
        raise ValueError(f"unknown job {op!r}")


def encode(op: str, **args: Any) -> bytes:
    return json.dumps({"op": op, **args}, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> tuple[str, dict[str, Any]]:
    """(op, args) of one line; ValueError if it is not a job."""
    data = json.loads(line)
    if (not isinstance(data, dict) or data.get("op") not in OPS
            or not isinstance(data.get("name"), str)):
        raise ValueError("not a job line")
    op = data.pop("op")
    return op, data


class Jobs(Protocol):
    def submit(self, request: web.Request, op: str, **args: Any) -> None:
        """Start `op` past the response; never raises for the job's own failure."""


class Local:
    """Run jobs in this process, as background tasks of the API app."""

    def __init__(self, certd: Certd) -> None:
        self.certd = certd

    def submit(self, request: web.Request, op: str, **args: Any) -> None:
        background(request, perform(self.certd, op, args))


class Forward:
    """Hand jobs to the main process: `write` takes one encoded line (a pipe's write)."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write

    def submit(self, request: web.Request, op: str, **args: Any) -> None:
        self.write(encode(op, **args))
