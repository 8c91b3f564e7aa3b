"""The REST API under test without a CA: one config (`api_config_data`/`api_config`: an ACME
directory nothing listens on, the `web` frontend of one file-deployed node, any other
sections as given) and one client (`api_client`: certd opened on a config, its API app behind
aiohttp's TestClient, that certd as `client.certd`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from certd import config as configuration
from certd.api import app as api
from certd.api.tokens import Tokens
from certd.app import open_certd
from tests.lab.procs import free_port


def unreachable_acme() -> dict:
    """An ACME directory on a free port nothing listens on: background orders fail fast,
    which these tests ignore."""
    return {"directory": f"https://127.0.0.1:{free_port()}/dir", "timeout": "1s"}


def file_frontend(tmp_path: Path, node: str = "fe1", address: str = "127.0.0.2") -> dict:
    """One node whose certificates land in tmp_path/{node}/{certificate}."""
    return {"nodes": [{"name": node, "address": address}],
            "deployer": {"type": "file", "path": str(tmp_path) + "/{node}/{certificate}"}}


def api_config_data(tmp_path: Path, **sections: Any) -> dict:
    """state in tmp_path/state, `acme` unreachable, frontend `web`; `sections` add or replace
    top-level keys."""
    return {"state_dir": str(tmp_path / "state"), "acme": unreachable_acme(),
            "frontends": {"web": file_frontend(tmp_path)}, **sections}


def api_config(tmp_path: Path, **sections: Any) -> configuration.Config:
    return configuration.parse(api_config_data(tmp_path, **sections))


@contextlib.asynccontextmanager
async def api_client(cfg: configuration.Config, tokens: Tokens,
                     **client_options: Any) -> AsyncIterator[TestClient]:
    """certd opened on `cfg`, its API app with `tokens` behind a TestClient (`client_options`
    passed on to it); the certd as `client.certd`."""
    async with open_certd(cfg) as certd:
        app = api.build_app(certd, tokens)
        async with TestClient(TestServer(app), **client_options) as client:
            client.certd = certd
            yield client


@contextlib.contextmanager
def live_api(cfg: configuration.Config, tokens: Tokens) -> Iterator[str]:
    """certd opened on `cfg`, its API app on a free 127.0.0.1 port served from its own thread
    and event loop (for synchronous clients: schemathesis, a browser); yields the base URL."""
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        try:
            async with open_certd(cfg) as certd:
                runner = web.AppRunner(api.build_app(certd, tokens))
                await runner.setup()
                try:
                    await web.TCPSite(runner, "127.0.0.1", port).start()
                    ready.set()
                    await stop.wait()
                finally:
                    await runner.cleanup()
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("API did not start")
    if failure:
        raise failure[0]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
