"""The REST API under test without a CA: one config (`api_config_data`/`api_config`: an ACME
directory nothing listens on, the `web` frontend of one file-deployed node, any other
sections as given) and one client (`api_client`: certd opened on a config, its API app behind
aiohttp's TestClient, that certd as `client.certd`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
