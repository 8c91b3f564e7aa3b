"""The `challenges:` rules and wildcard names in the config (no DNS server needed), and the
TSIG secret file."""

from __future__ import annotations

import base64

import pytest

from certd import config as configuration
from certd import names
from certd.config import Dns01ChallengeRule, DomainsConfig
from certd.errors import ConfigError
from certd.issuance import dns01

SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "tsig.key"
    path.write_text(SECRET + "\n")
    return path


def _dns_rule(key_file, **extra) -> dict:
    return {"type": "dns-01", "server": "127.0.0.1:5353", "zone": "example.org",
            "tsig_key_name": "certd", "tsig_key_file": str(key_file), **extra}


def _problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        configuration.parse(data)
    return caught.value.problems


def test_rules_first_match_wins_default_http01(key_file):
    cfg = configuration.parse({
        "challenges": [
            {"type": "http-01", "names": ["www.example.org"]},
            {**_dns_rule(key_file), "suffix": "example.org", "name": "zone"},
        ],
        "certificates": [
            {"name": "wild", "domains": ["*.example.org", "example.org", "www.example.org"]},
            {"name": "elsewhere", "domains": ["a.example.net"]},
            {"name": "picked", "domains": ["b.example.net"], "challenge": "zone"},
        ],
    })
    assert isinstance(cfg.challenge_rule("*.example.org", "wild"), Dns01ChallengeRule)
    assert isinstance(cfg.challenge_rule("example.org", "wild"), Dns01ChallengeRule)
    assert cfg.challenge_rule("www.example.org", "wild").type == "http-01"  # listed first
    assert cfg.challenge_rule("a.example.net", "elsewhere") is None  # default: http-01
    assert cfg.challenge_rule("b.example.net", "picked").name == "zone"  # by name
    assert cfg.challenge_rule("badexample.org") is None  # label boundary
    rule = cfg.challenges[1]
    assert rule.tsig_algorithm == "hmac-sha256" and rule.zone == "example.org"
    assert rule.propagation_timeout.total_seconds() == 120


@pytest.mark.parametrize("change, expected", [
    ({"suffix": "*.example.org"}, ("challenges[0].suffix: '*.example.org': a suffix is a "
                                   "plain name")),
    ({"suffix": "bad..example.org"}, "challenges[0].suffix: 'bad..example.org': empty label"),
    ({"suffix": "co.uk", "zone": "co.uk"}, "challenges[0].suffix: 'co.uk': a public suffix"),
    ({"suffix": "other.net"}, "challenges[0]: suffix: other.net is not in zone example.org"),
    ({"tsig_algorithm": "hmac-md5"}, ("challenges[0].tsig_algorithm: unknown TSIG algorithm "
                                      "'hmac-md5'; expected one of hmac-sha256")),
    ({"tsig_key_file": "/nonexistent/tsig.key"}, ("challenges[0].tsig_key_file: "
                                                  "/nonexistent/tsig.key: no such file")),
    ({"server": "127.0.0.1"}, "challenges[0].server: expected HOST:PORT"),
    ({"zone": "exa mple.org"}, "challenges[0].zone: not a DNS name"),
    ({"nameservers": ["ns1.example.org"]}, "challenges[0].nameservers[0]: expected HOST:PORT"),
    ({"propagation_timeout": "2h"}, "challenges[0].propagation_timeout: must be between"),
    ({"tsig_secret": "x"}, "challenges[0].tsig_secret: unknown key"),
])
def test_dns01_rule_errors(key_file, change, expected):
    rule = {**_dns_rule(key_file), "suffix": "example.org", **change}
    problems = _problems({"challenges": [rule]})
    assert any(p.startswith(expected) for p in problems), problems


def test_rule_type_and_coverage_errors(key_file):
    assert _problems({"challenges": [{"type": "dns-02", "suffix": "example.org"}]}) == [
        "challenges[0].type: unknown type 'dns-02'; expected one of 'http-01', 'dns-01'"]
    assert _problems({"challenges": [{"suffix": "example.org"}]}) == [
        "challenges[0].type: required key is missing"]
    assert _problems({"challenges": [{"type": "http-01"}]}) == [
        ("challenges[0]: give suffix or names (the names it covers), or a name "
         "certificates[].challenge can refer to")]
    missing = _problems({"challenges": [{"type": "dns-01", "suffix": "example.org"}]})
    assert "challenges[0].server: required key is missing" in missing
    assert "challenges[0].tsig_key_file: required key is missing" in missing


