"""certd's ledger of what it asked the CA for, mirroring Let's Encrypt's limits, so that work is
queued by due time instead of sent to be refused (and counted against the account).

Three buckets, each a sliding window over ledger entries:
- new orders per account per 3 hours;
- new certificates per registered domain (public suffix list) per week;
- failed validations per name per hour.
ARI renewals (orders carrying `replaces`) are exempt from all three, as at Let's Encrypt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from certd.config import BudgetConfig
from certd.names import registered_domain
from certd.store.base import Store

ORDER = "order"
CERTIFICATE = "certificate"
FAILED_VALIDATION = "failed_validation"

ORDER_WINDOW = timedelta(hours=3)
CERTIFICATE_WINDOW = timedelta(days=7)
FAILED_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    retry_at: datetime | None = None  # when the tightest bucket frees a slot
    reason: str = ""
    account_wide: bool = False  # the account's order bucket: no other order can go either


class Budget:
    def __init__(self, store: Store, limits: BudgetConfig, account: str, scope: str = ""):
        self.store = store
        self.limits = limits
        self.account = account  # ledger key for the per-account bucket
        # prefix of the per-domain and per-name keys: each CA counts its own (the first
        # issuer keeps the bare keys, as with a single CA; certd/issuance/issuers.py)
        self.scope = scope

    async def check(self, domains: tuple[str, ...], now: datetime) -> Verdict:
        buckets = [(ORDER, self.account, ORDER_WINDOW, self.limits.orders_per_3h,
                    "new orders per account per 3h")]
        for reg in sorted({registered_domain(d) for d in domains}):
            buckets.append((CERTIFICATE, self.scope + reg, CERTIFICATE_WINDOW,
                            self.limits.certificates_per_domain_per_week,
                            f"certificates for {reg} per week"))
        for name in domains:
            buckets.append((FAILED_VALIDATION, self.scope + name, FAILED_WINDOW,
                            self.limits.failed_validations_per_name_per_hour,
                            f"failed validations of {name} per hour"))
        worst: Verdict | None = None
        for kind, key, window, limit, what in buckets:
            times = await self.store.ledger_times(kind, key, now - window)
            if len(times) < limit:
                continue
            frees = times[len(times) - limit] + window
            if worst is None or frees > worst.retry_at:
                worst = Verdict(False, frees, f"budget: {limit} {what} used", kind == ORDER)
        return worst or Verdict(True)

    async def record_order(self, now: datetime) -> None:
        await self.store.ledger_add(ORDER, [self.account], now)

    async def record_certificate(self, domains: tuple[str, ...], now: datetime) -> None:
        await self.store.ledger_add(
            CERTIFICATE, sorted({self.scope + registered_domain(d) for d in domains}), now)

    async def record_failed_validation(self, names: list[str], now: datetime) -> None:
        await self.store.ledger_add(FAILED_VALIDATION, [self.scope + n for n in names], now)

    async def purge(self, now: datetime) -> None:
        await self.store.ledger_purge(now - CERTIFICATE_WINDOW)
