"""The daemon's STATUS= line counts (certd/daemon_status.py): a certificate whose current serial
a node refused counts as failing, like one whose last order failed."""

from __future__ import annotations

from datetime import timedelta

from certd.app import open_certd
from certd.daemon_status import count, status_line
from certd.model import CertificateState, CertStatus, Deployment, DeployStatus, utcnow
from certd.sweep import Sweeper
from tests.certd_api import api_config
from tests.test_store_contract import cert


async def test_refused_deploys_and_failed_orders_both_count_as_failing(tmp_path):
    names = ["ok", "refused", "ordering-failed", "pending-deploy"]
    cfg = api_config(tmp_path, certificates=[
        {"name": n, "domains": [f"{n}.example.org"], "frontends": ["web"]} for n in names])
    now = utcnow()
    async with open_certd(cfg) as certd:
        store = certd.store
        for i, name in enumerate(["ok", "refused", "pending-deploy"]):
            await store.add_certificate(cert(name, f"0{i + 1}", issued=now - timedelta(days=1),
                                             domains=(f"{name}.example.org",)))
        await store.put_state(CertificateState("ok", CertStatus.DEPLOYED))
        await store.put_state(CertificateState("refused", CertStatus.ISSUED))
        await store.put_state(CertificateState("pending-deploy", CertStatus.ISSUED))
        await store.put_state(CertificateState("ordering-failed", CertStatus.FAILED,
                                               last_error="CA said no", attempts=1,
                                               next_attempt_at=now + timedelta(hours=1)))
        await store.put_deployment(Deployment("refused", "web", "fe1", "02",
                                              DeployStatus.FAILED, "nginx -t: exit 1"))
        await store.put_deployment(Deployment("pending-deploy", "web", "fe1", "02",
                                              DeployStatus.FAILED, "an older serial failed"))
        counts = await count(Sweeper(certd))
    assert counts.failing == 2
    assert status_line(4, counts, None).endswith("2 failing; last sweep -")
