"""ACME profiles (issue 14, item 1) against a real CA that offers them: acme2certifier with
two profiles in its directory (`[Order] profiles`). The chosen profile reaches the order
(read from acme2certifier's own database), is stored with the certificate and shown by the
status views; a profile the CA does not offer is refused by certd before any order; a CA
without profiles gets no `profile` field at all."""

from __future__ import annotations

import json
import sqlite3

import pytest

from certd import aliases
from certd import config as configuration
from certd.app import challenge_listener, open_certd
from certd.errors import AcmeError, AliasError
from certd.model import CertStatus, utcnow
from certd.sweep import Sweeper
from certd.views import certificate_views
from tests.certd_lab import lab_config_data, run_certd, write_config

pytestmark = pytest.mark.lab

PROFILES = {"classic": "90 days, the default", "shortlived": "160 hours"}
WITH_PROFILES = {"extra_config": {"Order": {"profiles": json.dumps(PROFILES),
                                            "profiles_check_disable": "False"}}}


def _config(lab, a2c, tmp_path, certificates, profile=None):
    data = lab_config_data(lab, tmp_path / "state", certificates)
    data["acme"] = {"directory": a2c.directory_url, "timeout": "10s", "order_timeout": "60s",
                    "caa_identities": ["a2c.test"]}
    if profile:
        data["acme"]["profile"] = profile
    write_config(tmp_path / "config.yaml", data)  # for the CLI
    return configuration.parse(data)


def _a2c_orders(a2c) -> list[tuple[list[str], str]]:
    """(names, profile) of every order in acme2certifier's own database, oldest first."""
    with sqlite3.connect(f"file:{a2c.db_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT identifiers, profile FROM orders ORDER BY id").fetchall()
    return [(sorted(i["value"] for i in json.loads(ids)), profile or "") for ids, profile in rows]


@pytest.mark.parametrize("a2c", [WITH_PROFILES], indirect=True)
async def test_the_chosen_profile_reaches_the_order(lab, a2c, tmp_path):
    assert set(a2c.directory()["meta"]["profiles"]) == set(PROFILES)
    lab.set_sites({"short": ["short.test"], "plain": ["plain.test"]})
    cfg = _config(lab, a2c, tmp_path, [
        {"name": "short", "domains": ["short.test"], "frontends": ["web"],
         "profile": "shortlived"},
        {"name": "plain", "domains": ["plain.test"], "frontends": ["web"]},
    ], profile="classic")  # acme.profile: for certificates that name none
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        result = await Sweeper(certd).sweep()
        assert result.renewed == 2, await certd.store.events(limit=10)

        # acme2certifier's side: each order carries its profile
        assert sorted(_a2c_orders(a2c)) == [(["plain.test"], "classic"),
                                           (["short.test"], "shortlived")]
        # newOrder's payload, as the launcher recorded it
        assert sorted((o["identifiers"][0]["value"], o["profile"])
                      for o in a2c.new_orders()) == [("plain.test", "classic"),
                                                     ("short.test", "shortlived")]
        # certd's side: stored with the certificate, shown by status (and the API)
        assert (await certd.store.current_certificate("short")).profile == "shortlived"
        assert (await certd.store.current_certificate("plain")).profile == "classic"
        views = {v["name"]: v for v in await certificate_views(certd, certd.specs(), utcnow())}
        assert views["short"]["profile"] == "shortlived"
        assert views["plain"]["profile"] == "classic"
        assert views["plain"]["profile_wanted"] == "classic"
        # `certd status`: a PROFILE column, and the same fields in its JSON
        out = run_certd(tmp_path / "config.yaml", "status", "--json")
        assert out.returncode == 0, out.stderr
        rows = {r["name"]: r for r in json.loads(out.stdout)}
        assert (rows["short"]["profile"], rows["plain"]["profile"]) == ("shortlived", "classic")
        out = run_certd(tmp_path / "config.yaml", "status")
        assert out.returncode == 0, out.stderr
        header, *lines = out.stdout.splitlines()
        assert header.split()[-1] == "PROFILE"
        assert any(line.split()[0] == "short" and line.split()[-1] == "shortlived"
                   for line in lines)


@pytest.mark.parametrize("a2c", [WITH_PROFILES], indirect=True)
async def test_an_unknown_profile_is_refused_before_ordering(lab, a2c, tmp_path):
    lab.set_sites({"odd": ["odd.test"]})
    cfg = _config(lab, a2c, tmp_path, [
        {"name": "odd", "domains": ["odd.test"], "frontends": ["web"], "profile": "tlsserver"},
    ])
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        with pytest.raises(AcmeError) as caught:
            await certd.renew("odd")
        assert caught.value.type == "certd:profile" and not caught.value.transient
        assert "'tlsserver' is not offered" in str(caught.value)
        assert "classic, shortlived" in str(caught.value)
        state = await certd.store.get_state("odd")
        assert state.status is CertStatus.FAILED and "not offered" in state.last_error
        assert a2c.count_new_orders() == 0 and _a2c_orders(a2c) == []
        assert await certd.store.orders("odd", limit=5) == []  # nothing placed, nothing kept


@pytest.mark.parametrize("a2c", [WITH_PROFILES], indirect=True)
async def test_alias_profile_checked_against_the_directory(lab, a2c, tmp_path):
    lab.set_sites({"alias": ["shop.test"]})
    cfg = _config(lab, a2c, tmp_path, [])
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        for bad in ("nope", "bad profile\n", 7, "x" * 100):
            with pytest.raises(AliasError) as caught:
                await aliases.add(certd, "shop.test", ["web"], who="t", profile=bad)
            assert caught.value.kind == "invalid-profile"
            assert "\n" not in str(caught.value) and "x" * 100 not in str(caught.value)
        assert await certd.store.get_alias("shop.test") is None
        added = await aliases.add(certd, "shop.test", ["web"], who="t", profile="shortlived")
        assert added.created and added.alias.profile == "shortlived"
        # the same again: idempotent; another profile: a conflict, not a silent change
        assert not (await aliases.add(certd, "shop.test", ["web"], who="t",
                                      profile="shortlived")).created
        with pytest.raises(AliasError) as caught:
            await aliases.add(certd, "shop.test", ["web"], who="t", profile="classic")
        assert caught.value.kind == "conflict"
        issued = await certd.renew("shop.test")
        assert issued.profile == "shortlived"
        assert _a2c_orders(a2c) == [(["shop.test"], "shortlived")]


async def test_no_profile_field_for_a_ca_without_profiles(lab, a2c, tmp_path):
    """acme2certifier with no profiles configured lists none: certd asks for none."""
    assert "profiles" not in (a2c.directory().get("meta") or {})
    lab.set_sites({"any": ["any.test"]})
    cfg = _config(lab, a2c, tmp_path, [
        {"name": "any", "domains": ["any.test"], "frontends": ["web"]}], profile="shortlived")
    async with open_certd(cfg) as certd, challenge_listener(cfg, certd):
        issued = await certd.renew("any")
        assert issued is not None and issued.profile is None
        assert [o["profile"] for o in a2c.new_orders()] == [None]
