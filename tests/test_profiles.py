"""ACME profile names and a directory's `meta.profiles`, hostile ones included (issue 14,
item 1; the real CA is in test_profiles_lab.py)."""

from __future__ import annotations

import pytest
from acme import messages

from certd import config as configuration
from certd.errors import AcmeError, ConfigError
from certd.issuance import profiles

BASE = {"newNonce": "https://ca/n", "newAccount": "https://ca/a", "newOrder": "https://ca/o"}


def _meta(meta):
    return messages.Directory.from_json({**BASE, "meta": meta}).meta


@pytest.mark.parametrize("meta, offered", [
    ({"profiles": {"classic": "x", "shortlived": "y"}}, ["classic", "shortlived"]),
    ({}, []),
    ({"profiles": None}, []),
    ({"profiles": ["classic"]}, []),  # not an object: no profiles
    ({"profiles": "classic"}, []),
    ({"profiles": {"ok": 1, "bad name": 2, "\u202eevil": 3, "x" * 65: 4, "": 5}}, ["ok"]),
])
def test_offered_takes_only_usable_names(meta, offered):
    assert profiles.offered(_meta(meta)) == offered
    assert profiles.offered(meta) == offered  # a plain dict as well


def test_offered_caps_a_huge_list():
    many = {f"p{i}": "" for i in range(10_000)}
    for meta in (_meta({"profiles": many}), {"profiles": many}):
        got = profiles.offered(meta)
        assert len(got) == profiles.MAX_LISTED and set(got) <= set(many)


def test_choose():
    assert profiles.choose(None, ["classic"], certificate="c", directory="d") is None
    assert profiles.choose("shortlived", [], certificate="c", directory="d") is None
    assert profiles.choose("classic", ["classic"], certificate="c", directory="d") == "classic"
    with pytest.raises(AcmeError) as caught:
        profiles.choose("tlsserver", ["shortlived", "classic"], certificate="c",
                        directory="https://ca/dir")
    assert caught.value.type == profiles.ERROR_TYPE and not caught.value.transient
    assert "'tlsserver' is not offered by https://ca/dir (it offers: classic, shortlived)" \
        in str(caught.value)


@pytest.mark.parametrize("value", ["", "bad profile", "a/b", "-x", "x" * 65, "é", "a\nb", 5])
def test_config_refuses_unusable_profile_names(value):
    with pytest.raises((ConfigError, ValueError)) as caught:
        configuration.parse({"acme": {"profile": value}})
    assert "acme.profile" in str(caught.value)
    with pytest.raises((ConfigError, ValueError)):
        configuration.parse({"certificates": [{"name": "a", "domains": ["a.example"],
                                               "profile": value}]})


def test_config_profiles():
    cfg = configuration.parse({"acme": {"profile": "tlsserver"}, "certificates": [
        {"name": "a", "domains": ["a.example"], "profile": "shortlived"},
        {"name": "b", "domains": ["b.example"]}]})
    assert cfg.acme.profile == "tlsserver"
    assert [c.profile for c in cfg.certificates] == ["shortlived", None]


class _Client:
    directory_url = "https://ca/dir"

    def __init__(self, offered):
        self.offered = offered

    async def profiles(self):
        return self.offered


@pytest.mark.parametrize("echoed, wanted, offered, stored", [
    ("shortlived", "shortlived", ["shortlived"], "shortlived"),
    (None, "shortlived", ["shortlived"], "shortlived"),  # the CA did not echo it
    (None, "shortlived", [], None),  # the CA has no profiles: none was sent
    ("classic", None, ["classic"], "classic"),  # the CA's default, as it says
    ("\u202eevil\n" * 50, None, ["classic"], None),  # hostile: not stored
    (["x"], "classic", ["classic"], "classic"),
])
async def test_the_stored_profile(echoed, wanted, offered, stored):
    from types import SimpleNamespace

    from certd.issuance.issuer import Issuer
    from certd.model import CertificateSpec

    issuer = Issuer(_Client(offered), store=None)
    spec = CertificateSpec("c", ("c.example",), (), profile=wanted)
    assert await issuer._ordered_profile(spec, SimpleNamespace(profile=echoed)) == stored
