"""Issue 13, item 0: what certificates exist is what the store (and the config) say, for every
process. Two certd processes' worth of service objects on one SQLite store: an alias added or
removed through one is seen at once by the other's API, without waiting for its next sweep;
the alias rules (certd/aliases.py) are the same whichever process applies them."""

from __future__ import annotations

import pytest

from certd import aliases
from certd.api.tokens import parse
from certd.app import open_certd
from certd.errors import AliasError, CertdError
from tests.certd_api import api_client, api_config

TOKEN = "truth-token-0123456789ab"
H = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def cfg(tmp_path):
    return api_config(tmp_path, domains={"default_frontends": ["web"], "per_token_per_hour": 2,
                                         "allow_special_use": ["example"]})


async def test_an_alias_added_elsewhere_is_seen_at_once(cfg):
    async with (api_client(cfg, parse(f"ops {TOKEN}\n", "tokens")) as a,
                open_certd(cfg) as b):
        assert (await (await a.get("/api/v1/domains", headers=H)).json())["items"] == []
        added = await aliases.add(b, "shop.example.com", who="other-process")
        assert added.created
        # process A never swept since: its API answers from the store, not a stale copy
        listing = await a.get("/api/v1/domains", headers=H)
        assert listing.status == 200
        assert [d["domain"] for d in (await listing.json())["items"]] == ["shop.example.com"]
        one = await a.get("/api/v1/certificates/shop.example.com", headers=H)
        assert one.status == 200 and (await one.json())["status"] == "pending"
        everything = await (await a.get("/api/v1/certificates", headers=H)).json()
        assert "shop.example.com" in [c["name"] for c in everything["items"]]
        assert (await a.certd.resolve("shop.example.com")).domains == ("shop.example.com",)

        # removed elsewhere: A stops knowing it at once too
        await aliases.request_removal(b, added.alias, "other-process", revoke=False)
        gone = await a.get("/api/v1/certificates/shop.example.com", headers=H)
        assert gone.status == 404
        with pytest.raises(CertdError, match="not configured"):
            await a.certd.renew("shop.example.com")
        again = await a.post("/api/v1/domains", json={"domain": "shop.example.com"}, headers=H)
        assert again.status == 409 and again.headers["Retry-After"] == "10"


async def test_the_rules_hold_whichever_process_applies_them(cfg):
    async with open_certd(cfg) as a, open_certd(cfg) as b:
        await aliases.add(a, "one.example.com", who="ci")
        await aliases.add(b, "two.example.com", who="ci")
        with pytest.raises(AliasError) as refused:  # the quota is counted in the store
            await aliases.add(a, "three.example.com", who="ci")
        assert refused.value.kind == "quota" and refused.value.retry_after > 0
        same = await aliases.add(b, "one.example.com", who="ci")  # idempotent, not counted
        assert not same.created
        for bad, kind in (("*.wild.example.com", "invalid-domain"), (42, "invalid-domain"),
                          ("shop.test", "domain-special-use")):
            with pytest.raises(AliasError) as refused:
                await aliases.add(a, bad, who="ci")
            assert refused.value.kind == kind
        with pytest.raises(AliasError) as refused:
            await aliases.add(a, "four.example.com", ["nope"], who="ops")
        assert refused.value.kind == "invalid-frontends"
        kinds = [e.kind for e in await a.store.events()]
        assert kinds.count("api.domain.add") == 2
