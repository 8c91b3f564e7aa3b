"""The periodic work: a renewal sweep (ARI checks, due renewals, pending deploys) and the deploy
sync. The scheduler calls these; so do `certd renew --all` and the tests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from certd import renewal
from certd.errors import CertdError, StoreError
from certd.issuance import ari
from certd.model import AriState
from certd.service import BudgetDeferred, Certd

log = logging.getLogger(__name__)

ARI_CONCURRENCY = 10
ARI_ERROR_RETRY = ari.ERROR_RETRY
# a due certificate whose issue lease another instance holds: the next sweep looks again this
# soon (the scheduler's MIN_GAP applies), so work of an instance killed mid-order is taken
# over (its heartbeat stops, or its lease expires) instead of waiting for sweep_interval
BUSY_RECHECK = timedelta(seconds=10)


@dataclass(frozen=True)
class SweepResult:
    due: int
    renewed: int
    failed: int
    wake_at: datetime | None  # the earliest moment the next sweep has work
    seconds: float
    finished_at: datetime | None = None


class Sweeper:
    def __init__(self, certd: Certd):
        self.certd = certd
        self.store = certd.store
        self._lock = asyncio.Lock()
        self.last: SweepResult | None = None

    async def decide(self, overview: dict | None = None) -> renewal.Decision:
        """`overview`: Store.overview() if the caller has read it already."""
        return renewal.decide(
            self.certd.specs(), overview if overview is not None else await self.store.overview(),
            self.certd.clock(),
            before_expiry=self.certd.config.renewal.before_expiry,
            ari=self.certd.config.acme.ari,
            unfinished={o.certificate for o in await self.store.unfinished_orders()},
        )

    async def sweep(self) -> SweepResult | None:
        """One pass. Never raises for a certificate's failure: it is recorded and backed off.
        Returns None if a sweep was already running (its result will cover this one).

        The store becoming unavailable (StoreError.unavailable) is no certificate's failure:
        the pass stops there, takes no further leases for the rest (each would fail the same
        way), and raises one StoreError saying so; the scheduler sweeps again later
        (scheduler.SWEEP_RETRY, doubling) and logs it once."""
        if self._lock.locked():
            return None
        async with self._lock:
            started = time.perf_counter()
            await self.certd.load_aliases()
            now = self.certd.clock()
            await self.store.purge_challenges(now)
            await self.certd.budget.purge(now)
            decision = await self.decide()
            halt: list[StoreError] = []  # the store became unavailable: stop taking work
            if decision.ari_checks and await self._offers_ari():
                await self._check_ari(decision.ari_checks, halt)
                if halt:
                    raise _stopped(halt[0], len(decision.ari_checks), "ARI checks") from halt[0]
                decision = await self.decide()
            # deploys go into batches as soon as there is something to deploy: issuance does
            # not wait for them, and a certificate issued early does not wait for the sweep
            deploys: dict[str, asyncio.Task] = {}
            due = {d.name for d in decision.due}
            pending = set(decision.deploy)

            def deployable(name: str) -> None:
                if name not in deploys:
                    deploys[name] = asyncio.create_task(self._deploy(name))

            for name in decision.deploy:
                if name not in due:  # due ones go after their renewal: the new certificate
                    deployable(name)
            busy: set[str] = set()  # due, but another instance holds the issue lease
            outcomes, budget_frees = await self._renew_due(
                decision.due, lambda name, ok: (ok or name in pending) and deployable(name),
                busy, halt)
            await asyncio.gather(*deploys.values())
            if halt:
                raise _stopped(halt[0], len(decision.due) - len(outcomes),
                               "due certificates") from halt[0]
            renewed = [name for name, ok in outcomes if ok]
            if renewed or any(not ok for _, ok in outcomes):
                decision = await self.decide()  # new certificates, new backoffs: new wake time
            wake = decision.wake_at
            if busy:  # another instance holds their lease: look again soon (it may die)
                again = self.certd.clock() + BUSY_RECHECK
                wake = min(wake, again) if wake else again
            if budget_frees is not None:  # the rest waits, in due order, for the budget
                wake = min(wake, budget_frees) if wake else budget_frees
            result = SweepResult(len(outcomes), len(renewed), sum(not ok for _, ok in outcomes),
                                 wake, time.perf_counter() - started, self.certd.clock())
            self.last = result
            log.info("sweep done: %d certificates, %d due, %d renewed, %d failed; next %s",
                     len(self.certd.specs()), result.due, result.renewed, result.failed,
                     result.wake_at.isoformat(timespec="seconds") if result.wake_at else "-",
                     extra={"event": "sweep.done",
                            "duration_ms": round(result.seconds * 1000)})
            return result

    async def _renew_due(self, due: list[renewal.Due], done: Callable[[str, bool], object],
                         busy: set[str] | None = None, halt: list[StoreError] | None = None
                         ) -> tuple[list[tuple[str, bool]], datetime | None]:
        """Most urgent first, max_concurrent at a time. When the account's order budget is
        spent, stop: the rest stays due and goes when the budget frees (no point asking the
        store and the CA thousands of times in between). When the store becomes unavailable,
        stop too (`halt` gets the error; the certificates in flight then end, the rest are
        not tried, and none of them counts as an outcome)."""
        outcomes: list[tuple[str, bool]] = []
        queue = iter(due)
        stop: list[datetime] = []
        halt = [] if halt is None else halt

        async def worker() -> None:
            for item in queue:
                if stop or halt:
                    return
                outcome = await self._renew(item, stop, busy, halt)
                if outcome is None:  # the store is unavailable: nothing was decided
                    return
                outcomes.append(outcome)
                done(*outcome)

        workers = min(len(due), self.certd.config.renewal.max_concurrent)
        await asyncio.gather(*(worker() for _ in range(workers)))
        return outcomes, (min(stop) if stop else None)

    async def _renew(self, due: renewal.Due, stop: list[datetime] | None = None,
                     busy: set[str] | None = None, halt: list[StoreError] | None = None
                     ) -> tuple[str, bool] | None:
        """(name, renewed); None, with the error put in `halt`, when the store is
        unavailable (the sweep says so once, not once per certificate)."""
        try:
            cert = await self.certd.renew(due.name)
        except StoreError as exc:
            if not exc.unavailable or halt is None:
                log.warning("certificate[%s]: %s", due.name, exc,
                            extra={"certificate": due.name, "error": str(exc)})
                return due.name, False
            halt.append(exc)
            return None
        except BudgetDeferred as exc:
            if exc.account_wide and stop is not None:
                stop.append(exc.retry_at)
            log.warning("certificate[%s]: %s", due.name, exc,
                        extra={"certificate": due.name, "error": str(exc)})
            return due.name, False
        except CertdError as exc:
            log.warning("certificate[%s]: %s", due.name, exc,
                        extra={"certificate": due.name, "error": str(exc)})
            return due.name, False
        except Exception:  # a bug must not stop the other certificates
            log.exception("certificate[%s]: unexpected error", due.name)
            return due.name, False
        if cert is None and busy is not None:
            busy.add(due.name)
        return due.name, cert is not None

    async def _deploy(self, name: str) -> None:
        try:
            await self.certd.deploy(name, only_stale=True)
        except CertdError as exc:
            log.warning("certificate[%s]: deploy: %s", name, exc,
                        extra={"certificate": name, "error": str(exc)})
        except Exception:
            log.exception("certificate[%s]: deploy: unexpected error", name)

    async def deploy_sync(self) -> None:
        """Bring every node up to date with the current certificate (nodes that were down)."""
        overview = await self.store.overview()
        await asyncio.gather(*(self._deploy(spec.name) for spec in self.certd.specs()
                               if (overview.get(spec.name) or (None,))[0] is not None))

    # ARI (the logic is certd/issuance/ari.py; here: which names, leases, concurrency) ------
    async def _offers_ari(self) -> bool:
        """Does any configured CA offer ARI? (Each certificate is asked of its own CA.)"""
        for member in self.certd.issuers:
            if await ari.offered(member.issuer.client):
                return True
        return False

    async def _check_ari(self, names: list[str], halt: list[StoreError] | None = None) -> None:
        """`halt`: given, an unavailable store stops the checks not yet begun (the error
        is put there, and logged by the caller)."""
        gate = asyncio.Semaphore(ARI_CONCURRENCY)
        halt = [] if halt is None else halt

        async def one(name: str) -> None:
            async with gate:
                if halt:
                    return
                try:
                    # once per certificate across the instances sharing the store
                    async with self.certd.claimed(f"ari:{name}") as mine:
                        if mine and await self._ari_due(name):
                            await self.check_ari(name)
                except StoreError as exc:
                    if exc.unavailable:
                        halt.append(exc)
                    else:
                        log.warning("ari[%s]: %s", name, exc,
                                    extra={"certificate": name, "error": str(exc)})
                except Exception:
                    log.exception("ari[%s]: unexpected error", name)

        await asyncio.gather(*(one(n) for n in names))

    async def _ari_due(self, name: str) -> bool:
        """Checked again under the `ari:NAME` lease: another instance may have just fetched
        the window of the current certificate."""
        cert = await self.store.current_certificate(name)
        return cert is not None and ari.check_due(cert, await self.store.get_ari(name),
                                                  self.certd.clock())

    async def check_ari(self, name: str) -> AriState | None:
        """Fetch the CA's window for the current certificate and store it (ari.check), with
        an `ari.window` event when the renewal moment is new."""
        cert = await self.store.current_certificate(name)
        if cert is None:
            return None
        previous = await self.store.get_ari(name)
        # only ever the CA that issued it (acme.issuers): another CA knows nothing of it
        client = self.certd.ari_client(cert)
        now, interval = self.certd.clock(), self.certd.config.renewal.ari_interval
        state = (await ari.check(client, cert, previous, now=now, interval=interval)
                 if client is not None else
                 AriState(name, cert.serial, None, None, None, now + interval, None, now))
        await self.store.put_ari(state)
        event = ari.window_event(previous, state)
        if event is not None:
            await self.store.add_event(event)
        return state


def _stopped(exc: StoreError, left: int, what: str) -> StoreError:
    """The one error of a sweep the store's unavailability stopped."""
    return StoreError(f"{exc} (sweep stopped: {left} {what} left for the next sweep)",
                      unavailable=True)