def test_wildcards_only_where_dns01_proves_them(key_file):
    problems = _problems({"certificates": [{"name": "w", "domains": ["*.example.org"]}]})
    assert problems == [("certificates[0].domains[0]: *.example.org: wildcard names cannot be "
                         "validated over HTTP-01; give it a dns-01 rule (challenges:)")]
    # an http-01 rule that covers it first wins: still refused
    problems = _problems({
        "challenges": [{"type": "http-01", "suffix": "example.org"},
                       {**_dns_rule(key_file), "suffix": "example.org"}],
        "certificates": [{"name": "w", "domains": ["*.example.org"]}]})
    assert problems and "wildcard names cannot be validated over HTTP-01" in problems[0]
    # partial and nested wildcards, and one over a public suffix, are never names
    for bad, reason in (("a*.example.org", "outside letters"),
                        ("*.*.example.org", "one whole leftmost label"),
                        ("*x.example.org", "one whole leftmost label"),
                        ("*.co.uk", "public suffix"), ("*", "one whole leftmost label")):
        problems = _problems({"challenges": [{**_dns_rule(key_file), "suffix": "example.org"}],
                              "certificates": [{"name": "w", "domains": [bad]}]})
        assert problems and reason in problems[0], (bad, problems)


def test_certificate_challenge_must_name_a_rule(key_file):
    assert _problems({"certificates": [{"name": "c", "domains": ["a.example.org"],
                                        "challenge": "nope"}]}) == [
        "certificates[0].challenge: no challenges[] rule is called 'nope'"]
    twice = _problems({"challenges": [{**_dns_rule(key_file), "name": "z", "suffix":
                                       "example.org"},
                                      {"type": "http-01", "name": "z", "suffix": "example.net"}]})
    assert twice == ["challenges[1].name: 'z' is also the name of challenges[0]"]


def test_aliases_never_take_wildcards():
    with pytest.raises(names.NameRejected, match="wildcard names are not allowed here"):
        names.normalise("*.example.org")
    with pytest.raises(names.NameRejected, match="wildcard"):
        names.check_alias("*.example.org", DomainsConfig())
    assert names.normalise("*.Example.ORG.", wildcard=True) == "*.example.org"


def test_tsig_secret_file_forms(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text(SECRET + "\n")
    assert dns01.read_tsig_secret(plain) == SECRET
    block = tmp_path / "bind.key"  # what tsig-keygen writes
    block.write_text(f'key "certd" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n')
    assert dns01.read_tsig_secret(block) == SECRET
    for content in ("not base64!", "c2hvcnQ=", "", "\xff"):
        bad = tmp_path / "bad"
        bad.write_text(content, encoding="latin-1")
        with pytest.raises(ConfigError) as caught:
            dns01.read_tsig_secret(bad)
        assert "base64 TSIG secret" in str(caught.value)
        if content:
            assert content not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read it"):
        dns01.read_tsig_secret(tmp_path / "missing")


def test_secret_from_a_systemd_credential(tmp_path, monkeypatch):
    (tmp_path / "certd-tsig").write_text(SECRET)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = configuration.parse({"challenges": [{
        **_dns_rule(tmp_path, tsig_key_file="$CREDENTIALS_DIRECTORY/certd-tsig"),
        "suffix": "example.org"}]})
    zone = dns01.zone_from_rule(cfg.challenges[0], "challenges[0]")
    assert zone.server == ("127.0.0.1", 5353) and zone.zone_text == "example.org"
    assert SECRET not in repr(zone)  # the key is kept out of repr


def test_the_commented_example_in_config_example_yaml_parses(key_file):
    """config.example.yaml shows every key of a dns-01 rule (commented out: its key file
    does not exist here); uncommented, with a real key file, it is a valid rule."""
    import yaml

    from tests.test_config import REPO

    lines = (REPO / "config.example.yaml").read_text().splitlines()
    start = lines.index("# challenges:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:] if not line.startswith("#   #") else "")
    data = yaml.safe_load("\n".join(block))
    rule = data["challenges"][0]
    rule["tsig_key_file"] = str(key_file)
    keys = set(Dns01ChallengeRule.model_fields) - {"names"}  # suffix shown, names mentioned
    assert keys <= set(rule), keys - set(rule)
    cfg = configuration.parse({"challenges": [rule]})
    assert isinstance(cfg.challenges[0], Dns01ChallengeRule)


def test_changing_the_rules_needs_a_restart(key_file):
    """The solvers (and their TSIG secrets) are built when certd starts: a reload that
    changes `challenges` is refused; certificates may change (the rules are matched against
    the running config)."""
    from certd.reload import restart_only_changes

    rule = {**_dns_rule(key_file), "suffix": "example.org"}
    old = configuration.parse({"challenges": [rule]})
    same = configuration.parse({"challenges": [rule], "certificates": [
        {"name": "w", "domains": ["*.example.org"]}]})
    other = configuration.parse({"challenges": [{**rule, "propagation_timeout": "5m"}]})
    assert restart_only_changes(old, same) == []
    assert restart_only_changes(old, other) == ["challenges"]
