"""The periodic work: a renewal sweep (ARI checks, due renewals, pending deploys) and the deploy
sync. The scheduler calls these; so do `certd renew --all` and the tests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from certd import renewal
from certd.errors import AcmeError, CertdError
from certd.issuance import ari
from certd.model import AriState, Event, Severity
from certd.service import BudgetDeferred, Certd

log = logging.getLogger(__name__)

ARI_CONCURRENCY = 10
ARI_ERROR_RETRY = timedelta(hours=1)
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
        Returns None if a sweep was already running (its result will cover this one)."""
        if self._lock.locked():
            return None
        async with self._lock:
            started = time.perf_counter()
            await self.certd.load_aliases()
            now = self.certd.clock()
            await self.store.purge_challenges(now)
            await self.certd.budget.purge(now)
            decision = await self.decide()
            if decision.ari_checks and await self._offers_ari():
                await self._check_ari(decision.ari_checks)
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
                busy)
            await asyncio.gather(*deploys.values())
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
                         busy: set[str] | None = None
                         ) -> tuple[list[tuple[str, bool]], datetime | None]:
        """Most urgent first, max_concurrent at a time. When the account's order budget is
        spent, stop: the rest stays due and goes when the budget frees (no point asking the
        store and the CA thousands of times in between)."""
        outcomes: list[tuple[str, bool]] = []
        queue = iter(due)
        stop: list[datetime] = []

        async def worker() -> None:
            for item in queue:
                if stop:
                    return
                outcome = await self._renew(item, stop, busy)
                outcomes.append(outcome)
                done(*outcome)

        workers = min(len(due), self.certd.config.renewal.max_concurrent)
        await asyncio.gather(*(worker() for _ in range(workers)))
        return outcomes, (min(stop) if stop else None)

    async def _renew(self, due: renewal.Due, stop: list[datetime] | None = None,
                     busy: set[str] | None = None) -> tuple[str, bool]:
        try:
            cert = await self.certd.renew(due.name)
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

    # ARI ----------------------------------------------------------------------------------
    async def _offers_ari(self) -> bool:
        try:
            return await self.certd.issuer.client.offers_ari()
        except AcmeError as exc:
            log.warning("ari: directory unavailable: %s", exc)
            return False

    async def _check_ari(self, names: list[str]) -> None:
        gate = asyncio.Semaphore(ARI_CONCURRENCY)

        async def one(name: str) -> None:
            async with gate:
                try:
                    # once per certificate across the instances sharing the store
                    async with self.certd.claimed(f"ari:{name}") as mine:
                        if mine and await self._ari_due(name):
                            await self.check_ari(name)
                except Exception:
                    log.exception("ari[%s]: unexpected error", name)

        await asyncio.gather(*(one(n) for n in names))

    async def _ari_due(self, name: str) -> bool:
        """Checked again under the `ari:NAME` lease: another instance may have just fetched
        the window of the current certificate."""
        cert = await self.store.current_certificate(name)
        state = await self.store.get_ari(name)
        return cert is not None and (state is None or state.serial != cert.serial
                                     or state.next_check_at <= self.certd.clock())

    async def check_ari(self, name: str) -> AriState | None:
        """Fetch the CA's window for the current certificate and store it, with a renewal
        moment picked at random inside it (kept while the window stays the same)."""
        cert = await self.store.current_certificate(name)
        if cert is None:
            return None
        interval = self.certd.config.renewal.ari_interval
        now = self.certd.clock()
        previous = await self.store.get_ari(name)
        if previous is not None and previous.serial != cert.serial:
            previous = None
        try:
            cid = ari.cert_id(x509.load_pem_x509_certificate(cert.cert_pem.encode()))
            got = await self.certd.issuer.client.renewal_info(cid)
        except (ValueError, x509.ExtensionNotFound) as exc:
            log.warning("ari[%s]: no certificate identifier: %s", name, exc)
            got = None
        except AcmeError as exc:
            log.warning("ari[%s]: %s", name, exc)
            state = AriState(name, cert.serial,
                             previous.window_start if previous else None,
                             previous.window_end if previous else None,
                             previous.renew_at if previous else None,
                             now + ari.clamp_retry(exc.retry_after, ARI_ERROR_RETRY), None, now)
            await self.store.put_ari(state)
            return state
        window, retry_after = (None, None) if got is None else (_window(got[0], name, cert.not_after), got[1])
        renew_at = None
        if window is not None and window.usable:
            same = (previous is not None and previous.window_start == window.start
                    and previous.window_end == window.end and previous.renew_at is not None)
            renew_at = previous.renew_at if same else window.pick()
        elif window is not None:
            log.warning("ari[%s]: window ends before it starts (%s .. %s): ignored", name,
                        window.start.isoformat(), window.end.isoformat())
        state = AriState(
            name, cert.serial, window.start if window else None, window.end if window else None,
            renew_at, now + ari.clamp_retry(retry_after, interval),
            window.explanation_url if window else None, now,
        )
        await self.store.put_ari(state)
        if renew_at is not None and (previous is None or previous.renew_at != renew_at):
            await self.store.add_event(Event(
                "ari.window", f"ari[{name}]: renew at {renew_at.isoformat(timespec='seconds')} "
                f"(window {window.start.isoformat()} .. {window.end.isoformat()})",
                Severity.INFO, certificate=name,
                data={"start": window.start.isoformat(), "end": window.end.isoformat(),
                      "renew_at": renew_at.isoformat()}))
        return state


def _window(doc: dict, name: str, not_after: datetime) -> ari.Window | None:
    """The CA's window (its end pulled back to the certificate's expiry), None if malformed."""
    try:
        return ari.parse_window(doc, not_after)
    except AcmeError as exc:
        log.warning("ari[%s]: malformed renewalInfo (%s): ignored", name, exc)
        return None
