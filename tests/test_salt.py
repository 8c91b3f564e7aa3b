"""Smoke test of the Salt lab, speaking salt-api's HTTP the way certd's Salt deployer does:
``POST /login`` -> token; ``POST /`` with ``X-Auth-Token`` and one ``client=local`` lowstate.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.lab import Lab, SaltLab, wait_until

MINIONS = ["fe1", "fe2"]


@pytest.fixture(scope="module")
def token(salt_lab: SaltLab) -> str:
    response = requests.post(
        f"{salt_lab.api_url}/login",
        json={
            "username": salt_lab.username,
            "password": salt_lab.password_file.read_text(),
            "eauth": salt_lab.eauth,
        },
        headers={"Accept": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    answer = response.json()["return"][0]
    assert answer["user"] == salt_lab.username and answer["eauth"] == "file"
    return answer["token"]


def call(salt_lab: SaltLab, token: str, **lowstate: Any) -> dict[str, Any]:
    """One ``client=local`` job; returns ``{minion: answer}``."""
    response = requests.post(
        f"{salt_lab.api_url}/",
        json=[{"client": "local", "tgt_type": "list", **lowstate}],
        headers={"X-Auth-Token": token, "Accept": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["return"][0]


def high_data(directory: str, secret: str, reload: str) -> dict[str, Any]:
    """A key file (0600, never echoed) and a reload that runs only if the file is in place."""
    key = f"{directory}/privkey.pem"
    return {
        key: {
            "__sls__": "certd", "__env__": "base",
            "file": ["managed", {"contents": secret}, {"mode": "0600"},
                     {"show_changes": False}, {"makedirs": True}],
        },
        "reload": {
            "__sls__": "certd", "__env__": "base",
            "cmd": ["run", {"name": reload}, {"require": [{"file": key}]}],
        },
    }  # fmt: skip


def test_ping_every_minion(salt_lab: SaltLab, token: str) -> None:
    assert call(salt_lab, token, tgt=MINIONS, fun="test.ping") == {m: True for m in MINIONS}
    assert set(salt_lab.minion_ids.values()) == set(MINIONS)


def test_state_high_per_node_paths(lab: Lab, salt_lab: SaltLab, token: str) -> None:
    """``{node}`` paths: one job per minion (the high data is the same for every target)."""
    for node in MINIONS:
        directory = lab.cert_dir(node, "saltsmoke-node")
        answers = call(
            salt_lab, token, tgt=[node], fun="state.high", full_return=True,
            arg=[high_data(str(directory), f"key of {node}\n", f"echo reloaded {node}")],
        )  # fmt: skip
        answer = answers[node]
        assert answer["retcode"] == 0, answer
        states = answer["ret"]
        assert all(state["result"] is True for state in states.values()), states
        reload = states[f"cmd_|-reload_|-echo reloaded {node}_|-run"]
        assert reload["changes"]["stdout"] == f"reloaded {node}"
        key = directory / "privkey.pem"
        assert key.read_text() == f"key of {node}\n"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_state_high_one_job_same_path(lab: Lab, salt_lab: SaltLab, token: str) -> None:
    """One job to both minions with the same path and reload command: each minion's mount
    namespace maps ``node_root`` to its own node.  The key lands in the master's job cache."""
    assert salt_lab.node_root is not None
    directory = f"{salt_lab.node_root}/certs/saltsmoke"
    secret = f"SALT-SMOKE-SECRET-{time.time_ns()}\n"

    def hups(node: str) -> int:
        return sum("SIGHUP" in line for line in lab.error_log(node))

    hups_before = {node: hups(node) for node in MINIONS}
    started = time.monotonic()
    answers = call(
        salt_lab, token, tgt=MINIONS, fun="state.high", full_return=True,
        arg=[high_data(directory, secret, salt_lab.reload_command)],
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert set(answers) == set(MINIONS)
    for node in MINIONS:
        assert answers[node]["retcode"] == 0, answers[node]
        assert all(s["result"] is True for s in answers[node]["ret"].values())
        # nginx logs the signal when it handles it, maybe just after `-s reload` returned
        wait_until(lambda n=node: hups(n) > hups_before[n], 2, what=f"{node}'s nginx reload")
        key = lab.cert_dir(node, "saltsmoke") / "privkey.pem"
        assert key.read_text() == secret
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert salt_lab.deploy_path_template.format(certificate="saltsmoke") == directory
    assert elapsed < 5, f"state.high on two minions took {elapsed:.2f}s"
    # show_changes: False keeps the key out of the *answer*, not out of the job cache.
    assert secret not in str(answers)
    cached = [p for p in salt_lab.master_job_cache_dir.rglob(".load.p")
              if secret.strip().encode() in p.read_bytes()]  # fmt: skip
    assert cached, "expected the job arguments (the key) in the master's job cache"


def test_failed_state_and_retcode(salt_lab: SaltLab, token: str) -> None:
    answers = call(
        salt_lab, token, tgt=["fe1"], fun="state.high", full_return=True,
        arg=[{"reload": {"__sls__": "certd", "__env__": "base",
                         "cmd": ["run", {"name": "echo broken >&2; exit 3"}]}}],
    )  # fmt: skip
    answer = answers["fe1"]
    assert answer["retcode"] == 2  # salt's "a state failed", not the command's status
    (state,) = answer["ret"].values()
    assert state["result"] is False
    assert state["changes"]["retcode"] == 3 and state["changes"]["stderr"] == "broken"


def test_stopped_minion_fails_alone(salt_lab: SaltLab, token: str) -> None:
    salt_lab.stop_minion("fe2")
    try:
        started = time.monotonic()
        answers = call(
            salt_lab, token, tgt=MINIONS, fun="test.ping", full_return=True,
            timeout=1, gather_job_timeout=1,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        salt_lab.start_minion("fe2")
    assert answers["fe1"] == {"ret": True, "retcode": 0, "jid": answers["fe1"]["jid"]}
    missing = answers["fe2"]
    assert missing["out"] == "no_return" and missing["retcode"] == 1
    assert "did not return" in missing["ret"] and "jid" not in missing
    # ~ timeout + gather_job_timeout
    assert 1.5 < elapsed < 5, f"a missing minion took {elapsed:.2f}s"


def test_bad_password_is_401(salt_lab: SaltLab) -> None:
    response = requests.post(
        f"{salt_lab.api_url}/login",
        json={"username": salt_lab.username, "password": "wrong", "eauth": salt_lab.eauth},
        headers={"Accept": "application/json"},
        timeout=10,
    )
    assert response.status_code == 401
    response = requests.post(
        f"{salt_lab.api_url}/",
        json=[{"client": "local", "tgt": "*", "fun": "test.ping"}],
        headers={"X-Auth-Token": "not-a-token", "Accept": "application/json"},
        timeout=10,
    )
    assert response.status_code == 401


def test_missing_salt_venv_is_reported(tmp_path: Path) -> None:
    from tests.lab import salt_venv_missing

    message = salt_venv_missing(tmp_path / "nowhere")
    assert message is not None and "scripts/salt-venv" in message


# --- pull mode's one-shot bundle tokens (no lab: the store and the API route) ----------------

async def test_bundle_token_is_taken_once_even_concurrently(tmp_path: Path) -> None:
    import asyncio
    from datetime import timedelta

    from certd.deployers import salt_pull
    from certd.model import utcnow
    from certd.store.sqlite import SqliteStore

    a, b = SqliteStore(tmp_path / "db.sqlite"), SqliteStore(tmp_path / "db.sqlite")
    await a.open()
    await b.open()  # two connections, as two processes sharing the file
    try:
        now = utcnow()
        token, batch = salt_pull.new_token(), salt_pull.new_batch()
        digest = salt_pull.token_digest(token)
        await a.create_bundle_token(digest, batch=batch, minion="fe1",
                                    items=[("portal", "0a1b")], now=now,
                                    expires_at=now + timedelta(minutes=2))
        assert await a.take_bundle_token(digest, "f" * 16, now) is None  # another batch
        got = await asyncio.gather(*(s.take_bundle_token(digest, batch, now)
                                     for s in (a, b, a, b)))
        winners = [g for g in got if g is not None]
        assert len(winners) == 1
        assert winners[0].minion == "fe1" and winners[0].items == (("portal", "0a1b"),)
        assert await b.take_bundle_token(digest, batch, now) is None  # replayed

        late = salt_pull.new_token()
        await a.create_bundle_token(salt_pull.token_digest(late), batch=batch, minion="fe2",
                                    items=[], now=now, expires_at=now + timedelta(seconds=5))
        assert await a.take_bundle_token(salt_pull.token_digest(late), batch,
                                         now + timedelta(seconds=6)) is None  # expired
        assert await a.expire_bundle_tokens(now, batch) == 2  # the job is over: all gone
    finally:
        await a.close()
        await b.close()


def test_bundle_tar_is_deterministic_and_pull_job_holds_no_key() -> None:
    from datetime import datetime, timezone

    from certd.deployers import salt_pull
    from certd.deployers.base import Placement, Target
    from certd.model import IssuedCertificate

    key = "-----BEGIN PRIVATE KEY-----\nS3CR3TKEYMATERIAL\n-----END PRIVATE KEY-----\n"
    t = datetime(2030, 1, 1, tzinfo=timezone.utc)
    cert = IssuedCertificate(name="portal", serial="0a1b", domains=("a.test",), not_before=t,
                             not_after=t, cert_pem="CERT\n", chain_pem="CHAIN\n", key_pem=key)
    tar = salt_pull.bundle_tar([("portal", cert)])
    assert tar == salt_pull.bundle_tar([("portal", cert)]) and b"S3CR3TKEYMATERIAL" in tar
    target = Target.render(frontend="web", node="fe1", address="127.0.0.1",
                           certificate="portal", path="/etc/ssl/{certificate}",
                           check="nginx -t", reload="nginx -s reload", timeout=5)
    high = salt_pull.pull_high([Placement(target, cert)], "0123456789abcdef",
                               {"fe1": salt_pull.new_token()}, "https://certd:8403",
                               "0" * 64, None)
    assert "S3CR3TKEYMATERIAL" not in repr(high)
    assert {"certd-pull-fetch", "certd-pull-0-guard", "certd-pull-0-place",
            "certd-pull-0-switch", "certd-pull-check-0", "certd-pull-reload-0",
            "certd-pull-rollback", "certd-pull-cleanup"} == set(high)


async def test_bundle_route_has_one_fixed_refusal(tmp_path: Path) -> None:
    """No token, an API admin token, a malformed one, an unknown one, a bad batch: the same
    401 problem, echoing nothing."""
    from aiohttp.test_utils import TestClient, TestServer

    from certd import config as configuration
    from certd.api import app as api
    from certd.api.tokens import parse
    from certd.app import open_certd
    from certd.deployers import salt_pull

    admin = "admin-token-0123456789abcdef"
    cfg = configuration.parse({"state_dir": str(tmp_path / "state")})
    async with open_certd(cfg) as certd:
        app = api.build_app(certd, parse(f"root {admin} admin\n", "tokens"))
        async with TestClient(TestServer(app)) as c:
            answers = []
            unknown = salt_pull.new_token()
            for batch, header in (("0123456789abcdef", None),
                                  ("0123456789abcdef", f"Bearer {admin}"),
                                  ("0123456789abcdef", "Bearer cdb_short"),
                                  ("0123456789abcdef", f"Bearer {unknown}"),
                                  ("NOT-A-BATCH", f"Bearer {unknown}")):
                resp = await c.get(f"/api/v1/salt/bundles/{batch}",
                                   headers={"Authorization": header} if header else {})
                body = await resp.read()
                assert resp.status == 401 and unknown.encode() not in body
                assert admin.encode() not in body and batch.encode() not in body
                answers.append(body)
            assert len(set(answers)) == 1
