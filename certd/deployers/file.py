"""The file-drop deployer: the node's directory is on this machine (a local frontend, a shared
or mounted filesystem); `check` and `reload` run here."""

from __future__ import annotations

from certd.config import FileDeployerConfig
from certd.deployers.base import Target
from certd.deployers.flow import NodeDeployer, Runner
from certd.deployers.layout import NodeFS
from certd.deployers.local import LocalFS, run_command


class FileDeployer(NodeDeployer):
    kind = "file"

    def __init__(self, config: FileDeployerConfig):
        super().__init__(config.max_parallel)
        self.config = config
        self._fs = LocalFS()

    async def node(self, target: Target) -> tuple[NodeFS, Runner]:
        return self._fs, run_command
