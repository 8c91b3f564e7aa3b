"""ACME Renewal Information (RFC 9773): certificate identifiers and suggested windows."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

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
        return self.start + timedelta(seconds=(rng or random).uniform(0, span))


def clamp_retry(seconds: float | None, default: timedelta) -> timedelta:
    if seconds is None:
        return default
    return min(max(timedelta(seconds=seconds), MIN_RETRY), MAX_RETRY)
