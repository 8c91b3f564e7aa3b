"""certd/names.py: normalise() returns the canonical A-label form or says why not."""

from __future__ import annotations

import pytest

from certd.names import MAX_LABEL, MAX_NAME, NameRejected, normalise


@pytest.mark.parametrize("raw, expected", [
    ("example.com", "example.com"),
    ("EXAMPLE.Com", "example.com"),
    ("www.example.com.", "www.example.com"),
    ("a-b.example", "a-b.example"),
    ("0.example", "0.example"),
    ("123.example.com", "123.example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("BÜCHER.Example.", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example"),
    ("faß.de", "xn--fa-hia.de"),  # IDNA 2008: ß is kept, not mapped to ss
    ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
    ("ｅｘａｍｐｌｅ.com", "example.com"),  # UTS-46 maps full-width letters
    ("example。com", "example.com"),  # and the ideographic full stop
])
def test_accepted(raw, expected):
    assert normalise(raw) == expected


def test_idempotent():
    for raw in ("bücher.example", "WWW.Example.org.", "faß.de"):
        once = normalise(raw)
        assert normalise(once) == once


def reason(raw) -> str:
    with pytest.raises(NameRejected) as info:
        normalise(raw)
    text = str(info.value)
    assert text, "a rejection must carry a reason"
    return text


@pytest.mark.parametrize("raw", ["*.example.com", "*.example.com.", "*"])
def test_wildcards(raw):
    assert "wildcard" in reason(raw)


@pytest.mark.parametrize("raw", [
    "a.*.example.com", "＊.example.com",  # not a leading wildcard, but still not a name
])
def test_inner_or_fullwidth_wildcards(raw):
    reason(raw)


@pytest.mark.parametrize("raw", ["192.0.2.1", "192.0.2.1.", "10.0.0.255", "::1",
                                 "[::1]", "2001:db8::1", "::ffff:192.0.2.1", "fe80::1"])
def test_ip_literals(raw):
    assert "IP address" in reason(raw)


@pytest.mark.parametrize("raw", [
    "１２７.０.０.１",  # full-width digits and dots map to 127.0.0.1
    "127。0。0。1",
])
def test_ip_literals_in_disguise(raw):
    assert "IP address" in reason(raw)


@pytest.mark.parametrize("raw", ["127.1", "10.0.1", "1.2.3.4.5", "example.123"])
def test_numeric_top_level_label(raw):
    assert "digits" in reason(raw)


@pytest.mark.parametrize("raw", ["com", "localhost", "com.", "bücher"])
def test_bare_tld(raw):
    assert "top-level" in reason(raw)


def test_length_limits():
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(longest) == MAX_NAME
    assert normalise(longest) == longest
    assert normalise(longest + ".") == longest  # the trailing dot does not count
    assert "longer than 253" in reason(longest + "d")
    assert "longer than 253" in reason(".".join(["a" * 63] * 4))


def test_label_limits():
    assert normalise("a" * MAX_LABEL + ".example") == "a" * 63 + ".example"
    assert "label longer than 63" in reason("a" * 64 + ".example")
    assert "label longer than 63" in reason("www." + "b" * 64)
    # an IDN whose A-label is too long
    reason("ü" * 60 + ".example")


@pytest.mark.parametrize("raw", ["a..b", ".example.com", "example.com..", ".."])
def test_empty_labels(raw):
    assert "empty" in reason(raw)


def test_empty_string():
    assert "empty" in reason("")
    reason(".")  # the root alone


@pytest.mark.parametrize("raw", [
    "_acme-challenge.example.com", "a_b.example", "a!b.example", "a/b.example",
    "a:b.example", "a@b.example", "user@example.com", "exa%mple.com", "a'b.example",
    "a\"b.example", "a;b.example", "a<b>.example", "example.com:443", "http://example.com",
])
def test_characters_outside_ldh(raw):
    reason(raw)


@pytest.mark.parametrize("raw", [
    "a b.example",
    "exa\tmple.com",
    "exa\x00mple.com",
    "exa\x7fmple.com",
    "example\r\n.com",
    "a\u202eb.example",  # RIGHT-TO-LEFT OVERRIDE
    "a\u200fb.example",  # RIGHT-TO-LEFT MARK
    "a\u200db.example",  # ZERO WIDTH JOINER
    "a\u200bb.example",  # ZERO WIDTH SPACE
    "a\ufeffb.example",  # BYTE ORDER MARK
    "exa\u00admple.com",  # SOFT HYPHEN (UTS-46 would silently drop it)
    "a\u00a0b.example",  # NO-BREAK SPACE
    "a\u2028b.example",  # LINE SEPARATOR
])
def test_control_bidi_and_space_characters(raw):
    assert "character" in reason(raw)


@pytest.mark.parametrize("raw", [" example.com", "example.com ", "example.com\n",
                                 "\texample.com", "\u3000example.com"])
def test_surrounding_whitespace(raw):
    reason(raw)


@pytest.mark.parametrize("raw", ["xn--zz.example", "xn--a.example", "www.xn--.example",
                                 "xn--ls8h-.example", "xn--99999999999.example"])
def test_invalid_punycode(raw):
    reason(raw)


def test_invalid_punycode_names_the_label():
    assert "xn--zz" in reason("xn--zz.example")


@pytest.mark.parametrize("raw", ["-a.example", "a-.example", "www.-example.com",
                                 "www.example-.com", "example.-com", "example.com-"])
def test_leading_or_trailing_hyphen(raw):
    reason(raw)


def test_reserved_hyphens():
    assert "reserved" in reason("ab--cd.example")


@pytest.mark.parametrize("value", [None, 42, b"example.com", ["example.com"]])
def test_not_a_string(value):
    with pytest.raises(NameRejected):
        normalise(value)


def test_rejection_is_a_value_error():
    # pydantic turns ValueErrors from validators into errors with a key path
    assert issubclass(NameRejected, ValueError)


@pytest.mark.parametrize("name", ["foo.0x10", "a.b.0x", "x.0XFF"])
def test_hex_last_label_reads_as_ipv4(name):
    with pytest.raises(NameRejected, match="numeric"):
        normalise(name)
