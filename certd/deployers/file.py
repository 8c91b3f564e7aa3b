"""The file-drop deployer: the node's directory is on this machine (a local frontend, a shared
or mounted filesystem); `check` and `reload` run here. With `runtime_api`, a local HAProxy
takes the certificates through its runtime API instead of a reload (deployers/haproxy.py)."""

from __future__ import annotations

import asyncio

from certd.config import FileDeployerConfig
from certd.deployers.base import Target
from certd.deployers.flow import NodeDeployer, Runner
from certd.deployers.haproxy import (
    READ_LIMIT,
    HAProxyRuntime,
    UnixSocketChannel,
    node_runtime,
)
from certd.deployers.layout import NodeFS
from certd.deployers.local import LocalFS, run_command


class FileDeployer(NodeDeployer):
    kind = "file"

    def __init__(self, config: FileDeployerConfig):
        super().__init__(config.max_parallel)
        self.config = config
        self._fs = LocalFS()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}  # per runtime API socket

    async def node(self, target: Target) -> tuple[NodeFS, Runner]:
        return self._fs, run_command

    def runtime(self, fs: NodeFS, target: Target) -> HAProxyRuntime | None:
        return node_runtime(self.config, target, channel=UnixSocketChannel, fs=fs,
                            read=_read_local, locks=self._locks)


async def _read_local(path: str) -> bytes | None:
    def read() -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read(READ_LIMIT)
        except FileNotFoundError:
            return None
    return await asyncio.to_thread(read)
