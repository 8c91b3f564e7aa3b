"""The render cache of /api/v1/domains (certd/api/cache.py) and the atomic per-token quota
(certd/aliases.py, Store.ledger_take), across processes: two certd service objects on one
store (a SQLite file; a PostgreSQL database), as two API workers or two instances hold.

- a write through the other process (a new alias, a certificate's state, a deployment) is
  in this process's next read, though the page was cached;
- a cached answer is byte for byte what an uncached one is (body and headers);
- hostile query strings (many cursors, a huge one) leave the cache bounded;
- many concurrent adds of one token, through both processes, never pass its hourly quota,
  and an idempotent repeat never consumes it."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from aiohttp import web

from certd import aliases
from certd.api import cache as render_cache
from certd.api.cache import RenderCache, cache_of
from certd.api.tokens import parse
from certd.app import open_certd
from certd.errors import AliasError
from certd.model import CertificateState, CertStatus, Deployment, DeployStatus, utcnow
from tests.certd_api import api_client, api_config

TOKEN = "cache-token-0123456789ab"
OTHER = "cache-other-0123456789ab"
H = {"Authorization": f"Bearer {TOKEN}"}
TOKENS = f"ops {TOKEN}\nci {OTHER}\n"
QUOTA = 5


def _cfg(tmp_path, **storage):
    return api_config(tmp_path, domains={"default_frontends": ["web"],
                                         "per_token_per_hour": QUOTA,
                                         "allow_special_use": ["example"]}, **storage)


@pytest.fixture
def sqlite_cfg(tmp_path):
    return _cfg(tmp_path)


@pytest.fixture
def postgresql_cfg(tmp_path, postgres_database):
    db = postgres_database
    return _cfg(tmp_path, storage=db.url, storage_password_file=str(db.password_file))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.lab)])
def cfg(request):
    return request.getfixturevalue(f"{request.param}_cfg")


# --- the cache itself -------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_serves_under_its_stamp_and_config_for_max_age():
    clock, config = Clock(), object()
    cache = RenderCache(max_age=2.0, clock=clock)
    cache.put(("list", 100), 7, config, b"page")
    assert cache.get(("list", 100), 7, config) == b"page"
    assert cache.get(("list", 100), 8, config) is None  # the store changed: dropped
    assert len(cache) == 0
    cache.put(("list", 100), 8, config, b"page")
    assert cache.get(("list", 100), 8, object()) is None  # a reloaded config
    cache.put(("list", 100), 8, config, b"page")
    clock.now += 2.0
    assert cache.get(("list", 100), 8, config) == b"page"
    clock.now += 0.01
    assert cache.get(("list", 100), 8, config) is None  # too old
    assert (cache.hits, cache.misses) == (2, 3)


def test_the_cache_stays_bounded_whatever_the_keys():
    config = object()
    cache = RenderCache(max_entries=10, max_bytes=1000)
    for i in range(100):
        cache.put(("list", 100, None, "", f"cursor-{i}"), 1, config, b"x" * 10)
    assert len(cache) == 10 and cache.size == 100
    assert cache.get(("list", 100, None, "", "cursor-99"), 1, config) is not None
    assert cache.get(("list", 100, None, "", "cursor-0"), 1, config) is None  # LRU went first
    for i in range(20):  # by bytes too
        cache.put(("show", f"d{i}.example.com"), 1, config, b"y" * 200)
    assert cache.size <= 1000 and len(cache) == 5
    cache.put(("show", "huge.example.com"), 1, config, b"z" * 900)  # over a quarter: not kept
    assert cache.get(("show", "huge.example.com"), 1, config) is None
    cache.put(("list", 100, None, "", "c" * 301), 1, config, b"page")  # a hostile cursor
    assert cache.get(("list", 100, None, "", "c" * 301), 1, config) is None
    assert cache.size <= 1000


# --- across processes -------------------------------------------------------------------------

async def _page(client, query="") -> tuple[int, dict, bytes, str]:
    resp = await client.get("/api/v1/domains" + query, headers=H)
    return resp.status, resp.headers, await resp.read(), resp.headers.get("Content-Type")


async def test_a_write_in_the_other_process_is_in_the_next_read(cfg):
    async with (api_client(cfg, parse(TOKENS, "tokens")) as a, open_certd(cfg) as b):
        cache = cache_of(a.certd)
        await aliases.add(b, "one.example.com", who="ops")
        first = await _page(a)
        assert [d["domain"] for d in json.loads(first[2])["items"]] == ["one.example.com"]
        again = await _page(a)
        assert again[2] == first[2] and cache.hits == 1  # served from the cache

        await aliases.add(b, "two.example.com", who="ops")  # process B: a new alias
        page = json.loads((await _page(a))[2])
        assert [d["domain"] for d in page["items"]] == ["one.example.com", "two.example.com"]

        shown = await a.get("/api/v1/domains/one.example.com", headers=H)
        assert (await shown.json())["status"] == "pending"
        await b.store.put_state(CertificateState("one.example.com", CertStatus.FAILED,
                                                 "acme: boom", 1, updated_at=utcnow()))
        shown = await (await a.get("/api/v1/domains/one.example.com", headers=H)).json()
        assert shown["status"] == "failed" and shown["last_error"] == "acme: boom"
        failed = json.loads((await _page(a, "?status=failed"))[2])
        assert [d["domain"] for d in failed["items"]] == ["one.example.com"]

        await b.store.put_deployment(Deployment("two.example.com", "web", "fe1", "01",
                                                DeployStatus.FAILED, "down", utcnow()))
        two = await (await a.get("/api/v1/domains/two.example.com", headers=H)).json()
        assert [d["status"] for d in two["deployments"]] == ["failed"]

        await aliases.request_removal(b, (await b.store.get_alias("two.example.com")),
                                      "ops", revoke=False)
        page = json.loads((await _page(a))[2])
        assert [d["status"] for d in page["items"]] == ["failed", "removing"]
        await b.store.delete_alias("two.example.com")
        gone = await a.get("/api/v1/domains/two.example.com", headers=H)
        assert gone.status == 404
        assert cache.hits >= 1 and cache.misses >= 6


async def test_a_cached_answer_is_byte_for_byte_an_uncached_one(sqlite_cfg):
    async with api_client(sqlite_cfg, parse(TOKENS, "tokens")) as a:
        for name in ("one.example.com", "two.example.com", "three.example.com"):
            await aliases.add(a.certd, name, who="ops")
        cache = cache_of(a.certd)
        for query in ("", "?limit=2", "?limit=2&cursor=three.example.com", "?q=tw",
                      "?status=pending"):
            fresh = await _page(a, query)
            cached = await _page(a, query)
            assert fresh[0] == cached[0] == 200
            assert cached[2] == fresh[2] and cached[3] == fresh[3]
            assert {k: v for k, v in cached[1].items() if k != "Date"} == {
                k: v for k, v in fresh[1].items() if k != "Date"}
            # and what web.json_response made of the same data before the cache existed
            reference = web.json_response(json.loads(fresh[2]))
            assert reference.body == fresh[2] and reference.content_type == "application/json"
            assert fresh[3] == "application/json; charset=utf-8"
        assert cache.hits == 5
        one = await a.get("/api/v1/domains/one.example.com", headers=H)
        again = await a.get("/api/v1/domains/one.example.com", headers={
            "Authorization": f"Bearer {OTHER}"})  # another token, the same answer
        assert await one.read() == await again.read() and cache.hits == 6
        assert (await a.get("/api/v1/domains/one.example.com")).status == 401  # no token


async def test_hostile_query_strings_leave_the_cache_bounded(sqlite_cfg):
    async with api_client(sqlite_cfg, parse(TOKENS, "tokens")) as a:
        await aliases.add(a.certd, "one.example.com", who="ops")
        cache = cache_of(a.certd)
        cache.max_entries = 16
        answers = await asyncio.gather(*(a.get(f"/api/v1/domains?cursor=a{i:04d}", headers=H)
                                         for i in range(200)))
        assert {r.status for r in answers} == {200}
        assert len(cache) <= 16
        huge = await a.get("/api/v1/domains?cursor=" + "z" * 6000, headers=H)
        assert huge.status == 200 and (await huge.json())["items"] == []
        assert all(len(k[-1] or "") <= render_cache.MAX_KEY_PART for k in cache._entries)
        for query in ("limit=0", "limit=x", "status=bogus", "q=" + "x" * 300):  # refused
            assert (await a.get(f"/api/v1/domains?{query}", headers=H)).status == 400
        assert (await a.get("/api/v1/domains/" + "x" * 300, headers=H)).status == 404
        assert len(cache) <= 16


# --- the quota, across processes --------------------------------------------------------------

async def test_concurrent_adds_never_pass_the_quota(cfg):
    async with open_certd(cfg) as a, open_certd(cfg) as b:
        async def add(i: int):
            try:
                return await aliases.add((a, b)[i % 2], f"d{i:02d}.example.com", who="ci")
            except AliasError as exc:
                return exc

        results = await asyncio.gather(*(add(i) for i in range(24)))
        created = [r for r in results if not isinstance(r, AliasError)]
        refused = [r for r in results if isinstance(r, AliasError)]
        assert len(created) == QUOTA and all(r.created for r in created)
        assert {r.kind for r in refused} == {"quota"}
        assert {str(r) for r in refused} == {f"{QUOTA} new domains per hour for this token"}
        assert all(0 < r.retry_after <= 3601 for r in refused)
        assert len(await a.store.list_aliases()) == QUOTA
        hour_ago = utcnow() - timedelta(hours=1)
        assert len(await b.store.ledger_times(aliases.QUOTA, "ci", hour_ago)) == QUOTA
        assert len(await a.store.events(kind="api.domain.add")) == QUOTA


async def test_a_repeat_never_consumes_quota_even_in_a_race(cfg):
    async with open_certd(cfg) as a, open_certd(cfg) as b:
        results = await asyncio.gather(*(aliases.add((a, b)[i % 2], "same.example.com",
                                                     who="ci") for i in range(12)))
        assert sum(r.created for r in results) == 1
        assert {r.alias.domain for r in results} == {"same.example.com"}
        hour_ago = utcnow() - timedelta(hours=1)
        assert len(await a.store.ledger_times(aliases.QUOTA, "ci", hour_ago)) == 1
        assert len(await b.store.events(kind="api.domain.add")) == 1
        for i in range(QUOTA - 1):  # the other slots are all still there
            assert (await aliases.add(b, f"n{i}.example.com", who="ci")).created
        with pytest.raises(AliasError) as refused:
            await aliases.add(a, "over.example.com", who="ci")
        assert refused.value.kind == "quota"
        assert not (await aliases.add(a, "same.example.com", who="ci")).created  # still 200
