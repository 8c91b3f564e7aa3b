"""certd/nodes.py: the one walk from a certificate spec to its nodes, and what each user of it
(the rollout's deployer targets, the monitor's probe targets, the preflight) makes of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certd import config as configuration
from certd.deployers.base import Target
from certd.model import (
    CertDetails,
    CertificateSpec,
    CertSummary,
    Deployment,
    DeployStatus,
    NodeRef,
)
from certd.monitor.runner import Monitor
from certd.nodes import node_targets
from certd.rollout import targets
from tests.test_deploy_file import issued

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fleet_config(tmp_path) -> configuration.Config:
    return configuration.parse({
        "state_dir": str(tmp_path / "state"),
        "frontends": {
            "web": {
                "tls_port": 8443, "http_port": 8080,
                "check": "nginx -t -c /etc/nginx/{node}.conf",
                "reload": "systemctl reload nginx@{node}",
                "command_timeout": "7s",
                "nodes": [{"name": "fe1", "address": "10.0.0.1"},
                          {"name": "fe2", "address": "10.0.0.2", "ssh_port": 2222}],
                "deployer": {"type": "file", "path": "/srv/{node}/{certificate}"}},
            "edge": {
                "nodes": [{"name": "lb1", "address": "10.0.1.1", "minion": "lb1.minion"},
                          {"name": "fe1", "address": "10.0.1.2"}],
                "deployer": {"type": "file", "path": "/etc/haproxy/{address}/{certificate}"}},
            "unused": {
                "nodes": [{"name": "x1", "address": "10.0.2.1"}],
                "deployer": {"type": "file", "path": "/x/{certificate}"}},
        },
    })


def test_node_targets_walk_every_group_named_by_the_spec_in_order(tmp_path):
    cfg = fleet_config(tmp_path)
    spec = CertificateSpec("shop", ("shop.example.org", "www.shop.example.org"), ("edge", "web"))
    got = node_targets(cfg, spec)
    assert [n.ref for n in got] == [NodeRef("edge", "lb1"), NodeRef("edge", "fe1"),
                                    NodeRef("web", "fe1"), NodeRef("web", "fe2")]
    # the same node name in two groups is two nodes
    assert len({n.ref for n in got}) == 4 and str(got[1].ref) == "edge/fe1"
    by = {str(n.ref): n for n in got}
    assert (by["web/fe2"].address, by["web/fe2"].tls_port, by["web/fe2"].http_port,
            by["web/fe2"].ssh_port, by["web/fe2"].minion) == ("10.0.0.2", 8443, 8080, 2222, None)
    assert (by["edge/lb1"].tls_port, by["edge/lb1"].http_port, by["edge/lb1"].ssh_port,
            by["edge/lb1"].minion) == (443, 80, None, "lb1.minion")
    assert all(n.certificate == "shop" for n in got)
    assert by["web/fe1"].frontend is cfg.frontends["web"]


def test_rollout_targets_render_each_node_target(tmp_path):
    cfg = fleet_config(tmp_path)
    spec = CertificateSpec("shop", ("shop.example.org",), ("web", "edge"))
    got = targets(cfg, spec)
    assert [t.ref for t in got] == [n.ref for n in node_targets(cfg, spec)]
    assert got[1] == Target(
        frontend="web", node="fe2", address="10.0.0.2", certificate="shop",
        path="/srv/fe2/shop", check="nginx -t -c /etc/nginx/fe2.conf",
        reload="systemctl reload nginx@fe2", timeout=7.0, port=2222, minion="fe2")
    assert got[2] == Target(
        frontend="edge", node="lb1", address="10.0.1.1", certificate="shop",
        path="/etc/haproxy/10.0.1.1/shop", check=None, reload=None,
        timeout=cfg.frontends["edge"].command_timeout.total_seconds(), port=None,
        minion="lb1.minion")
    assert got[3].minion == "fe1"  # the node name, when no minion id is configured


class _Certd:
    """What Monitor.targets and Monitor.pending read of Certd."""

    def __init__(self, config, specs):
        self.config = config
        self.clock = lambda: T0
        self._specs = {s.name: s for s in specs}

    def spec(self, name):
        return self._specs[name]


def test_monitor_probes_the_same_nodes_and_matches_deployments_by_ref(tmp_path):
    cfg = fleet_config(tmp_path)
    spec = CertificateSpec("shop", ("shop.example.org", "www.shop.example.org"), ("edge", "web"))
    full = issued("shop", "shop.example.org")
    cert = CertSummary(full.name, full.serial, full.domains, full.not_before, full.not_after,
                       T0 - timedelta(hours=1))
    monitor = Monitor(_Certd(cfg, [spec]), alerts=None, config=cfg.monitor, trust=None)
    # edge/fe1 holds it; web/fe1 (same node name, other group) is still deploying
    details = {"shop": CertDetails(cert, None, None, (
        Deployment("shop", "edge", "fe1", cert.serial, DeployStatus.DEPLOYED, updated_at=T0),
        Deployment("shop", "web", "fe1", "", DeployStatus.DEPLOYING,
                   updated_at=T0 + timedelta(minutes=1)),
    ))}
    probes = monitor.targets(details, endpoints=False)
    assert [(t.ref, t.domain) for t in probes] == [
        (n.ref, d) for n in node_targets(cfg, spec) for d in spec.domains]
    assert {(t.node, t.frontend, t.address, t.port) for t in probes} == {
        (str(n.ref), n.ref.frontend, n.address, n.tls_port) for n in node_targets(cfg, spec)}
    on = {str(t.ref): t for t in probes}
    assert monitor.expected(on["edge/fe1"], details).deployed_at == T0
    assert monitor.expected(on["web/fe1"], details).deployed_at == cert.issued_at
    now = T0 + timedelta(minutes=2)
    assert monitor.pending(on["edge/fe1"], details, now) is None
    waiting = monitor.pending(on["web/fe1"], details, now)
    assert waiting is not None and waiting.node == "web/fe1"  # the stored, printed form
