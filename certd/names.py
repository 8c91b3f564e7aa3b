"""Domain name policy: one place that decides what a certificate name may be.

Used by the config loader and (later) the REST API alike. `normalise()` returns the canonical
A-label form or raises `NameRejected` with a reason a person can act on.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from functools import lru_cache

import idna
from publicsuffixlist import PublicSuffixList

MAX_NAME = 253
MAX_LABEL = 63
_LDH = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


class NameRejected(ValueError):
    """A name that policy refuses; str() is the reason."""


def normalise(raw: str) -> str:
    """Lower-case, drop one trailing dot, convert an IDN to its A-label, then check the policy."""
    if not isinstance(raw, str):
        raise NameRejected("not a string")
    name = raw.strip()
    if name != raw:
        raise NameRejected("surrounding whitespace")
    if not name:
        raise NameRejected("empty name")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Zs") for ch in name):
        raise NameRejected("control, format, bidi or space character")
    if name.endswith("."):
        name = name[:-1]
    if name.startswith("*"):
        raise NameRejected("wildcard names cannot be validated over HTTP-01")
    if _is_ip(name):
        raise NameRejected("IP addresses are not allowed")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise NameRejected(f"invalid internationalised name: {exc}") from None
        if _is_ip(name):  # full-width digits and dots map to an address
            raise NameRejected("IP addresses are not allowed")
    name = name.lower()
    if len(name) > MAX_NAME:
        raise NameRejected(f"longer than {MAX_NAME} characters")
    labels = name.split(".")
    if len(labels) < 2:
        raise NameRejected("a bare top-level domain cannot get a certificate")
    for label in labels:
        _check_label(label)
    # '127.1', '10.0.1', 'a.0x10': URL parsers read a numeric last label as IPv4
    if labels[-1].isdigit() or re.fullmatch(r"0x[0-9a-f]*", labels[-1]):
        raise NameRejected("the top-level label is numeric (digits or 0x hex), like an IP address")
    if _psl().is_public(name):
        raise NameRejected("a public suffix (like co.uk) cannot get a certificate")
    return name


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # ships its list; no network


def registered_domain(name: str) -> str:
    """'www.portal.example.co.uk' -> 'example.co.uk' (the name itself if the list has none)."""
    return _psl().privatesuffix(name) or name


def _check_label(label: str) -> None:
    if not label:
        raise NameRejected("empty label")
    if len(label) > MAX_LABEL:
        raise NameRejected(f"label longer than {MAX_LABEL} characters")
    if not _LDH.match(label):
        raise NameRejected(f"label {label!r} has characters outside letters, digits and hyphen")
    if label.startswith("xn--"):
        try:
            idna.decode(label)
        except idna.IDNAError as exc:
            raise NameRejected(f"label {label!r} is invalid punycode: {exc}") from None
    elif label[2:4] == "--":
        raise NameRejected(f"label {label!r} uses the reserved '--' in positions 3-4")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
