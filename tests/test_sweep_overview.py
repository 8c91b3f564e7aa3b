"""The sweep's bulk read (Store.overview), made cheaper without changing what it returns: the
row mappers it uses build the same model objects as the dataclasses' own __init__, and the
collector pause around it (rows.collector_paused) ends with the last of overlapping reads."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from datetime import timedelta

import pytest

from certd.model import (
    AriState,
    CertificateState,
    CertStatus,
    CertSummary,
    utcnow,
)
from certd.store import rows

NOW = utcnow()


@pytest.mark.parametrize("columns", [rows.SQLITE, rows.NATIVE], ids=["sqlite", "native"])
def test_the_overview_mappers_build_what_the_dataclasses_build(columns):
    iso = columns is rows.SQLITE
    t = (lambda d: d.isoformat()) if iso else (lambda d: d)
    domains = '["a.example", "b.example"]' if iso else ["a.example", "b.example"]
    summary = {"name": "n", "serial": "0a", "domains": domains, "not_before": t(NOW),
               "not_after": t(NOW + timedelta(days=90)), "issued_at": t(NOW),
               "fingerprint_sha256": "ff", "issuer": None, "profile": "classic"}
    state = {"name": "n", "status": "failed", "last_error": "acme: down", "attempts": 2,
             "next_attempt_at": t(NOW), "updated_at": t(NOW)}
    ari = {"name": "n", "serial": "0a", "window_start": t(NOW), "window_end": None,
           "renew_at": t(NOW), "next_check_at": t(NOW), "explanation_url": None,
           "checked_at": t(NOW)}
    expected = [
        (rows.summary(summary, columns), CertSummary(
            "n", "0a", ("a.example", "b.example"), NOW, NOW + timedelta(days=90), NOW, "ff",
            None, "classic")),
        (rows.state(state, columns), CertificateState(
            "n", CertStatus.FAILED, "acme: down", 2, NOW, NOW)),
        (rows.ari(ari, columns), AriState("n", "0a", NOW, None, NOW, NOW, None, NOW)),
    ]
    for made, built in expected:
        # every field (a field added to the model must be added to its mapper too)
        assert set(vars(made)) == {f.name for f in dataclasses.fields(type(built))}
        assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.name = "other"
    with pytest.raises(ValueError):
        rows.state({**state, "status": "no such status"}, columns)


async def test_the_collector_pause_of_overlapping_reads_ends_with_the_last():
    assert gc.isenabled()
    first_in, second_in, first_out = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def first():
        with rows.collector_paused():
            first_in.set()
            await second_in.wait()
        first_out.set()

    async def second():
        await first_in.wait()
        with rows.collector_paused():
            second_in.set()
            await first_out.wait()
            assert not gc.isenabled()  # the other read ended: still paused for this one
        assert gc.isenabled()

    await asyncio.gather(first(), second())
    assert gc.isenabled()
    with pytest.raises(RuntimeError), rows.collector_paused():
        raise RuntimeError("a failed read")
    assert gc.isenabled()
    gc.disable()  # paused by someone else before: left so
    try:
        with rows.collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
