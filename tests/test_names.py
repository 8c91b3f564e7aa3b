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


# --- the alias policy (check_alias): only for names customers add through the API ----------

from types import SimpleNamespace  # noqa: E402

from certd import config as configuration  # noqa: E402
from certd.names import AliasRefused, check_alias, label_scripts  # noqa: E402


def policy(**kw):
    return SimpleNamespace(**{"denied": [], "allowed_suffixes": [], "allow_special_use": [], **kw})


def refused(raw, **kw) -> AliasRefused:
    with pytest.raises(AliasRefused) as info:
        check_alias(raw, policy(**kw))
    return info.value


@pytest.mark.parametrize("raw, zone, key", [
    ("a.test", "test", "test"), ("x.localhost", "localhost", "localhost"),
    ("test.invalid", "invalid", "invalid"), ("a.example", "example", "example"),
    ("www.example.com", "example.com", "example"), ("a.example.net", "example.net", "example"),
    ("b.example.org", "example.org", "example"), ("printer.local", "local", "local"),
    ("x.onion", "onion", "onion"), ("router.alt", "alt", "alt"),
    ("metadata.google.internal", "internal", "internal"),
    ("1.0.0.127.in-addr.arpa", "arpa", "arpa"), ("nas.home.arpa", "arpa", "arpa"),
    ("b.a.8.b.d.0.1.0.0.2.ip6.arpa", "arpa", "arpa"),
])
def test_special_use_names_are_refused_unless_allowed(raw, zone, key):
    exc = refused(raw)
    assert exc.slug == "domain-special-use"
    assert f".{zone}" in str(exc) and f"allow_special_use: [{key}]" in str(exc)
    assert check_alias(raw, policy(allow_special_use=[key])) == raw


@pytest.mark.parametrize("raw", ["router.lan", "openssl.cnf", "conf.d", "mime.types", "a.corp",
                                 "nas.home", "x.intranet", "srv.private", "my.localdomain",
                                 "index.html", "server.key", "app.yaml", "x.bit", "x.eth"])
def test_names_outside_the_icann_tlds_are_refused(raw):
    exc = refused(raw)
    assert exc.slug == "domain-unknown-tld" and "ICANN" in str(exc)
    tld = raw.rsplit(".", 1)[1]
    assert check_alias(raw, policy(allow_special_use=[tld])) == raw  # a private CA's lab


@pytest.mark.parametrize("raw", ["shop.example.co.uk", "a.zip", "www.bücher.de", "x.github.io",
                                 "пример.рф", "例え.jp", "data.xn--p1ai", "a.b.c.d.museum"])
def test_icann_names_pass(raw):
    assert check_alias(raw, policy()) == normalise(raw)


@pytest.mark.parametrize("raw, slug, scripts", [
    ("pаypal.com", "domain-mixed-script", "Cyrillic, Latin"),  # Cyrillic а
    ("аpple.com", "domain-mixed-script", "Cyrillic, Latin"),
    ("gοogle.com", "domain-mixed-script", "Greek, Latin"),  # Greek ο
    ("раураl.com", "domain-mixed-script", "Cyrillic, Latin"),  # Latin l among Cyrillic
    ("ωмega.com", "domain-mixed-script", "Cyrillic, Greek, Latin"),
    ("ㄅ한글.kr", "domain-mixed-script", "Bopomofo, Hangul"),
    ("日本ひらがなабв.jp", "domain-mixed-script", "Cyrillic"),
    ("bankβ.com", "domain-mixed-script", "Greek, Latin"),
])
def test_mixed_script_labels_are_refused(raw, slug, scripts):
    exc = refused(raw)
    assert exc.slug == slug and scripts in str(exc)
    assert normalise(raw)  # the config file path: syntax only


@pytest.mark.parametrize("raw", [
    "пример.com", "пример.рф", "αβγ.gr", "ελληνικά.com", "例え.jp", "日本語.jp",
    "ひらがなカタカナ漢字.jp", "中文.cn", "中文abc.cn", "abc日本語.jp", "한국어.kr", "abc한국.kr",
    "ㄅㄆ中文.tw", "bücher.de", "café.fr", "מבחן.co.il", "مثال.com", "परीक्षा.in", "ทดสอบ.th",
    "аррӏе.ru", "аррӏе.рф", "shop-2.bücher.de", "საქართველო.ge",
])
def test_single_script_and_highly_restrictive_labels_pass(raw):
    assert check_alias(raw, policy()) == normalise(raw)


@pytest.mark.parametrize("raw", ["аррӏе.com", "раураӏ.com", "ѕсоре.net", "сосо.org",
                                 "xn--80ak6aa92e.com"])
def test_whole_script_cyrillic_lookalikes_are_refused_under_latin_tlds(raw):
    exc = refused(raw)
    assert exc.slug == "domain-confusable"


@pytest.mark.parametrize("raw", ["ꭰꭱꭲ.com", "ᏗᏕ.com", "ᚠᚢᚦ.com", "𐌰𐌱.com"])
def test_scripts_outside_the_recommended_ones_are_refused(raw):
    try:
        normalise(raw)
    except NameRejected:
        pytest.skip("refused by IDNA 2008 already")
    assert refused(raw).slug == "domain-script"


def test_label_scripts_uses_script_extensions():
    latin, cyr, dash, han, kana, prolonged = label_scripts("aа-漢カー")
    assert latin == {"Latin"} and cyr == {"Cyrillic"} and dash == {"*"}
    assert {"Han", "Japanese", "Korean"} <= han and kana == {"Katakana", "Japanese"}
    assert {"Hiragana", "Katakana", "Japanese"} <= prolonged  # U+30FC is in both kana


def test_denied_and_allowed_suffixes_are_part_of_the_alias_policy():
    assert refused("x.bad.com", denied=["bad.com"]).slug == "domain-denied"
    assert refused("x.other.com", allowed_suffixes=["shop.com"]).slug == "domain-not-allowed"
    assert check_alias("a.shop.com", policy(allowed_suffixes=["shop.com"])) == "a.shop.com"
    # special-use comes before the operator's allow list: .test needs allow_special_use
    assert refused("a.test", allowed_suffixes=["test"]).slug == "domain-special-use"


def test_reasons_quote_only_the_normalised_name():
    exc = refused("PАYPAL.com.")  # upper case, trailing dot, Cyrillic А
    assert "xn--" in str(exc) and "PА" not in str(exc) and "А" not in str(exc)
    assert str(refused("x.lan")) == (".lan is not a top-level domain of the public suffix "
                                     "list's ICANN section")


@pytest.mark.parametrize("domain", ["router.lan", "metadata.google.internal", "printer.local",
                                    "svc.cluster.test", "x.onion", "host.home.arpa",
                                    "1.0.0.127.in-addr.arpa", "a.example", "conf.d",
                                    "пример.com"])
def test_config_file_certificates_keep_internal_names(domain, tmp_path):
    cfg = configuration.parse({
        "state_dir": str(tmp_path),
        "frontends": {"web": {"nodes": [{"name": "fe1", "address": "127.0.0.2"}],
                              "deployer": {"type": "file", "path": str(tmp_path) + "/{node}"}}},
        "certificates": [{"name": "internal", "domains": [domain], "frontends": ["web"]}],
    })
    assert cfg.certificates[0].domains == [normalise(domain)]
