"""One node's share of a batch, for every deployer that reaches the node's filesystem and can
run commands there (file: this machine; ssh: SFTP and exec): place every certificate's
versioned set, run each distinct `check` then each distinct `reload` once, and put every set
back on its previous version if one of them fails."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from certd import failpoints
from certd.deployers import layout
from certd.deployers.base import (
    LEFT_ALONE,
    DeployResult,
    Placement,
    Target,
    file_set,
    removal_message,
)
from certd.deployers.haproxy import ChannelError, HAProxyRuntime
from certd.deployers.layout import NodeFS
from certd.deployers.local import CommandResult
from certd.errors import DeployError

Runner = Callable[[str, float], Awaitable[CommandResult]]
Item = TypeVar("Item", Placement, Target)

PLACE_CONCURRENCY = 8  # sets written at once on one node (overlaps SFTP round trips)


def _target(item: Placement | Target) -> Target:
    return item.target if isinstance(item, Placement) else item


def distinct(commands) -> list[str]:
    """Each rendered command once, in order of first appearance (None left out)."""
    return list(dict.fromkeys(c for c in commands if c))


class NodeDeployer:
    """Base of the file and ssh deployers: subclasses say how to reach a node."""

    kind = "node"

    def __init__(self, max_parallel: int):
        self._gate = asyncio.Semaphore(max_parallel)

    async def node(self, target: Target) -> tuple[NodeFS, Runner]:
        """The node's filesystem and command runner. Raises DeployError if unreachable."""
        raise NotImplementedError

    def runtime(self, fs: NodeFS, target: Target) -> HAProxyRuntime | None:
        """The node's HAProxy runtime API, if the group updates certificates through it (after
        any `reload`): each certificate is then handed to the running process, and one it
        refuses fails alone (kind='runtime'), its files put back."""
        return None

    async def deploy(self, batch: list[Placement]) -> list[DeployResult]:
        return await self._by_node(batch, self._deploy)

    async def roll_back(self, targets: list[Target]) -> list[DeployResult]:
        return await self._by_node(targets, self._roll_back)

    async def remove(self, targets: list[Target]) -> list[DeployResult]:
        async def each(node_targets: list[Target]) -> list[DeployResult]:
            return [await self._remove(t) for t in node_targets]
        return await self._by_node(targets, each)

    async def close(self) -> None:
        return None

    async def _by_node(self, items: Sequence[Item],
                       work: Callable[[list[Item]], Awaitable[list[DeployResult]]]
                       ) -> list[DeployResult]:
        """`work` once per node (its items in order), max_parallel nodes at a time; a node
        that cannot be reached fails its items only. Results in the order of `items`."""
        nodes: dict[tuple[str, str, str], list[int]] = {}
        for i, item in enumerate(items):
            t = _target(item)
            nodes.setdefault((t.frontend, t.node, t.address), []).append(i)
        out: list[DeployResult | None] = [None] * len(items)

        async def one(indexes: list[int]) -> None:
            mine = [items[i] for i in indexes]
            async with self._gate:
                try:
                    results = await work(mine)
                except DeployError as exc:
                    results = [DeployResult(_target(x), False, str(exc), kind=exc.kind)
                               for x in mine]
                except OSError as exc:
                    results = [DeployResult(_target(x), False,
                                            f"{self._where(_target(x))}: {exc}", kind="write")
                               for x in mine]
            for i, result in zip(indexes, results):
                out[i] = result

        await asyncio.gather(*(one(ix) for ix in nodes.values()))
        return out  # type: ignore[return-value]

    def _where(self, target: Target) -> str:
        return f"{self.kind}[{target.node}]"

    async def _deploy(self, batch: list[Placement]) -> list[DeployResult]:
        """One node: place every set, then check and reload once; on failure every placed
        set goes back to what it replaced."""
        first = batch[0].target
        fs, run = await self.node(first)
        where = self._where(first)
        out: list[DeployResult | None] = [None] * len(batch)
        was: dict[int, str | None] = {}  # placed: index -> the version it replaced
        gate = asyncio.Semaphore(PLACE_CONCURRENCY)

        async def place(i: int, p: Placement) -> None:
            async with gate:
                try:
                    was[i] = await layout.place(fs, p.target.path, p.cert.serial,
                                                file_set(p.cert), p.target.certificate)
                except layout.Refused as exc:
                    out[i] = DeployResult(p.target, False, f"{where}: {exc}", kind=exc.kind)
                    return
                except OSError as exc:
                    out[i] = DeployResult(p.target, False,
                                          f"{where}: write {p.target.path}: {exc}", kind="write")
                    return
            failpoints.hit("deploy:switched")

        await asyncio.gather(*(place(i, p) for i, p in enumerate(batch)))
        placed = [batch[i] for i in sorted(was)]
        outputs: list[str] = []
        reloaded: list[str] = []
        for step in ("check", "reload"):
            for command in distinct(getattr(p.target, step) for p in placed):
                result = await run(command, first.timeout)
                outputs.append(f"$ {command}\n{result.output}")
                if step == "reload":
                    reloaded.append(command)
                if result.ok:
                    continue
                back = await self._put_back(fs, placed, was, sorted(was))
                for again in reloaded:  # the node may have loaded new sets: load the old
                    await run(again, first.timeout)
                for i in sorted(was):
                    out[i] = DeployResult(batch[i].target, False,
                                          f"{where}: {step}: {result.describe()}",
                                          back[i], "\n".join(outputs), kind=step)
                return out  # type: ignore[return-value]
        refused = await self._push(fs, first, batch, sorted(was))
        via = " (runtime api)" if self.runtime(fs, first) is not None else ""
        for i in sorted(was):
            if i in refused:  # the process kept what it had: so do the files
                back = await self._put_back(fs, [batch[i]], was, [i])
                out[i] = DeployResult(batch[i].target, False, f"{where}: {refused[i]}",
                                      back[i], "\n".join(outputs), kind="runtime")
                continue
            out[i] = DeployResult(batch[i].target, True,
                                  f"{where}: deployed serial {batch[i].cert.serial}{via}",
                                  output="\n".join(outputs))
        return out  # type: ignore[return-value]

    async def _push(self, fs: NodeFS, first: Target, batch: list[Placement],
                    indexes: list[int]) -> dict[int, str]:
        """The runtime API step (if any): {index: why} for the placements not taken."""
        runtime = self.runtime(fs, first)
        if runtime is None or not indexes:
            return {}
        files = {i: runtime.file_of(batch[i].target.path) for i in indexes}
        combined = {i: next(f.content for f in file_set(batch[i].cert)
                            if f.name == "combined.pem") for i in indexes}
        try:
            failed = await runtime.push([(files[i], combined[i]) for i in indexes])
        except ChannelError as exc:
            return {i: f"runtime api: {exc}" for i in indexes}
        return {i: failed[files[i]] for i in indexes if files[i] in failed}

    @staticmethod
    async def _put_back(fs: NodeFS, placed: list[Placement], was: dict[int, str | None],
                        indexes: list[int]) -> dict[int, bool]:
        """Point each placed set back at the version it replaced; True where it did (a set
        with nothing before it, or the same serial again, stays)."""
        back: dict[int, bool] = {}
        for i, p in zip(indexes, placed):
            before = was[i]
            back[i] = before is not None and before != p.cert.serial
            if back[i]:
                await layout.switch(fs, p.target.path, before)
        return back

    async def _roll_back(self, targets: list[Target]) -> list[DeployResult]:
        """One node: every target back to its previous set, then one reload."""
        first = targets[0]
        fs, run = await self.node(first)
        where = self._where(first)
        versions = [await layout.roll_back(fs, t.path) for t in targets]
        output, failure = "", None
        for command in distinct(t.reload for t, v in zip(targets, versions) if v):
            result = await run(command, first.timeout)
            output += result.output
            failure = failure or (None if result.ok else result.describe())
        runtime, unrestored = self.runtime(fs, first), {}
        if runtime is not None:
            unrestored = await runtime.restore([t.path for t, v in zip(targets, versions) if v])
        out = []
        for t, version in zip(targets, versions):
            why = runtime and unrestored.get(runtime.file_of(t.path))
            if version is None:
                out.append(DeployResult(t, False, f"{where}: nothing to roll back to"))
            elif failure:
                out.append(DeployResult(t, False, f"{where}: rolled back to {version}, "
                                        f"reload: {failure}", True, output))
            elif why:
                out.append(DeployResult(t, False, f"{where}: rolled back to {version} on "
                                        f"disk, runtime api: {why}", True, output))
            else:
                out.append(DeployResult(t, True, f"{where}: rolled back to {version}", True,
                                        output))
        return out

    async def _remove(self, target: Target) -> DeployResult:
        """Remove what certd placed at the target's path (see layout.remove), reloading only
        if something was removed; what was left alone is named in the message."""
        fs, run = await self.node(target)
        where = self._where(target)
        done = await layout.remove(fs, target.path)
        message = removal_message(where, target.path, done.removed, done.left)
        runtime = self.runtime(fs, target)
        if done.removed and runtime is not None:
            why = await runtime.forget(target.path)
            if why:
                return DeployResult(target, False, f"{message}; runtime api: {why}",
                                    kind="runtime")
        if done.removed and target.reload:
            result = await run(target.reload, target.timeout)
            if not result.ok:
                return DeployResult(target, False, f"{message}; reload: {result.describe()}",
                                    output=result.output, kind="reload")
            return DeployResult(target, True, message, output=result.output,
                                kind=LEFT_ALONE if done.left else "")
        return DeployResult(target, True, message, kind=LEFT_ALONE if done.left else "")
