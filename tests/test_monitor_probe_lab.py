"""probe() and evaluate() against real servers: a lab nginx node, a deliberately weak nginx
(TLS 1.0/1.1 at security level 0, RSA-1024 / SHA-1 self-signed), a port nobody listens on,
and a TCP server that never speaks TLS."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certd.config import MonitorConfig
from certd.model import ProbeTarget, Severity
from certd.monitor.checks import Expected, Thresholds, evaluate, load_trust_store
from certd.monitor.probe import legacy_protocols, probe
from tests.lab.frontends import CERT_FILE, FALLBACK_DIR
from tests.lab.procs import free_port
from tests.lab.weak_tls import WEAK_NAME, WeakNginx

pytestmark = pytest.mark.lab

THRESHOLDS = Thresholds.from_config(MonitorConfig(hsts_min_age="1d"))
UNUSED = "127.0.0.5"  # nothing in the lab listens here


def _checks(result, expected=None):
    found = evaluate(result, expected=expected, thresholds=THRESHOLDS,
                     trust=load_trust_store(None), now=dt.datetime.now(dt.timezone.utc))
    return {f.check: f for f in found}


async def test_probe_a_lab_node_reads_the_served_chain(lab):
    node = lab.node("fe1")
    target = ProbeTarget("nobody.certd-lab.test", node.address, node.tls_port, "lab/fe1")
    result = await probe(target, timeout=5, protocols=True, hsts=True)
    assert result.error is None, result.error
    fallback = x509.load_pem_x509_certificate(
        (lab.frontends["fe1"].certs / FALLBACK_DIR / CERT_FILE).read_bytes())
    assert result.chain == (fallback.public_bytes(serialization.Encoding.DER),)
    assert result.tls_version == "TLSv1.3"
    assert result.legacy_protocols == () and result.modern_protocols is True
    assert result.hsts_checked and result.hsts is None
    found = _checks(result, Expected("00", None))
    assert "self-signed" in found["chain"].message
    assert found["hostname"].severity == Severity.CRITICAL
    assert found["stale"].serial == format(fallback.serial_number, "x")
    assert "hsts" in found and not any(c.startswith("protocol.") for c in found)
    assert await legacy_protocols(node.address, node.tls_port, "x.test", 5) == ()


async def test_weak_endpoint_findings(tmp_path):
    with WeakNginx(tmp_path, "127.0.0.4").start() as weak:
        target = ProbeTarget(WEAK_NAME, weak.address, weak.port, f"{weak.address}:{weak.port}")
        result = await probe(target, timeout=5, protocols=True, hsts=True)
        direct = await legacy_protocols(weak.address, weak.port, WEAK_NAME, 5)
    assert result.error is None, result.error
    # Debian 12's OpenSSL 3.0 still speaks TLS 1.0/1.1 at SECLEVEL=0 (it cannot offer SSLv3)
    assert result.legacy_protocols == direct == ("TLSv1", "TLSv1.1")
    assert result.tls_version == "TLSv1.2" and result.modern_protocols is True
    assert result.hsts == "max-age=300"
    found = _checks(result)
    for check in ("protocol.tls1.0", "protocol.tls1.1", "posture.key", "posture.signature"):
        assert found[check].severity == Severity.ERROR, check
    assert "1024" in found["posture.key"].message
    assert "self-signed" in found["chain"].message
    assert "max-age=300" in found["hsts"].message
    assert "hostname" not in found and "protocol.modern" not in found


async def test_unreachable_is_a_finding_not_an_exception():
    port = free_port([UNUSED])
    target = ProbeTarget("down.test", UNUSED, port, f"{UNUSED}:{port}", certificate="down")
    result = await probe(target, timeout=3)
    assert result.error is not None and result.error.startswith("connect:"), result.error
    assert result.chain == () and result.legacy_protocols == ()
    found = _checks(result, Expected("ab", None))
    assert list(found) == ["unreachable"]
    assert found["unreachable"].certificate == "down"
    assert await legacy_protocols(UNUSED, port, "down.test", 3) == ()


async def test_silent_tcp_server_times_out_into_unreachable():
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read()  # says nothing, until the client gives up

    port = free_port([UNUSED])
    server = await asyncio.start_server(silent, UNUSED, port)
    try:
        async with asyncio.timeout(20):  # the probe's own timeout must fire well before
            result = await probe(ProbeTarget("silent.test", UNUSED, port, "silent"),
                                 timeout=0.5, protocols=True)
    finally:
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()
    assert connections, "the probe never connected"
    assert result.error == "timeout"
    assert list(_checks(result)) == ["unreachable"]


async def test_deploy_verification_and_the_monitor_share_one_probe(lab, monkeypatch):
    """verify.wait_serving looks through probe(): the same handshake, the same served serial."""
    from certd import verify
    from certd.monitor import probe as probe_module

    node = lab.node("fe1")
    looked: list[ProbeTarget] = []

    async def recording(target, **kwargs):
        looked.append(target)
        return await probe(target, **kwargs)

    monkeypatch.setattr(probe_module, "probe", recording)
    monitor_view = await probe_module.probe(
        ProbeTarget("nobody.certd-lab.test", node.address, node.tls_port, "lab/fe1"),
        timeout=5, protocols=False)
    served = format(x509.load_der_x509_certificate(monitor_view.chain[0]).serial_number, "x")
    assert await verify.served_serial(node.address, node.tls_port,
                                      "nobody.certd-lab.test") == (served, "")
    assert await verify.wait_serving(node.address, node.tls_port, "nobody.certd-lab.test",
                                     served, 5) == (True, "")
    ok, seen = await verify.wait_serving(node.address, node.tls_port, "nobody.certd-lab.test",
                                         "00", 0.2)
    assert (ok, seen) == (False, f"serial {served}")
    assert len(looked) >= 4
    assert {(t.domain, t.address, t.port) for t in looked} == {
        ("nobody.certd-lab.test", node.address, node.tls_port)}
