"""ACME Renewal Information (RFC 9773), all of certd's ARI logic in one place: certificate
identifiers, suggested windows, when to ask the CA again, the renewal moment a stored window
gives, and `replaces` for a renewal order. The ACME client only makes the HTTP request
(`AcmeClient.renewal_info`); the sweep (certd/sweep.py) only schedules the checks and takes
the `ari:NAME` lease; renewal planning (certd/renewal.py) asks `renew_at`.

Every function that talks to a CA takes the client of the CA that issued the certificate
(ARI and `replaces` only ever go there).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from cryptography import x509

from certd.errors import AcmeError
from certd.issuance.untrusted import MALFORMED, MAX_URL, clean_text
from certd.keys import b64url
from certd.model import AriState, Event, IssuedCertificate, Severity

if TYPE_CHECKING:
    from certd.issuance.client import AcmeClient

log = logging.getLogger(__name__)

MIN_RETRY = timedelta(minutes=1)  # RFC 9773 §4.3.2: clamp Retry-After to [1 min, 1 day]
MAX_RETRY = timedelta(days=1)
ERROR_RETRY = timedelta(hours=1)  # the CA failed to answer: ask again this soon


def cert_id(cert: x509.Certificate) -> str:
    """base64url(AKI keyIdentifier) "." base64url(serial DER content bytes) (RFC 9773 §4.1)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if not aki.key_identifier:
        raise ValueError("certificate has no authority key identifier")
    serial = cert.serial_number
    # DER INTEGER content: big-endian two's complement, a leading 0x00 if the top bit is set
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8 or 1, "big")
    return f"{b64url(aki.key_identifier)}.{b64url(serial_der)}"


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    explanation_url: str | None = None

    @property
    def usable(self) -> bool:
        """RFC 9773 §4.2: a window whose end is not after its start is to be ignored."""
        return self.end > self.start

    def pick(self, rng: random.Random | None = None) -> datetime:
        """A uniformly random moment in the window (RFC 9773 §4.2)."""
        span = (self.end - self.start).total_seconds()
        offset = timedelta(seconds=(rng or random).uniform(0, span))
        # float rounding of a span of millennia must not step past the end (or datetime.max)
        return min(self.start + min(offset, self.end - self.start), self.end)


def clamp_retry(seconds: float | None, default: timedelta) -> timedelta:
    """Retry-After for the next ARI check, clamped to [1 min, 1 day] (RFC 9773 §4.3.2) as a
    number first: timedelta(seconds=1e20) itself overflows."""
    if seconds is None or math.isnan(seconds):
        return default
    low, high = MIN_RETRY.total_seconds(), MAX_RETRY.total_seconds()
    return timedelta(seconds=min(max(seconds, low), high))


def _moment(value: Any, what: str) -> datetime:
    """An RFC 3339 time from the CA, timezone-aware UTC, or AcmeError."""
    if not isinstance(value, str) or len(value) > 64:
        raise AcmeError(f"ari: {what} is not an RFC 3339 string", type=MALFORMED)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise AcmeError(f"ari: {what} is not an RFC 3339 time: {clean_text(value, 64)!r}",
                        type=MALFORMED) from None
    if when.tzinfo is None:
        raise AcmeError(f"ari: {what} has no timezone", type=MALFORMED)
    try:
        return when.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before datetime.min in UTC
        raise AcmeError(f"ari: {what} is out of range", type=MALFORMED) from None


def parse_window(doc: Any, not_after: datetime | None = None) -> Window:
    """The suggestedWindow of a renewalInfo document (RFC 9773 §4.2), or AcmeError
    (certd:malformed) for anything of the wrong type or shape. With `not_after` (the
    certificate's expiry), the end is pulled back to it: a CA's window past expiry (year
    9999) must not postpone renewal until the certificate has expired; a window that then
    ends before it starts is returned as is, and is not `usable`. A window in the past stays:
    it means "renew now" (RFC 9773 §4.2), which is what a revocation looks like."""
    if not isinstance(doc, dict):
        raise AcmeError("ari: renewalInfo is not a JSON object", type=MALFORMED)
    window = doc.get("suggestedWindow")
    if not isinstance(window, dict):
        raise AcmeError("ari: suggestedWindow is missing or not an object", type=MALFORMED)
    start = _moment(window.get("start"), "suggestedWindow.start")
    end = _moment(window.get("end"), "suggestedWindow.end")
    if not_after is not None and end > not_after:
        end = not_after
    url = doc.get("explanationURL")
    if not (isinstance(url, str) and url.startswith(("https://", "http://"))
            and len(url) <= MAX_URL and clean_text(url, MAX_URL) == url):
        url = None
    return Window(start, end, url)


