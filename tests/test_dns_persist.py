"""dns-persist-01 without a CA (issue 14, item 4): the record's format and strict parsing
(certd/issuance/dns_persist.py), cross-checked against acme2certifier's own validator; the
verdicts' fixed words; the re-check backoff; the solver over a lookup; the REST API's
`validation` field and its refusals. The CA and DNS path: tests/test_dns_persist_lab.py."""

from __future__ import annotations

import json
import logging
import random
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certd.api.tokens import parse as parse_tokens
from certd.config import AcmeConfig
from certd.errors import AcmeError
from certd.issuance import dns_persist as dp
from certd.issuance.solvers import ChallengeType, Proof
from tests.certd_api import api_client, api_config

TOKEN = "persist-unit-token-0123456789"

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
ACCOUNT = "https://ca.example/acme/acct/123"
ISSUER = "ca.example"
MARK = "HOSTILE-MARK"


# --- the record to publish -------------------------------------------------------------------

def test_record_name_and_value():
    assert dp.record_name("Shop.Customer.NET.") == "_validation-persist.shop.customer.net"
    assert dp.record_name("*.shop.customer.net") == "_validation-persist.shop.customer.net"
    assert dp.record_value("CA.Example.", ACCOUNT) == f"ca.example; accounturi={ACCOUNT}"
    assert dp.record_value(ISSUER, ACCOUNT, wildcard=True, persist_until=1893456000) == (
        f"ca.example; accounturi={ACCOUNT}; policy=wildcard; persistUntil=1893456000")


@pytest.mark.parametrize("issuer, account", [
    ("", ACCOUNT), ("ca example", ACCOUNT), ("ca.example;x", ACCOUNT), ("-ca.example", ACCOUNT),
    (ISSUER, ""), (ISSUER, "https://ca.example/acct/1 2"), (ISSUER, "https://x/a;b"),
    (ISSUER, "https://ca.example/" + "a" * 300),
])
def test_record_value_refuses_what_cannot_be_written(issuer, account):
    with pytest.raises(ValueError):
        dp.record_value(issuer, account)


def test_record_value_refuses_a_persist_until_that_is_not_a_time():
    for until in (-1, 10**12):
        with pytest.raises(ValueError):
            dp.record_value(ISSUER, ACCOUNT, persist_until=until)


def test_published_record_names_the_first_ca():
    single = SimpleNamespace(acme=AcmeConfig(caa_identities=["Pebble.LetsEncrypt.org.",
                                                             "other.example"]))
    assert dp.published_record(single, ACCOUNT, "shop.customer.net") == {
        "name": "_validation-persist.shop.customer.net", "type": "TXT",
        "value": f"pebble.letsencrypt.org; accounturi={ACCOUNT}"}
    several = SimpleNamespace(acme=AcmeConfig(issuers=[
        {"directory": "https://first.example/dir", "caa_identities": ["first.example"]},
        {"directory": "https://second.example/dir", "caa_identities": ["second.example"]}]))
    assert dp.issuer_domain_name(several) == "first.example"


# --- parsing what DNS says (hostile) ---------------------------------------------------------

@pytest.mark.parametrize("raw, issuer, params", [
    (f"ca.example; accounturi={ACCOUNT}", ISSUER, {"accounturi": ACCOUNT}),
    (f"  CA.Example. ;AccountURI={ACCOUNT} ; PersistUntil=99 ;", ISSUER,
     {"accounturi": ACCOUNT, "persistuntil": "99"}),
    (f"ca.example;accounturi={ACCOUNT};policy=Wildcard", ISSUER,
     {"accounturi": ACCOUNT, "policy": "Wildcard"}),
    ("ca.example", ISSUER, {}),
    (b"ca.example; accounturi=x", ISSUER, {"accounturi": "x"}),
])
def test_parse_record(raw, issuer, params):
    record = dp.parse_record(raw)
    assert record.issuer == issuer and dict(record.params) == params


