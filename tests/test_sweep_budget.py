"""A spent order budget stops the sweep (the rest stays due, in order) and sets the wake time to
when the budget frees; it never turns into thousands of refused attempts."""

from __future__ import annotations

from certd import config as configuration
from certd.app import open_certd
from certd.budget import ORDER
from certd.sweep import Sweeper
from tests.certd_api import unreachable_acme


async def test_spent_budget_stops_the_sweep(tmp_path):
    cfg = configuration.parse({
        "state_dir": str(tmp_path / "state"),
        "acme": unreachable_acme(),
        "renewal": {"max_concurrent": 1, "budget": {"orders_per_3h": 2}},
        "frontends": {"web": {"nodes": [{"name": "fe1", "address": "127.0.0.2"}],
                              "deployer": {"type": "file", "path": str(tmp_path) + "/{node}"}}},
        "certificates": [{"name": f"c{i}", "domains": [f"c{i}.example.org"],
                          "frontends": ["web"]} for i in range(6)],
    })
    async with open_certd(cfg) as certd:
        result = await Sweeper(certd).sweep()
        orders = await certd.store.ledger_times(ORDER, cfg.acme.directory,
                                                certd.clock().replace(year=2000))
        deferred = await certd.store.events(kind="issue.deferred")
        failed = await certd.store.events(kind="issue.failed")
    assert len(orders) == 2  # two attempts (the CA is unreachable), then the budget is spent
    assert len(failed) == 2 and len(deferred) == 1  # one more tried, told to wait; no others
    assert result.due == 3
    assert result.wake_at is not None and result.wake_at > orders[0]
