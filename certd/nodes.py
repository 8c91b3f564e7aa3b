"""Where a certificate goes: from its spec and the config, every node of every frontend group
it names, as typed targets. The one place that walks `spec.frontends` x `frontend.nodes`; the
rollout (deployer targets, certd/rollout.py `targets`), the monitor (probe targets) and the
preflight (HTTP-01 paths through each node) all start from here."""

from __future__ import annotations

from dataclasses import dataclass, field

from certd.config import Config, FrontendConfig
from certd.model import CertificateSpec, NodeRef


@dataclass(frozen=True)
class NodeTarget:
    """One node of one of a certificate's frontend groups."""

    ref: NodeRef
    certificate: str
    address: str
    tls_port: int  # where the node serves the certificate (verify, monitor)
    http_port: int  # where the node proxies the ACME challenges (preflight)
    ssh_port: int | None  # per-node SSH port override
    minion: str | None  # salt minion id, if it is not the node name
    frontend: FrontendConfig = field(compare=False, repr=False)  # the group's settings


def node_targets(config: Config, spec: CertificateSpec) -> list[NodeTarget]:
    """Every node of every group in `spec.frontends`, in config order (groups as the spec
    names them, nodes as their group lists them)."""
    out = []
    for group in spec.frontends:
        frontend = config.frontends[group]
        for node in frontend.nodes:
            out.append(NodeTarget(NodeRef(group, node.name), spec.name, node.address,
                                  frontend.tls_port, frontend.http_port, node.ssh_port,
                                  node.minion, frontend))
    return out