@pytest.mark.parametrize("raw", [
    "", "   ", ";", f"; accounturi={ACCOUNT}",  # no issuer first
    f"accounturi={ACCOUNT}",  # a parameter where the issuer goes
    "ca..example; accounturi=x", "-ca.example; accounturi=x", "ca_example; accounturi=x",
    "ca.example; accounturi", "ca.example; =x", "ca.example; a b=x", "ca.example; -a=x",
    "ca.example; accounturi=a b",  # a space inside a value
    "ca.example; accounturi=x; accounturi=y", "ca.example; accounturi=x; AccountURI=x",
    "ca.example; persistUntil=soon", "ca.example; persistUntil=-1",
    "ca.example; persistUntil=1" + "0" * 20,
    "ca.example\x00; accounturi=x", "ca.example; accounturi=x\x1b[31m", "ca.exa\u00e9mple",
    b"ca.example; accounturi=\xff\xfe", "ca.example; accounturi=" + "a" * 2000,
    "\"ca.example; accounturi=x\"",  # quotes belong to zone files, not to the value
])
def test_parse_record_refuses_malformed(raw):
    with pytest.raises(dp.RecordMalformed) as caught:
        dp.parse_record(raw)
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    assert str(caught.value) and str(caught.value) not in ("", text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_parse_record_never_raises_anything_else(raw):
    try:
        record = dp.parse_record(raw)
    except dp.RecordMalformed:
        return
    assert record.issuer == record.issuer.lower() and all(
        k == k.lower() for k in record.params)


@settings(max_examples=100, deadline=None)
@given(issuer=st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
       path=st.from_regex(r"[A-Za-z0-9/_-]{1,40}", fullmatch=True),
       wildcard=st.booleans(), until=st.none() | st.integers(0, 10**12 - 1))
def test_what_certd_writes_it_reads_back(issuer, path, wildcard, until):
    account = f"https://{issuer}/{path}"
    value = dp.record_value(issuer, account, wildcard=wildcard, persist_until=until)
    record = dp.parse_record(value)
    assert (record.issuer, record.account_uri, record.wildcard, record.persist_until) == (
        issuer, account, wildcard, until)


def test_acme2certifier_accepts_what_certd_writes():
    """The CA under test (its own validator, not a copy): the record certd tells the customer
    to publish authorises certd's account at that CA, wildcard policy included."""
    from acme2certifier.acme_srv.challenge_validators.dns_persist_validator import (
        DnsPersistChallengeValidator,
    )
    validator = DnsPersistChallengeValidator(logging.getLogger("a2c"))
    for wildcard in (False, True):
        value = dp.record_value(ISSUER, ACCOUNT, wildcard=wildcard, persist_until=2**33)
        verdict, malformed = validator._evaluate_record(
            value, ACCOUNT, {ISSUER}, wildcard, True, lambda: int(NOW.timestamp()))
        assert verdict is not None and verdict.success and not malformed
        # ...and what it refuses, certd refuses too
        other = dp.record_value(ISSUER, ACCOUNT + "9")
        verdict, _ = validator._evaluate_record(
            other, ACCOUNT, {ISSUER}, False, False, lambda: 0)
        assert verdict is None
        assert not dp.evaluate([other], "shop.example", [ISSUER], ACCOUNT, now=NOW).ok


# --- verdicts --------------------------------------------------------------------------------

def _verdict(values, *, wildcard=False, account=ACCOUNT, issuers=(ISSUER,)):
    return dp.evaluate(values, "shop.example", issuers, account, wildcard=wildcard, now=NOW)


def test_evaluate_finds_the_record_among_others():
    good = f"ca.example; accounturi={ACCOUNT}"
    assert _verdict([good]).ok
    assert _verdict(["v=spf1 -all", f"{MARK}\x00", "other.example; accounturi=x", good]).ok
    assert _verdict([good.encode()]).ok
    assert _verdict([f"CA.EXAMPLE.; accounturi={ACCOUNT}; persistUntil="
                     f"{int(NOW.timestamp()) + 60}"]).ok
    assert _verdict([good + "; policy=wildcard"], wildcard=True).ok


@pytest.mark.parametrize("values, words", [
    ([], "no TXT record at _validation-persist.shop.example"),
    ([f"ca.example; accounturi={ACCOUNT}/{MARK}"], "names another ACME account, not certd's "
                                                    f"({ACCOUNT})"),
    ([f"ca.example; accounturi={ACCOUNT}; persistUntil={int(NOW.timestamp()) - 1}"],
     "has expired"),
    ([f"{MARK}.example; accounturi={ACCOUNT}"], "names another CA, not ca.example"),
    ([f"{MARK}\x07; accounturi={ACCOUNT}", f"ca.example; {MARK}"],
     f"is malformed (expected 'ca.example; accounturi={ACCOUNT}')"),
    (["ca.example"], "is malformed"),  # no accounturi: the draft requires it
    ([f"x{i}" for i in range(dp.MAX_RECORDS + 1)], "more than 32 TXT records"),
])
def test_evaluate_says_what_is_wrong_in_fixed_words(values, words):
    verdict = _verdict(values)
    assert not verdict.ok and words in verdict.reason
    assert MARK not in verdict.reason and verdict.reason.isprintable()


def test_evaluate_wildcard_needs_the_policy():
    verdict = _verdict([f"ca.example; accounturi={ACCOUNT}"], wildcard=True)
    assert not verdict.ok and "policy=wildcard" in verdict.reason


def test_evaluate_without_account_or_identity():
    assert "no ACME account" in _verdict(["ca.example; accounturi=x"], account=None).reason
    assert "caa_identities" in _verdict(["ca.example; accounturi=x"], issuers=()).reason


def test_challenge_refusal_reads_the_ca_json_carefully():
    ok = {"type": "dns-persist-01", "issuer-domain-names": ["CA.example."], "accounturi": ACCOUNT}
    assert dp.challenge_refusal(ok, ISSUER, ACCOUNT) is None
    assert dp.challenge_refusal({"type": "dns-persist-01"}, ISSUER, ACCOUNT) is None
    for hostile in ({"issuer-domain-names": "ca.example"}, {"issuer-domain-names": [1, None]},
                    {"issuer-domain-names": [{"a": 1}]}):
        assert "malformed" in dp.challenge_refusal(hostile, ISSUER, ACCOUNT)
    other = dp.challenge_refusal({"issuer-domain-names": [f"evil\x1b[2J{MARK}" * 20]},
                                 ISSUER, ACCOUNT)
    assert "not ca.example" in other and "\x1b" not in other and len(other) < 300
    assert "another account" in dp.challenge_refusal({"accounturi": "x"}, ISSUER, ACCOUNT)


# --- backoff, solver -------------------------------------------------------------------------

def test_recheck_delay_doubles_from_a_minute_to_an_hour():
    rng = random.Random(1)
    minutes = [dp.recheck_delay(n, rng).total_seconds() / 60 for n in range(1, 10)]
    for got, base in zip(minutes, (1, 2, 4, 8, 16, 32, 60, 60, 60)):
        assert base * 0.9 <= got <= base * 1.1
    assert dp.recheck_delay(10**6) <= timedelta(hours=1.1)  # no overflow for a forgotten one


async def test_solver_checks_the_record_and_publishes_nothing():
    zone: dict[str, list[bytes]] = {}
    asked: list[str] = []

    async def lookup(name):
        asked.append(name)
        return zone.get(name, [])

    account = [None]
    solver = dp.DnsPersist01Solver(lookup, issuer=lambda: ISSUER,
                                   account_uri=lambda: account[0], clock=lambda: NOW)
    assert solver.type is ChallengeType.DNS_PERSIST01
    with pytest.raises(AcmeError) as caught:
        await solver.preflight("shop.example")
    assert caught.value.type == dp.ERROR_TYPE and "no TXT record" in str(caught.value)
    account[0] = ACCOUNT  # registered later: read at each check
    zone["_validation-persist.shop.example"] = [f"ca.example; accounturi={ACCOUNT}".encode()]
    await solver.preflight("shop.example")
    proof = Proof("shop.example", "shop.example", "", "", "https://ca.example/authz/1")
    await solver.present(proof)
    await solver.cleanup(proof)
    with pytest.raises(AcmeError, match="policy=wildcard"):
        await solver.present(Proof("w", "shop.example", "", "", "u", wildcard=True))
    assert set(asked) == {"_validation-persist.shop.example"}


# --- the REST API (no CA: the account cannot be registered) -----------------------------------

async def test_api_validation_field(tmp_path):
    cfg = api_config(tmp_path, domains={"default_frontends": ["web"]})
    async with api_client(cfg, parse_tokens(f"platform {TOKEN}\n", "tokens")) as client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for bad in ("dns-01", "DNS-PERSIST", ["dns-persist"], {"a": 1}, 1, None, MARK):
            resp = await client.post("/api/v1/domains", headers=headers,
                                     json={"domain": "shop.customer.net", "validation": bad})
            doc = await resp.json(content_type=None)
            assert resp.status == 422 and doc["type"].endswith("invalid-validation"), doc
            assert MARK not in json.dumps(doc)
        resp = await client.post("/api/v1/domains", headers=headers,
                                 json={"domain": "shop.customer.net", "validation": "dns-persist"})
        assert resp.status == 202
        doc = await resp.json()
        # the CA is unreachable: stored, waiting; the record shows once the account exists
        assert doc["validation"] == "dns-persist" and doc["status"] == "awaiting_dns"
        assert doc["dns_record"] is None
        resp = await client.post("/api/v1/domains", headers=headers,
                                 json={"domain": "shop.customer.net"})
        assert resp.status == 409  # exists with another validation
        resp = await client.post("/api/v1/domains", headers=headers,
                                 json={"domain": "shop.customer.net", "validation": "dns-persist"})
        assert resp.status == 200  # the idempotent repeat
        resp = await client.post("/api/v1/domains", headers=headers,
                                 json={"domain": "plain.customer.net"})
        assert (await resp.json())["validation"] == "http-01"
        assert (await resp.json())["dns_record"] is None
        resp = await client.get("/api/v1/domains?status=awaiting_dns", headers=headers)
        assert [d["domain"] for d in (await resp.json())["items"]] == ["shop.customer.net"]
