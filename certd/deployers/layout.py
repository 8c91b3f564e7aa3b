"""The deployed layout, written once for every deployer that can reach a node's filesystem
(local files, SFTP): versioned directories switched by one symlink rename.

Under the configured path P (say /etc/nginx/certs/portal):

    P -> .portal.d/<serial>            a relative symlink, replaced atomically
    .portal.d/<serial>/*.pem           the five files, each written, fsynced, then renamed in
    .portal.d/.previous -> <serial>    what P pointed at before: the rollback target
    .portal.d/<previous serial>/       kept for rollback; older versions are pruned

A crash at any point leaves P pointing at a complete set: the new directory is filled under a
temporary name, synced, renamed, and only then does the symlink move.
"""

from __future__ import annotations

import asyncio
import posixpath
import secrets
from typing import Protocol

from certd import failpoints
from certd.deployers.base import PemFile

PREVIOUS = ".previous"


class NodeFS(Protocol):
    """A node's filesystem, as the layout needs it. Paths are POSIX strings."""

    async def mkdir(self, path: str, mode: int) -> None:
        """Create with parents; an existing directory is fine; `mode` applies to the last."""

    async def write(self, path: str, data: bytes, mode: int) -> None:
        """Create or truncate with exactly `mode`, write, flush to disk."""

    async def rename(self, src: str, dst: str) -> None:
        """POSIX rename: atomic, replaces an existing file or symlink at `dst`."""

    async def symlink(self, target: str, link: str) -> None: ...

    async def readlink(self, path: str) -> str | None:
        """The link's target, or None if `path` is absent or not a symlink."""

    async def kind(self, path: str) -> str | None:
        """'link', 'dir', 'file' or None (absent); symlinks are not followed."""

    async def listdir(self, path: str) -> list[str]: ...

    async def rmtree(self, path: str) -> None:
        """Remove a file, link or directory tree; absent is fine."""

    async def sync_dir(self, path: str) -> None:
        """Make renames in `path` durable (a no-op where the transport cannot)."""


def versions_dir(path: str) -> str:
    parent, name = posixpath.split(path.rstrip("/"))
    return posixpath.join(parent, f".{name}.d")


async def current(fs: NodeFS, path: str) -> str | None:
    """The version P points at, or None."""
    target = await fs.readlink(path)
    return posixpath.basename(target) if target else None


async def previous(fs: NodeFS, path: str) -> str | None:
    """The version P pointed at before the last switch, if it still exists."""
    target = await fs.readlink(posixpath.join(versions_dir(path), PREVIOUS))
    if not target:
        return None
    version = posixpath.basename(target)
    kind = await fs.kind(posixpath.join(versions_dir(path), version))
    return version if kind == "dir" else None


async def place(fs: NodeFS, path: str, version: str, files: list[PemFile]) -> str | None:
    """Write `files` as `version` of P and point P at it. Returns the version P pointed at
    before (the rollback target), or None."""
    versions = versions_dir(path)
    await fs.mkdir(versions, 0o711)  # the node's server traverses it; files keep their modes
    tmp = posixpath.join(versions, f".tmp-{version}-{secrets.token_hex(4)}")
    await fs.mkdir(tmp, 0o711)
    # written concurrently (pipelined over SFTP); the failpoint fires with the set half written
    await asyncio.gather(*(fs.write(posixpath.join(tmp, f.name), f.content.encode("ascii"),
                                    f.mode) for f in files[:2]))
    failpoints.hit("deploy:writing")
    await asyncio.gather(*(fs.write(posixpath.join(tmp, f.name), f.content.encode("ascii"),
                                    f.mode) for f in files[2:]))
    await fs.sync_dir(tmp)
    final = posixpath.join(versions, version)
    was = await current(fs, path)
    if was == version and await fs.kind(final) == "dir":
        # the live set again (a redeploy of the same certificate): swap file by file, each
        # rename atomic, so P never points at a missing directory, and keep what was before
        for f in files:
            await fs.rename(posixpath.join(tmp, f.name), posixpath.join(final, f.name))
        await fs.sync_dir(final)
        await fs.rmtree(tmp)
        return version
    await fs.rmtree(final)
    await fs.rename(tmp, final)
    await fs.sync_dir(versions)
    if await fs.kind(path) in ("dir", "file"):
        was = await _adopt_legacy(fs, path, versions)
    await switch(fs, path, version, remember=was)
    await _prune(fs, versions, keep={version, was})
    return was


async def switch(fs: NodeFS, path: str, version: str, *, remember: str | None = None) -> None:
    """Point P at an existing version, atomically; `remember` becomes the rollback target."""
    versions = versions_dir(path)
    if remember and remember != version:
        await _link(fs, remember, posixpath.join(versions, PREVIOUS))
    await _link(fs, posixpath.join(posixpath.basename(versions), version), path)
    await fs.sync_dir(posixpath.dirname(path) or ".")


async def roll_back(fs: NodeFS, path: str) -> str | None:
    """Point P back at the previous version; returns it, or None if there is none."""
    version = await previous(fs, path)
    if version is None:
        return None
    await _link(fs, posixpath.join(posixpath.basename(versions_dir(path)), version), path)
    await fs.sync_dir(posixpath.dirname(path) or ".")
    return version


async def remove(fs: NodeFS, path: str) -> None:
    """Remove P and every version."""
    await fs.rmtree(path)
    await fs.rmtree(versions_dir(path))


async def _link(fs: NodeFS, target: str, link: str) -> None:
    tmp = f"{link}.tmp-{secrets.token_hex(4)}"
    await fs.symlink(target, tmp)
    await fs.rename(tmp, link)


async def _adopt_legacy(fs: NodeFS, path: str, versions: str) -> str:
    """A plain directory at P (placed by hand or another tool) becomes the version 'legacy',
    so the first deploy can still roll back to it."""
    legacy = posixpath.join(versions, "legacy")
    await fs.rmtree(legacy)
    await fs.rename(path, legacy)
    return "legacy"


async def _prune(fs: NodeFS, versions: str, keep: set[str | None]) -> None:
    """Keep the current and the previous version only; drop what a crash left half-written
    (.tmp-*: never pointed at)."""
    for entry in await fs.listdir(versions):
        if entry.startswith(".tmp-") or (not entry.startswith(".") and entry not in keep):
            await fs.rmtree(posixpath.join(versions, entry))
