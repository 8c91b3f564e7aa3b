"""The file-drop deployer: the node's directory is on this machine (a local frontend, a shared
or mounted filesystem). Places the versioned set, runs `check` then `reload` locally, and rolls
back to the previous set when either fails."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from certd import failpoints
from certd.config import FileDeployerConfig
from certd.deployers.base import DeployResult, Target, file_set
from certd.deployers.local import place, run_command, switch
from certd.model import IssuedCertificate

log = logging.getLogger(__name__)


class FileDeployer:
    def __init__(self, config: FileDeployerConfig):
        self.config = config

    async def deploy(self, target: Target, cert: IssuedCertificate) -> DeployResult:
        where = f"file[{target.node}]"
        path = Path(target.path)
        try:
            previous = await asyncio.to_thread(place, path, cert.serial, file_set(cert))
        except OSError as exc:
            return DeployResult(target, False, f"{where}: write {path}: {exc.strerror or exc}")
        failpoints.hit("deploy:switched")
        outputs = []
        for step, command in (("check", target.check), ("reload", target.reload)):
            if not command:
                continue
            result = await run_command(command, target.timeout)
            outputs.append(f"$ {command}\n{result.output}")
            if result.ok:
                continue
            message = f"{where}: {step}: {result.describe()}"
            rolled_back = await self._rollback(target, path, previous, step == "reload")
            return DeployResult(target, False, message, rolled_back, "\n".join(outputs))
        return DeployResult(target, True, f"{where}: deployed serial {cert.serial}",
                            output="\n".join(outputs))

    async def _rollback(self, target: Target, path: Path, previous: str | None,
                        reload: bool) -> bool:
        """Point the node back at its previous set and, if a reload already ran, reload again."""
        if previous is None:
            return False
        try:
            await asyncio.to_thread(switch, path, previous)
        except OSError as exc:
            log.error("file[%s]: rollback of %s failed: %s", target.node, path, exc)
            return False
        if reload and target.reload:
            result = await run_command(target.reload, target.timeout)
            if not result.ok:
                log.error("file[%s]: reload after rollback: %s", target.node, result.describe())
        return True

    async def close(self) -> None:
        return None
