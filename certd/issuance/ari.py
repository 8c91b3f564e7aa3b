"""ACME Renewal Information (RFC 9773): certificate identifiers and suggested windows."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509

from certd.errors import AcmeError
from certd.issuance.untrusted import MALFORMED, MAX_URL, clean_text
from certd.keys import b64url

MIN_RETRY = timedelta(minutes=1)  # RFC 9773 §4.3.2: clamp Retry-After to [1 min, 1 day]
MAX_RETRY = timedelta(days=1)


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
