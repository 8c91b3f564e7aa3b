"""ARI (RFC 9773) against a CA that offers it: acme2certifier, validating through the lab.
A window in the future -> no order; an inverted window -> ignored, lifetime timing; a window in
the past -> a renewal whose order carries `replaces`."""

from __future__ import annotations

import asyncio

import pytest
from cryptography import x509

from certd.app import challenge_listener, open_certd
from certd.issuance.ari import cert_id
from certd.sweep import Sweeper
from tests.certd_lab import lab_config_data
from certd import config as configuration

pytestmark = pytest.mark.lab


def _config(lab, a2c, tmp_path):
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": "ari", "domains": ["ari.test"], "frontends": ["web"]}])
    data["acme"] = {"directory": a2c.directory_url, "timeout": "10s", "order_timeout": "60s"}
    return configuration.parse(data)


async def test_ari_windows_decide_renewal(lab, a2c, tmp_path):
    lab.set_sites({"ari": ["ari.test"]})
    cfg = _config(lab, a2c, tmp_path)
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        sweeper = Sweeper(certd)
        first = await sweeper.sweep()  # issues, deploys, then asks ARI for the new serial
        assert first.renewed == 1
        cert = await certd.store.current_certificate("ari")
        cid = cert_id(x509.load_pem_x509_certificate(cert.cert_pem.encode()))
        orders = a2c.count_new_orders()

        # future window: certd picks a moment inside it and orders nothing
        state = await sweeper.check_ari("ari")
        assert state.window_start < state.renew_at <= state.window_end
        plan = await certd.plan(cert)
        assert plan.reason == "ari" and plan.at == state.renew_at
        result = await sweeper.sweep()
        assert result.due == 0 and a2c.count_new_orders() == orders
        assert result.wake_at is not None

        # inverted window: ignored, the lifetime rule applies, still nothing to order
        await asyncio.to_thread(a2c.set_window, "inverted")
        state = await sweeper.check_ari("ari")
        assert state.window_end < state.window_start and state.renew_at is None
        assert (await certd.plan(cert)).reason == "lifetime"
        assert (await sweeper.sweep()).due == 0 and a2c.count_new_orders() == orders

        # window in the past: renew now, replacing the old certificate
        await asyncio.to_thread(a2c.set_window, "past")
        state = await sweeper.check_ari("ari")
        assert state.renew_at is not None and state.window_end <= certd.clock()
        result = await sweeper.sweep()
        assert result.renewed == 1
        assert a2c.count_new_orders() == orders + 1
        assert a2c.count_new_orders(replaces=cid) == 1
        renewed = await certd.store.current_certificate("ari")
        assert renewed.serial != cert.serial
        events = await certd.store.events(certificate="ari", kind="issue.ok", limit=1)
        assert events[0].data["replaces"] == cid and events[0].data["reason"] == "due (ari)"
        deployed = {d.node: d.serial for d in await certd.store.deployments("ari")}
        assert deployed == {"fe1": renewed.serial, "fe2": renewed.serial}
