"""A stored row back into a model object: one mapper per table, shared by the SQL stores.
They differ only in how a time and a list are stored, which a `Columns` says: SQLite keeps
ISO text and JSON text, PostgreSQL native timestamps and arrays. A row is anything indexable
by column name (sqlite3.Row, asyncpg.Record)."""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from certd.model import (
    Alert,
    Alias,
    AriState,
    CertificateState,
    CertStatus,
    CertSummary,
    Deployment,
    DeployStatus,
    Event,
    Finding,
    IssuedCertificate,
    Order,
    Severity,
)


@dataclass(frozen=True)
class Columns:
    when: Callable[[Any], datetime | None]  # a stored time (or NULL) -> an aware datetime
    items: Callable[[Any], tuple]  # a stored list (or NULL) -> a tuple


def _iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


SQLITE = Columns(when=_iso, items=lambda text: tuple(json.loads(text or "[]")))
NATIVE = Columns(when=lambda value: value, items=lambda value: tuple(value or ()))


_STATUS = CertStatus._value2member_map_


def _status(value) -> CertStatus:
    found = _STATUS.get(value)  # a dict lookup, not Enum.__call__: ~100,000 in an overview
    return found if found is not None else CertStatus(value)  # ValueError, as before


def state(r, c: Columns) -> CertificateState:
    return CertificateState(name=r["name"], status=_status(r["status"]),
                            last_error=r["last_error"], attempts=r["attempts"],
                            next_attempt_at=c.when(r["next_attempt_at"]),
                            updated_at=c.when(r["updated_at"]))


def summary(r, c: Columns) -> CertSummary:
    return CertSummary(r["name"], r["serial"], c.items(r["domains"]), c.when(r["not_before"]),
                       c.when(r["not_after"]), c.when(r["issued_at"]), r["fingerprint_sha256"],
                       r["issuer"], r["profile"])


def order(r, c: Columns) -> Order:
    return Order(r["certificate"], r["url"], r["status"], c.when(r["created_at"]), r["error"],
                 c.items(r["domains"]), r["key_pem"], r["replaces"])


def event(r, c: Columns) -> Event:
    return Event(kind=r["kind"], message=r["message"], severity=Severity(r["severity"]),
                 certificate=r["certificate"], node=r["node"], data=json.loads(r["data"]),
                 at=c.when(r["at"]), id=r["id"])


def deployment(r, c: Columns) -> Deployment:
    return Deployment(r["certificate"], r["frontend"], r["node"], r["serial"],
                      DeployStatus(r["status"]), r["message"], c.when(r["updated_at"]),
                      r["batch"], r["seconds"], c.when(r["verified_at"]))


def alias(r, c: Columns) -> Alias:
    return Alias(r["domain"], c.items(r["frontends"]), r["created_by"], c.when(r["created_at"]),
                 bool(r["removing"]), r["validation"], r["profile"])


def ari(r, c: Columns) -> AriState:
    return AriState(name=r["name"], serial=r["serial"], window_start=c.when(r["window_start"]),
                    window_end=c.when(r["window_end"]), renew_at=c.when(r["renew_at"]),
                    next_check_at=c.when(r["next_check_at"]),
                    explanation_url=r["explanation_url"], checked_at=c.when(r["checked_at"]))


def certificate(r, c: Columns) -> IssuedCertificate:
    return IssuedCertificate(
        name=r["name"], serial=r["serial"], domains=c.items(r["domains"]),
        not_before=c.when(r["not_before"]), not_after=c.when(r["not_after"]),
        cert_pem=r["cert_pem"], chain_pem=r["chain_pem"], key_pem=r["key_pem"],
        fingerprint_sha256=r["fingerprint_sha256"], issued_at=c.when(r["issued_at"]),
        order_url=r["order_url"], id=r["id"], issuer=r["issuer"], profile=r["profile"])


def alert(r, c: Columns) -> Alert:
    finding = Finding(
        check=r["check_id"], severity=Severity(r["severity"]), domain=r["domain"],
        node=r["node"], message=r["message"], certificate=r["certificate"], serial=r["serial"],
        not_after=c.when(r["not_after"]), days_remaining=r["days_remaining"])
    notified = r["notified_severity"]
    return Alert(finding, c.when(r["first_seen"]), c.when(r["last_seen"]),
                 c.when(r["notified_at"]), None if notified is None else Severity(notified),
                 c.when(r["resolved_at"]))


_pauses = 0  # collector_paused() blocks running (in any task)
_was_enabled = True  # the collector's state when the first of them began


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block; blocks may overlap across tasks (the
    last one out puts back what the first one found). For a bulk read (Store.overview:
    ~250,000 rows and as many model objects at 100,000 names, none of them garbage): the
    collections the allocation count triggers would scan the growing heap again and again
    for nothing, over half of the read's CPU (asyncpg's records and the mapping alike).
    Other tasks run meanwhile (the block awaits the store); what they leave as cyclic
    garbage is collected after it, as usual."""
    global _pauses, _was_enabled
    if _pauses == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _pauses += 1
    try:
        yield
    finally:
        _pauses -= 1
        if _pauses == 0 and _was_enabled:
            gc.enable()


def overview_into(out: dict[str, list], slot: int, mapper: Callable, rows) -> None:
    """Store.overview(), one table at a time: each row mapped into `out[name][slot]`."""
    for r in rows:
        made = mapper(r)
        entry = out.get(made.name)
        if entry is None:
            out[made.name] = entry = [None, None, None]
        entry[slot] = made


def overview_done(out: dict[str, list]) -> dict[str, tuple]:
    """The lists of `overview_into` as Store.overview()'s tuples."""
    return {name: tuple(v) for name, v in out.items()}


class Mappers:
    """Every mapper above bound to one store's column types: `ROWS = Mappers(SQLITE)`, then
    `ROWS.state(row)`."""

    def __init__(self, c: Columns):
        for fn in (state, summary, order, event, deployment, alias, ari, certificate, alert):
            setattr(self, fn.__name__, partial(fn, c=c))
