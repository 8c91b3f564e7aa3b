"""The file-drop deployer: the node's directory is on this machine (a local frontend, a shared
or mounted filesystem); `check` and `reload` run here. With `runtime_api`, a local HAProxy
takes the certificates through its runtime API instead of a reload (deployers/haproxy.py)."""

from __future__ import annotations

import asyncio

from certd.config import FileDeployerConfig, render
from certd.deployers.base import Target
from certd.deployers.flow import NodeDeployer, Runner
from certd.deployers.haproxy import HAProxyRuntime, UnixSocketChannel
from certd.deployers.layout import NodeFS
from certd.deployers.local import LocalFS, run_command

READ_LIMIT = 4 * 1024 * 1024  # a combined.pem or a crt-list read back for the runtime API


class FileDeployer(NodeDeployer):
    kind = "file"

    def __init__(self, config: FileDeployerConfig):
        super().__init__(config.max_parallel)
        self.config = config
        self._fs = LocalFS()
        self._locks: dict[str, asyncio.Lock] = {}  # per runtime API socket

    async def node(self, target: Target) -> tuple[NodeFS, Runner]:
        return self._fs, run_command

    def runtime(self, fs: NodeFS, target: Target) -> HAProxyRuntime | None:
        c = self.config
        if not c.runtime_api:
            return None
        values = {"node": target.node, "address": target.address,
                  "certificate": target.certificate}
        socket = render(c.runtime_api, **values)
        return HAProxyRuntime(
            UnixSocketChannel(socket),
            crt_list=render(c.runtime_crt_list, **values) if c.runtime_crt_list else None,
            timeout=c.runtime_timeout.total_seconds(), fs=fs, read=_read_local,
            lock=self._locks.setdefault(socket, asyncio.Lock()),
        )


async def _read_local(path: str) -> bytes | None:
    def read() -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read(READ_LIMIT)
        except FileNotFoundError:
            return None
    return await asyncio.to_thread(read)
