"""The Deployer Protocol and what every deployer shares: the file set and the targets.

Deployed layout, per certificate, on every node (a contract operators configure against):

    <path>/fullchain.pem   leaf + intermediates
    <path>/privkey.pem     private key, 0600
    <path>/cert.pem        leaf
    <path>/chain.pem       intermediates
    <path>/combined.pem    key + full chain (HAProxy), 0600
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Protocol

from certd.config import render
from certd.model import IssuedCertificate, NodeRef


@dataclass(frozen=True)
class PemFile:
    name: str
    content: str = field(repr=False)
    mode: int


def file_set(cert: IssuedCertificate) -> list[PemFile]:
    """The five files of the deployed layout, key files 0600."""
    return [
        PemFile("fullchain.pem", cert.fullchain_pem, 0o644),
        PemFile("privkey.pem", cert.key_pem, 0o600),
        PemFile("cert.pem", cert.cert_pem, 0o644),
        PemFile("chain.pem", cert.chain_pem, 0o644),
        PemFile("combined.pem", cert.key_pem + cert.fullchain_pem, 0o600),
    ]


@dataclass(frozen=True)
class Target:
    """One node of one frontend group, for one certificate, with its templates rendered."""

    frontend: str
    node: str
    address: str
    certificate: str
    path: str
    check: str | None
    reload: str | None
    timeout: float
    port: int | None = None  # per-node SSH port override
    minion: str | None = None  # salt minion id

    @property
    def ref(self) -> NodeRef:
        return NodeRef(self.frontend, self.node)

    @classmethod
    def render(cls, *, frontend: str, node: str, address: str, certificate: str,
               path: str, check: str | None, reload: str | None, timeout: float,
               port: int | None = None, minion: str | None = None) -> Target:
        values = {"node": node, "address": address, "certificate": certificate}
        return cls(
            frontend=frontend, node=node, address=address, certificate=certificate,
            path=render(path, **values),
            check=render_command(check, values) if check else None,
            reload=render_command(reload, values) if reload else None,
            timeout=timeout, port=port, minion=minion or node,
        )


def render_command(template: str, values: dict[str, str]) -> str:
    """Split the command into words first, then fill each word: a value with a space, a quote
    or a ';' stays inside its one argument. Returns the command re-quoted for shlex.split."""
    try:
        words = shlex.split(template)
    except ValueError:
        return render(template, **values)  # unparseable: run_command reports it
    return shlex.join(render(word, **values) for word in words)


@dataclass(frozen=True)
class DeployResult:
    """What happened on one node. `output` holds the commands' captured output."""

    target: Target
    ok: bool
    message: str
    rolled_back: bool = False
    output: str = ""
    # what failed: host_key, auth, unreachable, write, refused, check, reload, verify; or,
    # with ok=True, LEFT_ALONE: a removal that found things at the path certd did not make
    kind: str = ""


LEFT_ALONE = "left_alone"


def removal_message(where: str, path: str, removed: list[str], left: list[str]) -> str:
    """`file[fe1]: removed P, .P.d` / `...: nothing of certd's at P`, then `; left alone: ...`
    for each thing at the path that was not certd's."""
    head = (f"{where}: removed {', '.join(removed)}" if removed
            else f"{where}: nothing of certd's at {path}")
    return head + "".join(f"; left alone: {note}" for note in left)


@dataclass(frozen=True)
class Placement:
    """One certificate for one node: the unit a batch is made of."""

    target: Target
    cert: IssuedCertificate


def placements(targets: list[Target], cert: IssuedCertificate) -> list[Placement]:
    """One certificate for several nodes, as a batch."""
    return [Placement(t, cert) for t in targets]


class Deployer(Protocol):
    """Places certificates on nodes and reloads them, a batch at a time: several certificates
    (Placements) for the nodes of one frontend group. The cost on a node is per batch: every
    certificate's set is placed, then each distinct rendered `check` runs once and each
    distinct `reload` once on that node (a command that names `{certificate}` renders once
    per certificate, and so runs once per certificate).

    - Returns one DeployResult per placement, in order. A per-certificate failure (a refused
      or unwritable path) fails that placement only; the node's other certificates go on.
      A node-level failure (unreachable; `check` or `reload` failing) fails every placement
      of that node that got that far, after the deployer put each of them back on its
      previous set (rolled_back=True; a set with nothing before it stays: nothing to go back
      to) and, if the reload had run, reloaded the node again. kind='check'/'reload' tells
      the caller the failure is the batch's: it may split the batch and try again (the
      rollout bisects). Never raises for a node: other nodes of the batch are not affected.
    - Idempotent: deploying the same certificate again leaves the same files.
    - Files are placed atomically: a reader sees the old complete set or the new one.
    - Concurrency: nodes run concurrently (bounded by `max_parallel`); callers never hand
      two batches holding the same (certificate, node) at once (the `deploy:NAME` lease).
    - `roll_back` points each target back at the set before its last deploy, then reloads
      each node once (targets grouped by node), for certificates that failed verification.
      `remove` deletes what certd placed for the certificate (its marked versioned layout,
      never anything else at `path`: that is left alone and named in the message, ok=True,
      kind=LEFT_ALONE) and reloads if it removed something.
    - A symlink where the deployer expects its own directory or file is refused before
      anything is written (ok=False, kind='refused'); nothing is written through it.
    - Cleanup: the deployer removes its own temporary files (or the next deploy prunes
      them); `close` releases connections, and the deployer may be used again afterwards.
    """

    kind: str  # 'file', 'ssh', 'salt': names the deployer in messages ("ssh[fe1]: ...")

    async def deploy(self, batch: list[Placement]) -> list[DeployResult]: ...

    async def roll_back(self, targets: list[Target]) -> list[DeployResult]: ...

    async def remove(self, targets: list[Target]) -> list[DeployResult]: ...

    async def close(self) -> None: ...
