"""Several CAs in order (acme.issuers, certd/issuance/issuers.py): the pool's decisions with
scripted CAs — down / 5xx / rateLimited / refused names -> the next issuer (an event, a
cooldown for the first three); budget spent -> the next; everything down -> one clear error
and the certificate's own backoff; `replaces`, ARI and revocation only at the issuing CA.
The same against real CAs (pebble, acme2certifier): tests/test_issuers_lab.py."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace

import pytest

from certd import config as configuration
from certd.budget import Budget
from certd.config import BudgetConfig
from certd.errors import AcmeError, ConfigError
from certd.issuance import ari
from certd.issuance.issuer import Issuer
from certd.issuance.issuers import IssuerPool, Member, fallback_reason
from certd.metrics import Sources, render
from certd.model import CertStatus, utcnow
from certd.service import BudgetDeferred, Certd
from certd.store.memory import MemoryStore
from certd.sweep import Sweeper
from tests.stores import BACKENDS, SERVER_BACKENDS
from tests.test_deploy_file import issued

A = "https://ca-a.example/directory"
B = "https://ca-b.example/acme/dir"
E = "urn:ietf:params:acme:error:"


class FakeCA:
    """An Issuer stand-in: each issue() takes the next scripted outcome (an AcmeError to
    raise, or None to issue); records what it was asked. Its directory lists `profiles`
    (Issuer's own profile_for checks them)."""

    profile_for = Issuer.profile_for

    def __init__(self, directory: str, *outcomes, ari: bool = False, profiles=()):
        self.outcomes = list(outcomes)
        self.calls: list[dict] = []
        self.revoked: list[str] = []
        self.renewal_info_asked: list[str] = []
        self.solvers = SimpleNamespace(all=lambda: (), for_identifier=lambda spec, name: None)

        async def offers_ari():
            return ari

        async def renewal_info(cid):
            self.renewal_info_asked.append(cid)
            return None

        async def listed():
            return list(profiles)

        self.client = SimpleNamespace(directory_url=directory, account_uri=f"{directory}/acct/1",
                                      offers_ari=offers_ari, renewal_info=renewal_info,
                                      profiles=listed)

    async def issue(self, spec, *, replaces=None, resume=None, key_pem=None):
        self.calls.append({"replaces": replaces, "resume": resume})
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return replace(issued(spec.name, spec.domains[0]),
                       order_url=self.client.directory_url.rsplit("/", 1)[0] + "/order/1")

    async def finished(self, order_url, spec):
        pass

    async def ensure_account(self):
        pass

    async def revoke(self, cert, reason=5):
        self.revoked.append(cert.serial)
        return True


def _config(tmp_path, single=False, **acme):
    issuers = {"directory": A} if single else {"issuers": [
        {"name": "a", "directory": A, "caa_identities": ["ca-a.example"]},
        {"name": "b", "directory": B, "caa_identities": ["ca-b.example"]}]}
    return configuration.parse({
        "state_dir": str(tmp_path),
        "domains": {"preflight": False},
        "acme": {"ari": False, **issuers, **acme},
        "frontends": {"web": {"nodes": [{"name": "fe1", "address": "127.0.0.2"}],
                              "deployer": {"type": "file", "path": str(tmp_path / "{node}")}}},
        "certificates": [{"name": "shop", "domains": ["shop.example.org"],
                          "frontends": ["web"]}],
    })


class Clock:
    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now


@pytest.fixture
async def store():
    s = MemoryStore()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _certd(cfg, store, *cas, budgets=None, clock=None):
    members = [Member(i, name, ca.client.directory_url, ca,
                      Budget(store, (budgets or {}).get(name, BudgetConfig()),
                             ca.client.directory_url, "" if i == 0 else f"{name} "),
                      (f"ca-{name}.example",))
               for i, (name, ca) in enumerate(zip("ab", cas))]
    pool = IssuerPool(members, cooldown=cfg.acme.issuer_cooldown)
    return Certd(cfg, store, pool, {}, clock=clock or Clock())


def force(certd):
    """A forced renewal (whatever the fake certificates' issue times say)."""
    return certd.renew("shop", force=True, requested_at=utcnow() + timedelta(days=1))


async def _events(store, kind):
    return await store.events(kind=kind, limit=50)


def test_which_errors_move_an_order_on():
    assert fallback_reason(AcmeError("x", type="certd:unreachable", transient=True)) == "down"
    assert fallback_reason(AcmeError("x", type="certd:timeout", transient=True)) == "down"
    assert fallback_reason(AcmeError("x", type="certd:http", status=503)) == "5xx"
    assert fallback_reason(AcmeError("x", type=E + "serverInternal", status=500)) == "5xx"
    assert fallback_reason(AcmeError("x", type=E + "rateLimited", status=429)) == "rateLimited"
    assert fallback_reason(AcmeError("x", type=E + "rejectedIdentifier", status=400)) \
        == "rejectedIdentifier"
    assert fallback_reason(AcmeError("x", type=E + "caa", status=403)) == "caa"
    # the next CA would fail these too: our validation path, our request
    for typ in (E + "unauthorized", E + "connection", E + "malformed", "certd:malformed",
                "certd:preflight", E + "badCSR"):
        assert fallback_reason(AcmeError("x", type=typ, status=400)) is None


async def test_a_down_ca_hands_the_order_on_and_cools_down(tmp_path, store):
    clock = Clock()
    a = FakeCA(A, AcmeError("acme: POST https://ca-a.example/new-order: ConnectionRefused",
                            type="certd:unreachable", transient=True))
    b = FakeCA(B)
    certd = _certd(_config(tmp_path), store, a, b, clock=clock)
    cert = await force(certd)
    assert cert.issuer == B and len(a.calls) == 1 and len(b.calls) == 1
    assert (await store.current_certificate("shop")).issuer == B
    [event] = await _events(store, "issue.fallback")
    assert event.data["from"] == A and event.data["to"] == B and event.data["reason"] == "down"
    assert "ConnectionRefused" in event.data["detail"]
    assert (await store.get_state("shop")).status is CertStatus.ISSUED

    # cooling down: the next order goes straight to b
    clock.now += timedelta(minutes=1)
    assert (await force(certd)).issuer == B
    assert len(a.calls) == 1 and len(b.calls) == 2
    assert certd.issuers.views(clock.now)[0]["healthy"] is False

    # after the cooldown (acme.issuer_cooldown, 5 minutes): a again, and it answers
    clock.now += timedelta(minutes=5)
    assert (await force(certd)).issuer == A
    assert len(a.calls) == 2 and len(b.calls) == 2
    assert certd.issuers.views(clock.now)[0]["healthy"] is True


async def test_retry_after_sets_the_cooldown(tmp_path, store):
    clock = Clock()
    a = FakeCA(A, AcmeError("acme: newOrder: HTTP 429 rateLimited: too many", status=429,
                            type=E + "rateLimited", retry_after=3600, transient=True))
    b = FakeCA(B)
    certd = _certd(_config(tmp_path), store, a, b, clock=clock)
    assert (await force(certd)).issuer == B
    [event] = await _events(store, "issue.fallback")
    assert event.data["reason"] == "rateLimited"
    clock.now += timedelta(minutes=30)  # past the default cooldown, inside Retry-After
    assert (await force(certd)).issuer == B and len(a.calls) == 1
    clock.now += timedelta(minutes=31)
    assert (await force(certd)).issuer == A and len(a.calls) == 2


async def test_a_5xx_answer_hands_the_order_on(tmp_path, store):
    a = FakeCA(A, AcmeError("acme: HTTP 503 certd:http: busy", type="certd:http", status=503,
                            transient=True))
    b = FakeCA(B)
    certd = _certd(_config(tmp_path), store, a, b)
    assert (await force(certd)).issuer == B
    assert (await _events(store, "issue.fallback"))[0].data["reason"] == "5xx"


async def test_a_refused_name_goes_to_the_next_ca_without_cooling_the_first(tmp_path, store):
    a = FakeCA(A, AcmeError("acme: rejectedIdentifier: no", type=E + "rejectedIdentifier",
                            status=400))
    b = FakeCA(B)
    certd = _certd(_config(tmp_path), store, a, b)
    assert (await force(certd)).issuer == B
    assert (await _events(store, "issue.fallback"))[0].data["reason"] == "rejectedIdentifier"
    # a refusal is about that name: the CA itself stays first in line
    assert (await force(certd)).issuer == A


async def _orders_counted(store, directory):
    return await store.ledger_times("order", directory, utcnow() - timedelta(days=1))


async def test_a_profile_one_ca_lacks_moves_the_order_to_the_next_that_offers_it(tmp_path,
                                                                                  store):
    a = FakeCA(A, profiles=("classic",))
    b = FakeCA(B, profiles=("classic", "shortlived"))
    certd = _certd(_config(tmp_path, profile="shortlived"), store, a, b)
    assert (await force(certd)).issuer == B
    assert a.calls == [] and len(b.calls) == 1
    [event] = await _events(store, "issue.fallback")
    assert event.data["reason"] == "profile" and event.data["from"] == A
    assert "'shortlived' is not offered by" in event.data["detail"]
    # nothing was ordered from a: nothing counted against its budget, and no cooldown (the
    # CA is well; it lacks that profile)
    assert await _orders_counted(store, A) == [] and len(await _orders_counted(store, B)) == 1
    assert await store.issuer_cooldowns(utcnow()) == {}
    assert certd.issuers.views(utcnow())[0]["healthy"] is True
    # each order asks again (no cooldown): a is still first in line, still without it
    assert (await force(certd)).issuer == B
    assert a.calls == [] and len(await _events(store, "issue.fallback")) == 2


async def test_a_profile_no_ca_offers_is_one_clear_error(tmp_path, store):
    a, b = FakeCA(A, profiles=("classic",)), FakeCA(B, profiles=("tlsserver",))
    certd = _certd(_config(tmp_path, profile="shortlived"), store, a, b)
    with pytest.raises(AcmeError) as caught:
        await force(certd)
    message = str(caught.value)
    assert message.startswith("acme: no issuer could order it: a: profile")
    assert "b: profile" in message and caught.value.type == "certd:profile"
    assert not caught.value.transient and a.calls == [] and b.calls == []
    assert await _orders_counted(store, A) == [] and await _orders_counted(store, B) == []
    assert await store.issuer_cooldowns(utcnow()) == {}


async def test_one_issuer_without_the_profile_keeps_the_clear_error(tmp_path, store):
    a = FakeCA(A, profiles=("classic", "tlsserver"))
    certd = Certd(_config(tmp_path, single=True, profile="shortlived"), store, a, {},
                  clock=Clock())
    with pytest.raises(AcmeError) as caught:
        await force(certd)
    assert caught.value.type == "certd:profile"
    assert str(caught.value).startswith("acme[shop]: profile 'shortlived' is not offered by "
                                        f"{A} (it offers: classic, tlsserver); nothing ordered")
    assert a.calls == [] and await _orders_counted(store, A) == []
    assert await _events(store, "issue.fallback") == []
    assert (await store.get_state("shop")).status is CertStatus.FAILED


async def test_an_alias_may_ask_for_a_profile_any_configured_ca_offers(tmp_path, store):
    from certd.aliases import check_profile
    from certd.errors import AliasError

    a, b = FakeCA(A, profiles=("classic",)), FakeCA(B, profiles=("classic", "shortlived"))
    certd = _certd(_config(tmp_path), store, a, b)
    assert await check_profile("shortlived", certd) == "shortlived"  # b offers it
    with pytest.raises(AliasError) as caught:
        await check_profile("tlsserver", certd)
    assert caught.value.kind == "invalid-profile"
    assert str(caught.value) == ("profile tlsserver is not offered by any configured CA (they "
                                 "offer: a: classic; b: classic, shortlived)")
    with pytest.raises(AliasError) as caught:
        await check_profile("\u202eevil\nname", certd)
    assert "\u202e" not in str(caught.value) and caught.value.kind == "invalid-profile"


@pytest.fixture(params=[pytest.param(name, marks=[pytest.mark.lab] if name in SERVER_BACKENDS
                                     else []) for name in ("memory", "sqlite", "postgresql")])
async def shared_stores(request):
    """Two handles on one store, as two instances sharing it hold (tests/stores.py)."""
    async with BACKENDS[request.param](request) as opener, opener() as one, opener() as two:
        yield one, two


async def test_a_cooldown_is_seen_by_every_process_sharing_the_store(tmp_path, shared_stores):
    """One instance finds a down: the other skips it with no failed order of its own, its
    status and metrics show it, and when the cooldown ends both order from a again."""
    clock = Clock()
    down = AcmeError("acme: POST https://ca-a.example/new-order: ConnectionRefused",
                     type="certd:unreachable", transient=True)
    a1, b1, a2, b2 = FakeCA(A, down), FakeCA(B), FakeCA(A), FakeCA(B)
    cfg = _config(tmp_path)
    one = _certd(cfg, shared_stores[0], a1, b1, clock=clock)
    two = _certd(cfg, shared_stores[1], a2, b2, clock=clock)
    assert (await force(one)).issuer == B and len(a1.calls) == 1

    clock.now += timedelta(minutes=1)
    assert (await force(two)).issuer == B
    assert a2.calls == [] and len(b2.calls) == 1  # no failed order of its own
    [cooling] = (await shared_stores[1].issuer_cooldowns(clock.now)).items()
    assert cooling[0] == A and cooling[1][1].startswith("down: ")
    assert "ConnectionRefused" in cooling[1][1]
    view = two.issuers.views(clock.now)[0]
    assert view["healthy"] is False and view["reason"].startswith("down: ")
    assert two.issuers.members[0].cooling_until == one.issuers.members[0].cooling_until
    # /metrics of any process reads the store (the cooldown is real time here: shift it)
    await shared_stores[0].set_issuer_cooldown(A, utcnow() + timedelta(minutes=5),
                                               cooling[1][1])
    metrics = (await render(Sources(two))).decode()
    assert f'certd_issuer_up{{issuer="{A}",name="a"}} 0.0' in metrics
    assert f'certd_issuer_up{{issuer="{B}",name="b"}} 1.0' in metrics

    # the cooldown is over for both: a takes the orders again, and its success clears it
    clock.now += timedelta(minutes=5)
    assert (await force(two)).issuer == A and len(a2.calls) == 1
    assert (await force(one)).issuer == A and len(a1.calls) == 2
    await shared_stores[0].set_issuer_cooldown(A, None)
    metrics = (await render(Sources(one))).decode()
    assert f'certd_issuer_up{{issuer="{A}",name="a"}} 1.0' in metrics


async def test_a_failed_validation_does_not_move_the_order(tmp_path, store):
    failure = AcmeError("acme[shop]: validation of shop.example.org failed: connection",
                        type=E + "connection", identifier="shop.example.org")
    a, b = FakeCA(A, failure), FakeCA(B)
    certd = _certd(_config(tmp_path), store, a, b)
    with pytest.raises(AcmeError) as caught:
        await force(certd)
    assert caught.value is failure and b.calls == []
    assert await _events(store, "issue.fallback") == []
    assert (await store.get_state("shop")).status is CertStatus.FAILED


async def test_a_spent_budget_hands_the_order_on(tmp_path, store):
    cfg = _config(tmp_path)
    a, b = FakeCA(A), FakeCA(B)
    certd = _certd(cfg, store, a, b, budgets={"a": BudgetConfig(orders_per_3h=1)})
    assert (await force(certd)).issuer == A
    assert (await force(certd)).issuer == B
    [event] = await _events(store, "issue.fallback")
    assert event.data["reason"] == "budget"
    assert event.data["detail"] == "budget: 1 new orders per account per 3h used"
    assert event.message == "certificate[shop]: issuer a: budget; ordering from b instead"


async def test_every_budget_spent_defers(tmp_path, store):
    cfg = _config(tmp_path)
    a, b = FakeCA(A), FakeCA(B)
    one = BudgetConfig(orders_per_3h=1)
    certd = _certd(cfg, store, a, b, budgets={"a": one, "b": one})
    await force(certd)
    await force(certd)
    with pytest.raises(BudgetDeferred) as caught:
        await force(certd)
    assert caught.value.account_wide  # both accounts' order buckets: nothing else can go
    assert len(a.calls) == 1 and len(b.calls) == 1
    assert (await _events(store, "issue.deferred"))


async def test_every_ca_down_is_one_clear_error_and_the_usual_backoff(tmp_path, store):
    clock = Clock()
    def down(host):
        return AcmeError(f"acme: POST https://{host}/x: ClientConnectorError",
                         type="certd:unreachable", transient=True)

    a, b = FakeCA(A, down("ca-a.example")), FakeCA(B, down("ca-b.example"))
    certd = _certd(_config(tmp_path), store, a, b, clock=clock)
    with pytest.raises(AcmeError) as caught:
        await force(certd)
    message = str(caught.value)
    assert message.startswith("acme: no issuer could order it: a: down")
    assert "b: down" in message and caught.value.transient
    state = await store.get_state("shop")
    assert state.status is CertStatus.FAILED and state.attempts == 1
    assert state.next_attempt_at > clock.now
    assert len(await _events(store, "issue.fallback")) == 1  # a -> b; b had no next

    # both cooling: nothing is sent, the error says until when, the backoff grows
    clock.now += timedelta(minutes=1)
    with pytest.raises(AcmeError) as caught:
        await force(certd)
    assert str(caught.value).startswith("acme: every issuer is cooling down: a until ")
    assert caught.value.type == "certd:issuers-down"
    assert len(a.calls) == 1 and len(b.calls) == 1
    assert (await store.get_state("shop")).attempts == 2


async def test_one_issuer_is_never_skipped(tmp_path, store):
    """The single acme.directory form behaves as it always did: each attempt asks the CA."""
    cfg = _config(tmp_path, single=True)
    down = AcmeError("acme: down", type="certd:unreachable", transient=True)
    a = FakeCA(A, down, down)
    certd = Certd(cfg, store, a, {}, clock=Clock())
    for _ in range(2):
        with pytest.raises(AcmeError) as caught:
            await force(certd)
        assert caught.value is down
    assert len(a.calls) == 2
    assert (await force(certd)).issuer == A


async def test_replaces_ari_and_revocation_stay_with_the_issuing_ca(tmp_path, store,
                                                                    monkeypatch):
    monkeypatch.setattr(ari, "cert_id", lambda cert: "AKI.SERIAL")
    cfg = _config(tmp_path, ari=True)
    down = AcmeError("acme: down", type="certd:unreachable", transient=True)
    clock = Clock()
    a, b = FakeCA(A, down, ari=True), FakeCA(B, ari=True)
    certd = _certd(cfg, store, a, b, clock=clock)
    first = await force(certd)  # a is down: b issues it
    assert first.issuer == B and b.calls[-1]["replaces"] is None

    # ARI for it is asked of b only
    await Sweeper(certd).check_ari("shop")
    assert b.renewal_info_asked == ["AKI.SERIAL"] and a.renewal_info_asked == []

    # a is back (cooldown over): the renewal goes to a, which must not get b's `replaces`
    clock.now += timedelta(minutes=10)
    second = await force(certd)
    assert second.issuer == A and a.calls[-1]["replaces"] is None
    events = await _events(store, "issue.ok")
    assert events[0].data["replaces"] is None

    # a renewal of a's certificate at a carries `replaces`
    third = await force(certd)
    assert third.issuer == A and a.calls[-1]["replaces"] == "AKI.SERIAL"
    await Sweeper(certd).check_ari("shop")
    assert a.renewal_info_asked == ["AKI.SERIAL"] and len(b.renewal_info_asked) == 1

    # revocation goes to the issuing CA
    await certd._revoke("shop")
    assert a.revoked == [third.serial] and b.revoked == []


async def test_the_cas_words_are_cleaned_before_events_and_logs(tmp_path, store, caplog):
    hostile = "rate\x1b[31m limited\u202e\r\nFAKE LOG LINE " + "x" * 2000
    a = FakeCA(A, AcmeError(f"acme: newOrder: HTTP 429 {hostile}", type=E + "rateLimited",
                            status=429, detail=hostile, transient=True))
    certd = _certd(_config(tmp_path), store, a, FakeCA(B))
    await force(certd)
    [event] = await _events(store, "issue.fallback")
    for text in (event.data["detail"], certd.issuers.members[0].cooling_reason,
                 *(r.getMessage() for r in caplog.records)):
        assert "\x1b" not in text and "\u202e" not in text and "\n" not in text
        assert len(text) < 700


def test_config_errors_are_clear():
    def problem(acme):
        with pytest.raises(ConfigError) as caught:
            configuration.parse({"acme": acme})
        return caught.value.problems

    one = {"directory": A, "caa_identities": ["ca-a.example"]}
    assert problem({"issuers": []}) == [
        "acme.issuers: empty; list at least one CA, or remove the key and give acme.directory"]
    assert problem({"directory": B, "issuers": [one]}) == [
        "acme.directory: give it in each acme.issuers entry (acme.issuers replaces the single "
        "acme.directory form; not both)"]
    assert problem({"issuers": [one, {**one, "directory": A + "/"}]}) == [
        "acme.issuers[1].directory: the same CA as acme.issuers[0]"]
    assert problem({"issuers": [{**one, "name": "x"},
                                {"directory": B, "caa_identities": ["b.example"],
                                 "name": "x"}]}) == [
        "acme.issuers[1].name: 'x' is also the name of acme.issuers[0] (give each a distinct "
        "name)"]
    assert problem({"issuers": [{"directory": A}]}) == [
        "acme.issuers[0].caa_identities: required key is missing"]
    assert problem({"issuers": [{**one, "caa_identities": ["a b\x1b"]}]})[0].startswith(
        "acme.issuers[0].caa_identities: not a CA's domain name")
    assert "\x1b" not in problem({"issuers": [{**one, "caa_identities": ["a b\x1b"]}]})[0]
    assert problem({"issuers": [{**one, "directory": "ftp://x"}]})[0].startswith(
        "acme.issuers[0].directory: must be an http(s) URL")
    assert problem({"issuers": [{**one, "budget": {"orders_per_3h": 0}}]})[0].startswith(
        "acme.issuers[0].budget.orders_per_3h: ")


def test_the_single_form_is_one_issuer_and_the_list_keeps_its_order():
    cfg = configuration.parse({"acme": {"directory": A, "email": "ops@example.org"}})
    [only] = cfg.acme.issuer_list()
    assert only.directory == A and only.email == "ops@example.org"
    assert only.caa_identities == ["letsencrypt.org"] and cfg.acme.issuers is None
    cfg = configuration.parse({"acme": {"issuers": [
        {"directory": A, "caa_identities": ["CA-A.example."]},
        {"directory": B, "caa_identities": ["ca-b.example"], "budget": {"orders_per_3h": 7},
         "eab": {"kid": "k", "hmac_key": "c2VjcmV0"}}]}})
    first, second = cfg.acme.issuer_list()
    assert first.label == "ca-a.example" and first.caa_identities == ["ca-a.example"]
    assert second.budget.orders_per_3h == 7 and second.eab.kid == "k"


async def test_an_unreadable_hmac_key_file_names_its_issuer(tmp_path):
    from certd.issuance.issuers import read_secrets

    cfg = configuration.parse({"acme": {"issuers": [
        {"directory": A, "caa_identities": ["ca-a.example"]},
        {"directory": B, "caa_identities": ["ca-b.example"],
         "eab": {"kid": "k", "hmac_key_file": str(tmp_path / "missing")}}]}})
    with pytest.raises(ConfigError) as caught:
        await read_secrets(cfg)
    assert caught.value.problems[0].startswith("acme.issuers[1].eab.hmac_key_file: cannot read")


def test_the_commented_example_in_config_example_yaml_parses():
    """config.example.yaml shows acme.issuers with every key of an issuer (commented out);
    uncommented, it is a valid list in place of the single form."""
    import yaml

    from certd.config import IssuerConfig
    from tests.test_config import REPO

    lines = (REPO / "config.example.yaml").read_text().splitlines()
    start = lines.index("  # issuers:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        text = line[4:]
        if text.lstrip().startswith("#"):  # a commented-out key inside the example
            text = text.replace("# ", "", 1)
        block.append(text)
    data = yaml.safe_load("\n".join(block))
    shown = set().union(*(set(i) for i in data["issuers"]))
    assert set(IssuerConfig.model_fields) <= shown, set(IssuerConfig.model_fields) - shown
    data["issuers"][1]["eab"] = {"kid": "KEY_ID", "hmac_key": "c2VjcmV0"}  # no credential here
    cfg = configuration.parse({"acme": data})
    assert [i.label for i in cfg.acme.issuer_list()] == ["letsencrypt", "zerossl"]
    assert cfg.acme.issuer_cooldown == timedelta(minutes=5)


async def test_preflight_is_given_every_issuers_identities_and_accounts(tmp_path, store):
    certd = _certd(_config(tmp_path), store, FakeCA(A), FakeCA(B))
    assert certd.issuers.caa_identities() == ["ca-a.example", "ca-b.example"]
    assert certd._caa_accounts() == {"ca-a.example": f"{A}/acct/1",
                                     "ca-b.example": f"{B}/acct/1"}


def test_status_shows_the_issuer(tmp_path, capsys):
    """`certd status` (an ISSUER column with several CAs) and `--json` (`issuer`,
    `issuer_name`): which CA issued each certificate, as the store recorded it."""
    import json

    import yaml

    from certd import cli
    from certd.app import open_certd

    data = {"state_dir": str(tmp_path / "state"),
            "acme": {"issuers": [
                {"name": "a", "directory": A, "caa_identities": ["ca-a.example"]},
                {"name": "b", "directory": B, "caa_identities": ["ca-b.example"]}]},
            "frontends": {"web": {"nodes": [{"name": "fe1", "address": "127.0.0.2"}],
                                  "deployer": {"type": "file",
                                               "path": str(tmp_path / "{node}")}}},
            "certificates": [{"name": "shop", "domains": ["shop.example.org"],
                              "frontends": ["web"]}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    async def seed():
        async with open_certd(configuration.load(path)) as certd:
            await certd.store.add_certificate(
                replace(issued("shop", "shop.example.org"), issuer=B))
            # a cooldown another process started (the daemon): status reads it in the store
            await certd.store.set_issuer_cooldown(A, utcnow() + timedelta(minutes=5),
                                                  "down: acme: POST x: ConnectionRefused")

    asyncio.run(seed())
    assert cli.main(["-c", str(path), "status", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["issuer"] == B and row["issuer_name"] == "b"
    assert cli.main(["-c", str(path), "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, line = lines[:2]
    assert header.split()[-1] == "ISSUER" and line.split()[-1] == "b"
    [cooling] = [x for x in lines if x.startswith(f"issuer a ({A}): cooling down until ")]
    assert cooling.endswith("(down: acme: POST x: ConnectionRefused)")
    assert f"issuer b ({B}): healthy" in lines


def test_changing_the_issuers_needs_a_restart():
    """Each issuer holds an ACME client and an account: `acme` is restart-only, its list too."""
    from certd.reload import restart_only_changes

    one = {"directory": A, "caa_identities": ["ca-a.example"]}
    two = {"directory": B, "caa_identities": ["ca-b.example"]}
    old = configuration.parse({"acme": {"issuers": [one, two]}})
    assert restart_only_changes(old, configuration.parse(
        {"acme": {"issuers": [two, one]}})) == ["acme.issuers"]
    assert restart_only_changes(old, configuration.parse(
        {"acme": {"issuers": [one, two], "issuer_cooldown": "1m"}})) == ["acme.issuer_cooldown"]
    assert restart_only_changes(old, configuration.parse({"acme": {"directory": A}})) == [
        "acme.directory", "acme.issuers"]


async def test_a_hostile_cas_refusal_moves_the_order_with_its_words_cleaned(tmp_path, store):
    """Real Issuers and ACME clients against two stand-in CAs (tests/test_hostile_ca.py):
    the first answers newOrder with 429 rateLimited, a detail full of control and bidi
    characters, a huge Retry-After; the order goes to the second, the event and the cooldown
    carry the cleaned words only, and the cooldown is capped at a day."""
    import aiohttp

    from certd.issuance.client import AcmeClient
    from certd.issuance.issuer import Issuer
    from tests.test_hostile_ca import DOMAIN, FakeCA as StandInCA, problem

    hostile = ("slow\x1b]0;pwned\x07 down\u202e\r\nWARNING forged line " + "z" * 5000)
    first, second = StandInCA(), StandInCA()
    await first.start()
    await second.start()
    first.overrides["new_order"] = problem({"type": E + "rateLimited", "detail": hostile}, 429,
                                           **{"Retry-After": "99999999"})
    clock = Clock()
    try:
        cfg = configuration.parse({
            "state_dir": str(tmp_path), "domains": {"preflight": False},
            "acme": {"ari": False, "issuers": [
                {"name": "first", "directory": first.url + "/dir", "caa_identities": ["x.test"]},
                {"name": "second", "directory": second.url + "/dir",
                 "caa_identities": ["y.test"]}]},
            "frontends": {"web": {"nodes": [{"name": "fe1", "address": "127.0.0.2"}],
                                  "deployer": {"type": "file", "path": str(tmp_path / "{node}")}}},
            "certificates": [{"name": "h", "domains": [DOMAIN], "frontends": ["web"]}]})
        async with aiohttp.ClientSession() as session:
            members = []
            for i, ic in enumerate(cfg.acme.issuer_list()):
                issuer = Issuer(AcmeClient(ic.directory, session, timeout=5), store,
                                order_timeout=timedelta(seconds=5))
                members.append(Member(i, ic.label, ic.directory, issuer,
                                      Budget(store, BudgetConfig(), ic.directory), ()))
            certd = Certd(cfg, store, IssuerPool(members), {}, clock=clock)
            cert = await certd.renew("h")
    finally:
        await first.server.close()
        await second.server.close()
    assert cert.issuer == second.url + "/dir" and second.finalized and not first.finalized
    [event] = await _events(store, "issue.fallback")
    assert event.data["reason"] == "rateLimited"
    cooling = members[0]
    for text in (event.message, event.data["detail"], cooling.cooling_reason):
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e]", text), repr(text[:80])
        assert len(text) <= 400
    assert cooling.cooling_until - clock.now == timedelta(days=1)  # capped
