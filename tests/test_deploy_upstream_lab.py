"""deploy/nginx's snippets as shipped (certd-upstream.conf, acme-challenge.conf; only the
instances' addresses replaced) in a real nginx: two challenge listeners of certd instances
reading one store, one of them stopped: every challenge is still answered, through the other.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from certd import responder
from certd.app import start_site
from certd.model import Challenge, utcnow
from certd.store.sqlite import SqliteStore
from tests.lab.frontends import nginx_temp_paths, nginx_user
from tests.lab.procs import ManagedProcess, free_port

pytestmark = pytest.mark.lab  # nginx missing fails, never skips: scripts/test installs it

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "nginx"
TOKEN = "tok_" + "A" * 39


def nginx_conf(root: Path, port: int, instances: list[int], api: list[int]) -> str:
    upstream = (DEPLOY / "certd-upstream.conf").read_text()
    for i, (challenge_port, api_port) in enumerate(zip(instances, api), 1):
        for old, new in ((f"CERTD{i}_HOST:8402", f"127.0.0.1:{challenge_port}"),
                         (f"CERTD{i}_HOST:8403", f"127.0.0.1:{api_port}")):
            assert old in upstream, old
            upstream = upstream.replace(old, new)
    (root / "certd-upstream.conf").write_text(upstream)
    shutil.copy(DEPLOY / "acme-challenge.conf", root / "acme-challenge.conf")
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    return f"""daemon off;
master_process on;
worker_processes 1;
{nginx_user()}
pid {root}/nginx.pid;
error_log {root}/error.log notice;
events {{ worker_connections 64; }}
http {{
    {nginx_temp_paths(root)}
    access_log {root}/access.log;
    include {root}/certd-upstream.conf;
    server {{
        listen 127.0.0.1:{port};
        server_name _;
        include {root}/acme-challenge.conf;
    }}
}}
"""


async def test_a_stopped_instance_is_skipped_for_the_other(tmp_path):
    store = SqliteStore(tmp_path / "certd.db")
    await store.open()
    await store.put_challenge(Challenge(TOKEN, f"{TOKEN}.thumbprint", "site", "https://ca/a/1",
                                        utcnow() + timedelta(minutes=5)))
    ports = [free_port(), free_port()]
    runners = [await start_site(responder.build_app(store), f"127.0.0.1:{p}",
                                f"challenge responder {i}") for i, p in enumerate(ports)]
    port = free_port()
    (tmp_path / "nginx.conf").write_text(
        nginx_conf(tmp_path, port, ports, [free_port(), free_port()]))
    nginx = ManagedProcess("nginx-upstream", ["nginx", "-p", str(tmp_path), "-c",
                                              str(tmp_path / "nginx.conf")],
                           tmp_path / "nginx.log")
    url = f"http://127.0.0.1:{port}/.well-known/acme-challenge/{TOKEN}"
    try:
        nginx.start()
        nginx.wait_tcp([("127.0.0.1", port)])
        async with aiohttp.ClientSession() as http:
            async def answers() -> list[tuple[int, str]]:
                out = []
                for _ in range(10):
                    async with http.get(url, headers={"Host": "site.example"}) as r:
                        out.append((r.status, await r.text()))
                return out

            assert set(await answers()) == {(200, f"{TOKEN}.thumbprint")}
            await runners[0].cleanup()  # instance 1 goes away
            runners = runners[1:]
            assert set(await answers()) == {(200, f"{TOKEN}.thumbprint")}
            async with http.get(url.replace(TOKEN, "tok_" + "B" * 39)) as r:
                assert r.status == 404  # an unknown token is still certd's 404
    finally:
        nginx.stop()
        for runner in runners:
            await runner.cleanup()
        await store.close()
