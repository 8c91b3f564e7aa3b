"""One node's deploy, for every deployer that reaches the node's filesystem and can run
commands there (file: this machine; ssh: SFTP and exec): place the versioned set, run `check`
then `reload`, and go back to the previous set if either fails."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from certd import failpoints
from certd.deployers import layout
from certd.deployers.base import LEFT_ALONE, DeployResult, Target, file_set, removal_message
from certd.deployers.layout import NodeFS
from certd.deployers.local import CommandResult
from certd.errors import DeployError
from certd.model import IssuedCertificate

Runner = Callable[[str, float], Awaitable[CommandResult]]


class NodeDeployer:
    """Base of the file and ssh deployers: subclasses say how to reach a node."""

    kind = "node"

    def __init__(self, max_parallel: int):
        self._gate = asyncio.Semaphore(max_parallel)

    async def node(self, target: Target) -> tuple[NodeFS, Runner]:
        """The node's filesystem and command runner. Raises DeployError if unreachable."""
        raise NotImplementedError

    async def deploy(self, targets: list[Target], cert: IssuedCertificate
                     ) -> list[DeployResult]:
        return await self._each(targets, lambda t: self._deploy(t, cert))

    async def roll_back(self, targets: list[Target]) -> list[DeployResult]:
        return await self._each(targets, self._roll_back)

    async def remove(self, targets: list[Target]) -> list[DeployResult]:
        return await self._each(targets, self._remove)

    async def close(self) -> None:
        return None

    async def _each(self, targets, work) -> list[DeployResult]:
        async def one(target: Target) -> DeployResult:
            async with self._gate:
                try:
                    return await work(target)
                except DeployError as exc:
                    return DeployResult(target, False, str(exc), kind=exc.kind)
                except OSError as exc:
                    return DeployResult(target, False, f"{self._where(target)}: {exc}",
                                        kind="write")

        return list(await asyncio.gather(*(one(t) for t in targets)))

    def _where(self, target: Target) -> str:
        return f"{self.kind}[{target.node}]"

    async def _deploy(self, target: Target, cert: IssuedCertificate) -> DeployResult:
        fs, run = await self.node(target)
        where = self._where(target)
        try:
            was = await layout.place(fs, target.path, cert.serial, file_set(cert),
                                     target.certificate)
        except layout.Refused as exc:
            return DeployResult(target, False, f"{where}: {exc}", kind=exc.kind)
        except OSError as exc:
            return DeployResult(target, False, f"{where}: write {target.path}: {exc}",
                                kind="write")
        failpoints.hit("deploy:switched")
        outputs = []
        for step, command in (("check", target.check), ("reload", target.reload)):
            if not command:
                continue
            result = await run(command, target.timeout)
            outputs.append(f"$ {command}\n{result.output}")
            if result.ok:
                continue
            rolled_back = False
            if was is not None and was != cert.serial:
                await layout.switch(fs, target.path, was)
                rolled_back = True
                if step == "reload":  # the node may have loaded the new set: load the old
                    await run(target.reload, target.timeout)
            return DeployResult(target, False, f"{where}: {step}: {result.describe()}",
                                rolled_back, "\n".join(outputs), kind=step)
        return DeployResult(target, True, f"{where}: deployed serial {cert.serial}",
                            output="\n".join(outputs))

    async def _roll_back(self, target: Target) -> DeployResult:
        fs, run = await self.node(target)
        where = self._where(target)
        version = await layout.roll_back(fs, target.path)
        if version is None:
            return DeployResult(target, False, f"{where}: nothing to roll back to")
        output = ""
        if target.reload:
            result = await run(target.reload, target.timeout)
            output = result.output
            if not result.ok:
                return DeployResult(target, False, f"{where}: rolled back to {version}, "
                                    f"reload: {result.describe()}", True, output)
        return DeployResult(target, True, f"{where}: rolled back to {version}", True, output)

    async def _remove(self, target: Target) -> DeployResult:
        """Remove what certd placed at the target's path (see layout.remove), reloading only
        if something was removed; what was left alone is named in the message."""
        fs, run = await self.node(target)
        where = self._where(target)
        done = await layout.remove(fs, target.path)
        message = removal_message(where, target.path, done.removed, done.left)
        if done.removed and target.reload:
            result = await run(target.reload, target.timeout)
            if not result.ok:
                return DeployResult(target, False, f"{message}; reload: {result.describe()}",
                                    output=result.output, kind="reload")
            return DeployResult(target, True, message, output=result.output,
                                kind=LEFT_ALONE if done.left else "")
        return DeployResult(target, True, message, kind=LEFT_ALONE if done.left else "")