# --------------------------------------------------------------- what certd does with it


def renew_at(cert: IssuedCertificate, state: AriState | None) -> datetime | None:
    """The renewal moment a stored window gives `cert`, never past its expiry; None when
    there is no usable window for this very certificate."""
    if (state is not None and state.serial == cert.serial and state.renew_at is not None
            and state.window_start is not None and state.window_end is not None
            and state.window_end > state.window_start):
        # clamped: windows are pulled back to expiry when fetched, but a state written by an
        # older certd may hold any date
        return min(state.renew_at, cert.not_after)
    return None


def check_due(cert, state: AriState | None, now: datetime) -> bool:
    """Should the CA be asked for `cert`'s window now? (No window yet, a window of another
    certificate, or its next check is due.) `cert`: an IssuedCertificate or CertSummary."""
    return state is None or state.serial != cert.serial or state.next_check_at <= now


async def offered(client: "AcmeClient") -> bool:
    """Does the CA offer ARI? False (logged) when its directory cannot be read."""
    try:
        return await client.offers_ari()
    except AcmeError as exc:
        log.warning("ari: directory unavailable: %s", exc)
        return False


async def replaces(client: "AcmeClient", current: IssuedCertificate) -> str | None:
    """The certID for a renewal order's `replaces` (RFC 9773 §5), when the CA offers ARI and
    the certificate has an identifier; raises AcmeError when the CA is unreachable. The
    caller decides whether `current` is this account's (a CA refuses `replaces` for a
    certificate of another account)."""
    try:
        if not await client.offers_ari():
            return None
        return cert_id(x509.load_pem_x509_certificate(current.cert_pem.encode()))
    except (ValueError, x509.ExtensionNotFound):
        return None


async def check(client: "AcmeClient", cert: IssuedCertificate, previous: AriState | None,
                *, now: datetime, interval: timedelta) -> AriState:
    """Ask the CA for `cert`'s window and return the state to store: a renewal moment picked
    at random inside it (kept while the window stays the same), the next check after
    Retry-After (clamped) or `interval`. A CA error keeps what was known and asks again in
    ERROR_RETRY (or its Retry-After); a malformed or inverted window is ignored (logged)."""
    name = cert.name
    if previous is not None and previous.serial != cert.serial:
        previous = None
    try:
        cid = cert_id(x509.load_pem_x509_certificate(cert.cert_pem.encode()))
        got = await client.renewal_info(cid)
    except (ValueError, x509.ExtensionNotFound) as exc:
        log.warning("ari[%s]: no certificate identifier: %s", name, exc)
        got = None
    except AcmeError as exc:
        log.warning("ari[%s]: %s", name, exc)
        return AriState(name, cert.serial,
                        previous.window_start if previous else None,
                        previous.window_end if previous else None,
                        previous.renew_at if previous else None,
                        now + clamp_retry(exc.retry_after, ERROR_RETRY), None, now)
    window, retry_after = ((None, None) if got is None
                           else (_window(got[0], name, cert.not_after), got[1]))
    moment = None
    if window is not None and window.usable:
        same = (previous is not None and previous.window_start == window.start
                and previous.window_end == window.end and previous.renew_at is not None)
        moment = previous.renew_at if same else window.pick()
    elif window is not None:
        log.warning("ari[%s]: window ends before it starts (%s .. %s): ignored", name,
                    window.start.isoformat(), window.end.isoformat())
    return AriState(
        name, cert.serial, window.start if window else None, window.end if window else None,
        moment, now + clamp_retry(retry_after, interval),
        window.explanation_url if window else None, now,
    )


def window_event(previous: AriState | None, state: AriState) -> Event | None:
    """The `ari.window` event when `state` brings a new renewal moment, else None."""
    if state.renew_at is None or state.window_start is None or state.window_end is None:
        return None
    if previous is not None and previous.serial == state.serial \
            and previous.renew_at == state.renew_at:
        return None
    start, end = state.window_start.isoformat(), state.window_end.isoformat()
    return Event(
        "ari.window", f"ari[{state.name}]: renew at "
        f"{state.renew_at.isoformat(timespec='seconds')} (window {start} .. {end})",
        Severity.INFO, certificate=state.name,
        data={"start": start, "end": end, "renew_at": state.renew_at.isoformat()})


def _window(doc: dict, name: str, not_after: datetime) -> Window | None:
    """The CA's window (its end pulled back to the certificate's expiry), None if malformed."""
    try:
        return parse_window(doc, not_after)
    except AcmeError as exc:
        log.warning("ari[%s]: malformed renewalInfo (%s): ignored", name, exc)
        return None
