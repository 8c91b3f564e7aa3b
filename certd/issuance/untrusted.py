"""Reading what a CA sends: every value below is attacker-controlled until checked.

One rule for the issuance package: a CA answer that does not parse, has the wrong shape or an
absurd value becomes an `AcmeError` of type `certd:malformed` (or is ignored, where RFC 8555 /
RFC 9110 say so), never another exception; and no CA text reaches a message, a log line or an
event without `clean_text` (control characters out, length capped).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from itertools import accumulate
from typing import Any

from yarl import URL

from certd.errors import AcmeError
from certd.text import one_line

MALFORMED = "certd:malformed"
MAX_JSON_DEPTH = 32  # the deepest ACME document (an order's error subproblems) is about 5
MAX_TEXT = 300  # characters of CA text (a problem's detail) kept for messages and events
MAX_TYPE = 200  # a problem type is a short URN
MAX_URL = 2048
# Retry-After is honoured up to a year (RFC 9110 sets no bound; nothing a CA rate-limits on is
# longer). The callers clamp further (polling: the order deadline; ARI: RFC 9773 §4.3.2's
# [1 min, 1 day]; backoff: 7 days), but every one of them gets a number that fits a timedelta.
MAX_RETRY_AFTER = 365 * 86400.0

# a JSON string, or an unterminated one up to the end: it always matches where it starts, so
# the scan is linear (a pattern that can fail restarts inside escapes: quadratic on '"\\"\\"...')
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*\\?(?:"|\Z)', re.S)
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]+")
_DEPTH_STEP = {0x5B: 1, 0x7B: 1, 0x5D: -1, 0x7D: -1}  # [ { ] }
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]+")
_DIGITS = re.compile(r"[0-9]+")


def json_depth(body: bytes) -> int:
    """How deep `[`/`{` nest outside strings (a pre-scan at C speed: no recursion, no parse)."""
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b'""', body))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def parse_json(body: bytes, what: str, *, status: int | None = None) -> Any:
    """RFC 8259 JSON from the CA: UTF-8, at most MAX_JSON_DEPTH deep (the body size is capped
    by the transport), else AcmeError. json.loads recurses once per level: `"[" * 500000`
    would raise RecursionError, which no caller expects."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise AcmeError(f"acme: {what}: response is not UTF-8", type=MALFORMED,
                        status=status) from None
    if json_depth(body) > MAX_JSON_DEPTH:
        raise AcmeError(f"acme: {what}: JSON nested deeper than {MAX_JSON_DEPTH}",
                        type=MALFORMED, status=status)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also int digit limit
        raise AcmeError(f"acme: {what}: response is not JSON: {clean_text(str(exc), 80)}",
                        type=MALFORMED, status=status) from None


def clean_text(value: Any, limit: int = MAX_TEXT) -> str:
    """CA text made safe for messages, logs and events: a string (anything else -> ''),
    control and bidi characters replaced by a space, at most `limit` characters."""
    return one_line(value, limit)


def problem_type(value: Any, default: str) -> str:
    """A problem document's `type`, if it is a sane string; else `default`."""
    if isinstance(value, str) and 0 < len(value) <= MAX_TYPE and not _CONTROL.search(value) \
            and " " not in value:
        return value
    return default


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds in [0, MAX_RETRY_AFTER] (RFC 9110 §10.2.3: delay-seconds or an
    HTTP-date); None if absent or unreadable. Clamped here, before anyone does arithmetic."""
    if not value:
        return None
    value = value.strip()
    if _DIGITS.fullmatch(value):  # ASCII digits only: str.isdigit() accepts '²'
        if len(value) > 12:  # more than 31,000 years: do not even convert it
            return MAX_RETRY_AFTER
        return min(float(value), MAX_RETRY_AFTER)
    if len(value) > 64:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    now = now or datetime.now(timezone.utc)
    try:
        seconds = (when - now).total_seconds()
    except OverflowError:
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def ca_url(value: Any, what: str, base: str | URL | None = None) -> str:
    """A URL the CA gave us to request next (Location, Link, an order's fields): a string,
    absolute http(s) with a host after resolving against `base`, no whitespace or control
    characters, at most MAX_URL long. Else AcmeError."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL \
            or _CONTROL.search(value) or any(c.isspace() for c in value):
        raise AcmeError(f"acme: {what}: not a usable URL", type=MALFORMED)
    try:
        url = URL(value)
        if base is not None and not url.is_absolute():
            url = URL(base).join(url)
        ok = url.scheme in ("https", "http") and bool(url.host)
    except (ValueError, TypeError, UnicodeError):
        ok = False
    if not ok:
        raise AcmeError(f"acme: {what}: not an absolute http(s) URL: "
                        f"{clean_text(value, 100)!r}", type=MALFORMED)
    return str(url)
