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


def normalise(raw: str, *, wildcard: bool = False) -> str:
    """Lower-case, drop one trailing dot, convert an IDN to its A-label, then check the policy.

    `wildcard`: also accept `*.NAME` (NAME checked as any name), for the config's
    certificates, whose challenge rule then decides (dns-01 only). Aliases never pass it."""
    if wildcard and isinstance(raw, str) and raw.startswith("*"):
        if not raw.startswith("*.") or raw[2:].startswith("*"):
            raise NameRejected("a wildcard is '*.' and a name: one whole leftmost label")
        name = "*." + normalise(raw[2:])
        if len(name) > MAX_NAME:
            raise NameRejected(f"longer than {MAX_NAME} characters")
        return name
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
        raise NameRejected("wildcard names are not allowed here (only a configured certificate "
                           "validated over dns-01 can have one)")
    if _is_ip(name):
        raise NameRejected("IP addresses are not allowed")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            # idna's message quotes the input: say what is wrong, not what came
            raise NameRejected("invalid internationalised name (IDNA 2008 / UTS-46 refuses "
                               "it)") from None
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
        raise NameRejected("a label has characters outside letters, digits and hyphen")
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


# ---------------------------------------------------------------------------------------------
# Aliases: what a customer may ask for through the API, on top of normalise().
#
# Certificates from the config file only go through normalise(): the operator may run a private
# CA for internal names. An alias comes from a tenant, through the API, so it must also be a name
# of the public DNS that only its owner controls, written in a way a reader cannot mistake for
# another name.


class AliasRefused(NameRejected):
    """A syntactically valid name the alias policy refuses; `slug` is the problem type."""

    def __init__(self, slug: str, reason: str):
        super().__init__(reason)
        self.slug = slug


# Special-use names (the IANA registry of RFC 6761 §7), as zone -> (the label to list in
# domains.allow_special_use to accept it, why). No CA issues for them, or they are not the
# customer's: RFC 6761 §6.5 reserves example.com/.net/.org for documentation as well, so they
# are refused with `example`. Everything under .arpa is infrastructure (RFC 3172): home.arpa
# (RFC 8375), in-addr.arpa and ip6.arpa (reverse mapping), ipv4only.arpa (RFC 8880), ...
SPECIAL_USE: dict[str, tuple[str, str]] = {
    "test": ("test", "RFC 6761 section 6.2, for testing"),
    "localhost": ("localhost", "RFC 6761 section 6.3, the loopback host"),
    "invalid": ("invalid", "RFC 6761 section 6.4, guaranteed not to exist"),
    "example": ("example", "RFC 6761 section 6.5, for documentation"),
    "example.com": ("example", "RFC 6761 section 6.5, for documentation"),
    "example.net": ("example", "RFC 6761 section 6.5, for documentation"),
    "example.org": ("example", "RFC 6761 section 6.5, for documentation"),
    "local": ("local", "RFC 6762, multicast DNS on the local link"),
    "onion": ("onion", "RFC 7686, Tor onion services"),
    "alt": ("alt", "RFC 9476, names outside the DNS"),
    "internal": ("internal", "reserved by ICANN (2024) for private use"),
    "arpa": ("arpa", "RFC 3172, infrastructure (reverse mapping, home.arpa)"),
}

# UTS 31 Table 5, "Recommended Scripts": the scripts in modern customary use that UTS 39's
# General Security Profile allows in identifiers. A label drawing on any other script
# (historic ones, or limited-use ones such as Cherokee with its Latin look-alikes) is refused.
RECOMMENDED_SCRIPTS = (
    "Latin", "Greek", "Cyrillic", "Armenian", "Hebrew", "Arabic", "Thaana", "Devanagari",
    "Bengali", "Gurmukhi", "Gujarati", "Oriya", "Tamil", "Telugu", "Kannada", "Malayalam",
    "Sinhala", "Thai", "Lao", "Tibetan", "Myanmar", "Georgian", "Hangul", "Ethiopic", "Khmer",
    "Hiragana", "Katakana", "Bopomofo", "Han",
)
# UTS 39 §5.1: the resolved script set is augmented so that Japanese (Han + Hiragana +
# Katakana), Korean (Han + Hangul) and Chinese with Bopomofo count as one script each
_AUGMENT = {"Han": {"Japanese", "Korean", "Han with Bopomofo"}, "Hiragana": {"Japanese"},
            "Katakana": {"Japanese"}, "Hangul": {"Korean"}, "Bopomofo": {"Han with Bopomofo"}}
_ALL = frozenset({"*"})  # Common and Inherited characters go with any script

# Cyrillic letters that read as Latin ones (after Chromium's IDN spoof checker): a label made
# only of these (plus digits and hyphens) is a whole-script confusable of a Latin name, e.g.
# 'аррӏе' for 'apple'; refused unless the top-level domain is itself Cyrillic or one of the
# country codes that write Cyrillic.
_CYRILLIC_LATIN_ALIKE = frozenset("асԁеһіјӏорԛѕԝхуүъьпгѵѡ")
_CYRILLIC_TLDS = frozenset({"ru", "su", "ua", "by", "kz", "bg", "mk", "rs", "me", "ba", "kg",
                            "tj", "uz", "mn"})


