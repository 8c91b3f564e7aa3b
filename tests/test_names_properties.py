"""Property-based tests of certd/names.py: normalise() on arbitrary text and generated names."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from certd import names
from certd.names import MAX_LABEL, MAX_NAME, NameRejected, normalise

pytestmark = pytest.mark.filterwarnings("ignore")

BOUNDED = settings(max_examples=300, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
LDH = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")

# text that looks like names often enough to reach the later checks: letters (ASCII and not),
# digits, dots and hyphens, plus the awkward ones (full stops, full-width, bidi, controls)
NAMEISH = st.sampled_from(
    list("abcxyzABCXYZ0189.-") + ["xn--", "*", "。", "．", "ｅ", "１", "ü", "ß", "İ", "Ⅸ", "ﬁ",
                                  "\u200d", "\u200e", "\u202e", "\u0000", "\x7f", " ", "\t",
                                  "ا", "א", "例", "\u0301", ":", "[", "]", "_", "/", "@"])
ANY_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.lists(NAMEISH, max_size=40).map("".join),
    st.lists(st.sampled_from(["www", "example", "com", "co", "uk", "bücher", "xn--bcher-kva",
                              "1", "255", "0x7f", "", "a" * 63, "a" * 64, "-a", "a-"]),
             min_size=1, max_size=6).map(".".join),
)

label = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z").filter(
    lambda s: s[2:4] != "--")  # positions 3-4 '--' are reserved (xn-- and friends)
SUFFIXES = ["example.com", "example.org", "example.co.uk", "example.net", "example.de"]


@st.composite
def valid_names(draw) -> str:
    suffix = draw(st.sampled_from(SUFFIXES))
    labels = draw(st.lists(label, min_size=0, max_size=5))
    name = ".".join([*labels, suffix])
    assume(len(name) <= MAX_NAME)
    return name


def assert_policy(out: str) -> None:
    assert out.isascii() and out == out.lower()
    assert len(out) <= MAX_NAME
    labels = out.split(".")
    assert len(labels) >= 2
    for part in labels:
        assert part, "empty label"
        assert len(part) <= MAX_LABEL
        assert LDH.match(part), part
    assert not labels[-1].isdigit()
    assert not names._psl().is_public(out)
    with pytest.raises(ValueError):
        ipaddress.ip_address(out)


def accepted(raw: str) -> str | None:
    try:
        return normalise(raw)
    except NameRejected as exc:
        assert str(exc), "a rejection must carry a reason"
        return None


@BOUNDED
@given(ANY_TEXT)
@example("bücher.example")
@example("faß.de")
@example("ＥＸＡＭＰＬＥ。ＣＯＭ")
@example("xn--bcher-kva.example.")
@example("１２７．０．０．１")
@example("127.1")
@example("a.b\u202e.com")
def test_arbitrary_text_only_rejects_with_name_rejected(raw):
    """Anything raises NameRejected (with a reason) or gives a name within the policy."""
    out = accepted(raw)  # any other exception fails the test
    if out is not None:
        assert_policy(out)


@BOUNDED
@given(ANY_TEXT)
@example("BÜCHER.Example.")
@example("例え.テスト")
def test_idempotent(raw):
    out = accepted(raw)
    assume(out is not None)
    assert normalise(out) == out


@BOUNDED
@given(st.one_of(ANY_TEXT, valid_names()))
def test_trailing_dot_and_case_do_not_matter(raw):
    """For an accepted name, its upper-case and trailing-dot spellings give the same result.
    (Applied to the A-label output: upper() of Unicode can change letters, 'ß' -> 'SS'.)"""
    out = accepted(raw)
    assume(out is not None)
    for spelling in (out.upper(), out + ".", out.upper() + ".", out.title()):
        assert normalise(spelling) == out


@BOUNDED
@given(valid_names(), st.randoms(use_true_random=False))
def test_generated_valid_names_are_accepted(name, rnd):
    assert normalise(name) == name
    mixed = "".join(c.upper() if rnd.random() < 0.5 else c for c in name)
    assert normalise(mixed) == name
    assert normalise(mixed + ".") == name


@BOUNDED
@given(valid_names(), st.data())
def test_a_64_character_label_is_rejected(name, data):
    parts = name.split(".")
    long_label = data.draw(st.from_regex(r"\A[a-z0-9][a-z0-9-]{62}[a-z0-9]\Z").filter(
        lambda s: s[2:4] != "--"))
    assert len(long_label) == MAX_LABEL + 1
    at = data.draw(st.integers(0, len(parts) - 2))  # not the registrable suffix's TLD
    parts.insert(at, long_label)
    with pytest.raises(NameRejected):
        normalise(".".join(parts))
    with pytest.raises(NameRejected):
        normalise(".".join(parts).upper() + ".")


@BOUNDED
@given(st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
                 st.ip_addresses(v=6).map(lambda a: f"[{a}]")))
def test_ip_addresses_are_rejected(raw):
    with pytest.raises(NameRejected):
        normalise(raw)
    with pytest.raises(NameRejected):
        normalise(raw + ".")


@BOUNDED
@given(st.sampled_from(sorted({"com", "org", "co.uk", "de", "github.io", "net", "uk",
                               "appspot.com", "s3.amazonaws.com"})))
def test_public_suffixes_are_rejected(suffix):
    assume(names._psl().is_public(suffix))
    with pytest.raises(NameRejected):
        normalise(suffix)
    with pytest.raises(NameRejected):
        normalise(suffix.upper() + ".")


# --- the alias policy ------------------------------------------------------------------------

from types import SimpleNamespace  # noqa: E402

from certd.names import SPECIAL_USE, AliasRefused, check_alias  # noqa: E402

STRICT = SimpleNamespace(denied=[], allowed_suffixes=[], allow_special_use=[])
LATIN = "abcdefghijklmnopqrstuvwxyzéüß"
CYRILLIC = "абвгдежзийклмнопрстуфхцчшщъыьэюя"  # lower case: IDNA maps upper case down
GREEK = "αβγδεζηθικλμνξοπρστυφχψω"


def refuses(raw: str, policy=STRICT) -> str | None:
    """The slug of the refusal (invalid-domain for syntax), or None if accepted."""
    try:
        check_alias(raw, policy)
    except AliasRefused as exc:
        return exc.slug
    except NameRejected as exc:
        assert str(exc)
        return "invalid-domain"
    return None


@BOUNDED
@given(ANY_TEXT)
@example("pаypal.com")
@example("x.onion")
def test_alias_policy_only_rejects_with_name_rejected(raw):
    """Any text: refused with a reason, or a normalised name with an ICANN TLD, no special-use
    zone, and the same answer when asked again (idempotent)."""
    try:
        out = check_alias(raw, STRICT)
    except NameRejected as exc:
        assert str(exc)
        return
    assert out == normalise(raw) and check_alias(out, STRICT) == out
    labels = out.split(".")
    assert names._icann_tld(labels[-1])
    assert labels[-1] not in SPECIAL_USE and ".".join(labels[-2:]) not in SPECIAL_USE


@BOUNDED
@given(st.text(alphabet=LATIN, min_size=1, max_size=10),
       st.text(alphabet=st.sampled_from(CYRILLIC + GREEK), min_size=1, max_size=10),
       st.randoms(use_true_random=False), st.sampled_from(["com", "ru", "gr", "de"]))
def test_a_label_mixing_latin_with_cyrillic_or_greek_is_refused(latin, other, rnd, tld):
    chars = list(latin + other)
    rnd.shuffle(chars)
    assert refuses("".join(chars) + "." + tld) in ("domain-mixed-script", "invalid-domain")


@BOUNDED
@given(st.sampled_from([CYRILLIC, GREEK, LATIN]).flatmap(
    lambda alphabet: st.text(alphabet=alphabet, min_size=2, max_size=20)))
def test_single_script_labels_are_accepted(label):
    # under .ru, whole-script Cyrillic look-alikes of Latin names are the country's own words
    assert refuses(f"{label}.ru") in (None, "invalid-domain")


@BOUNDED
@given(valid_names(), st.sampled_from(sorted(SPECIAL_USE)))
def test_special_use_zones_are_refused_whatever_is_in_front(name, zone):
    raw = name.split(".")[0] + "." + zone
    assume(len(raw) <= MAX_NAME)
    assert refuses(raw) == "domain-special-use"
    key = SPECIAL_USE[zone][0]
    assert refuses(raw, SimpleNamespace(denied=[], allowed_suffixes=[],
                                        allow_special_use=[key])) is None