def check_alias(raw: str, policy) -> str:
    """The normalised alias for `raw`, or AliasRefused/NameRejected with the reason.

    `policy` is the config's DomainsConfig (denied, allowed_suffixes, allow_special_use).
    Beyond normalise(): not in domains.denied; not a special-use name (SPECIAL_USE); ending in
    a top-level domain of the ICANN section of the public suffix list (so not `router.lan`,
    `openssl.cnf` or `conf.d`); every label of one script (UTS 39 "highly restrictive"), and
    not a Cyrillic look-alike of a Latin label; inside domains.allowed_suffixes if set.
    A label listed in domains.allow_special_use lifts the special-use and top-level rules for
    names ending in it (a lab's `test`, a private CA's `internal`). Reasons quote nothing but
    the normalised name."""
    name = normalise(raw)
    if name in policy.denied or any(name.endswith("." + d) for d in policy.denied):
        raise AliasRefused("domain-denied", "denied by domains.denied")
    labels = name.split(".")
    allowed = set(policy.allow_special_use)
    zone = _special_use_zone(labels)
    if zone is not None:
        key, why = SPECIAL_USE[zone]
        if key not in allowed:
            raise AliasRefused("domain-special-use",
                               f"{name} is under .{zone}, a special-use name ({why}); "
                               f"an operator may accept it with domains.allow_special_use: [{key}]")
    elif labels[-1] not in allowed and not _icann_tld(labels[-1]):
        raise AliasRefused("domain-unknown-tld",
                           f".{labels[-1]} is not a top-level domain of the public suffix "
                           "list's ICANN section")
    for label in labels:
        _check_scripts(label, labels[-1])
    if policy.allowed_suffixes and not any(name == s or name.endswith("." + s)
                                           for s in policy.allowed_suffixes):
        raise AliasRefused("domain-not-allowed", "not under any of domains.allowed_suffixes")
    return name


def _special_use_zone(labels: list[str]) -> str | None:
    for depth in (2, 1):
        zone = ".".join(labels[-depth:])
        if len(labels) >= depth and zone in SPECIAL_USE:
            return zone
    return None


@lru_cache(maxsize=1)
def _icann() -> PublicSuffixList:
    # the list's ICANN section alone (its private section holds github.io and the like)
    return PublicSuffixList(only_icann=True, accept_unknown=False)


def _icann_tld(label: str) -> bool:
    return _icann().publicsuffix(label, accept_unknown=False) is not None


def label_scripts(text: str) -> list[frozenset[str]]:
    """Each character's script extensions (Unicode's scx property) among RECOMMENDED_SCRIPTS,
    augmented as UTS 39 §5.1 says; `{'*'}` for Common and Inherited; empty for any other."""
    common, patterns = _script_patterns()
    out = []
    for ch in text:
        if ch.isascii() and not ch.isalpha() or common.match(ch):
            out.append(_ALL)
            continue
        found: set[str] = set()
        for script, pattern in patterns:
            if pattern.match(ch):
                found.add(script)
                found |= _AUGMENT.get(script, set())
        out.append(frozenset(found))
    return out


@lru_cache(maxsize=1)
def _script_patterns():
    # The standard library has no script property; the `regex` module has Unicode's, kept
    # current with each Unicode release (a hand-made range table would not be)
    import regex

    return (regex.compile(r"[\p{scx=Zyyy}\p{scx=Zinh}]"),
            [(s, regex.compile(rf"\p{{scx={s}}}")) for s in RECOMMENDED_SCRIPTS])


def _check_scripts(label: str, tld: str) -> None:
    if label.isascii() and not label.startswith("xn--"):
        return  # letters, digits, hyphen: Latin and Common
    text = idna.decode(label) if label.startswith("xn--") else label  # checked by normalise()
    sets = label_scripts(text)
    if any(not s for s in sets):
        raise AliasRefused("domain-script",
                           f"label {label!r} has a character outside the scripts in modern use "
                           "(UTS 31 Recommended Scripts)")
    if _resolved(sets):
        if _cyrillic_lookalike(text, tld):
            raise AliasRefused("domain-confusable",
                               f"label {label!r} is written in Cyrillic letters that read as "
                               "Latin ones (a look-alike of a Latin name)")
        return
    # UTS 39 §5.2 "highly restrictive": Latin may join Japanese, Korean or Han with Bopomofo
    rest = [s for s in sets if "Latin" not in s]
    if _resolved(rest) & {"Japanese", "Korean", "Han with Bopomofo"}:
        return
    scripts = sorted({sc for s in sets if s is not _ALL for sc in s if sc in RECOMMENDED_SCRIPTS})
    raise AliasRefused("domain-mixed-script",
                       f"label {label!r} mixes scripts ({', '.join(scripts)}); each label must "
                       "be written in one script (UTS 39 highly restrictive)")


def _resolved(sets: list[frozenset[str]]) -> set[str]:
    """UTS 39 resolved script set: the scripts every character shares ({'*'} if none has one)."""
    out: set[str] = {"*"}
    for s in sets:
        if s is _ALL:
            continue
        out = set(s) if out == {"*"} else out & s
    return out


def _cyrillic_lookalike(text: str, tld: str) -> bool:
    letters = [ch for ch in text if ch.isalpha()]
    if not letters or not all(ch in _CYRILLIC_LATIN_ALIKE for ch in letters):
        return False
    if tld in _CYRILLIC_TLDS:
        return False
    if tld.startswith("xn--"):
        return not all("Cyrillic" in s or s is _ALL for s in label_scripts(idna.decode(tld)))
    return True
