"""The deployed layout, written once for every deployer that can reach a node's filesystem
(local files, SFTP): versioned directories switched by one symlink rename.

Under the configured path P (say /etc/nginx/certs/portal):

    P -> .portal.d/<serial>            a relative symlink, replaced atomically
    .portal.d/<serial>/*.pem           the five files, each written, fsynced, then renamed in
    .portal.d/.previous -> <serial>    what P pointed at before: the rollback target
    .portal.d/<previous serial>/       kept for rollback; older versions are pruned
    .portal.d/.certd                   the marker: "managed by certd; certificate portal"

A crash at any point leaves P pointing at a complete set: the new directory is filled under a
temporary name, synced, renamed, and only then does the symlink move.

What certd owns, and so may write, chmod or delete, is the last components only: P, .NAME.d,
its entries and their files; the parents are the operator's. A symlink where certd expects its
own directory (.NAME.d, a version directory) is refused before anything is written
(`Refused`), so keys never land in, and nothing is deleted from, wherever it points. Removal
deletes only what carries certd's marker (see `remove`).
"""

from __future__ import annotations

import asyncio
import posixpath
import secrets
from dataclasses import dataclass, field
from typing import Protocol

from certd import failpoints
from certd.deployers.base import PemFile

PREVIOUS = ".previous"
LEGACY = "legacy"  # a plain directory found at P on the first deploy: the operator's set
MARKER = ".certd"


def marker_text(certificate: str) -> str:
    return f"managed by certd; certificate {certificate}\n"


class Refused(OSError):
    """Something certd expects to own (.NAME.d, a version directory, a file of the set) is a
    symlink or of the wrong kind: nothing is written or removed through it."""

    kind = "refused"


class NodeFS(Protocol):
    """A node's filesystem, as the layout needs it. Paths are POSIX strings."""

    async def mkdir(self, path: str, mode: int) -> None:
        """Create with parents; an existing directory is fine; `mode` applies to the last.
        Raises Refused if the last component is a symlink (never followed, never chmodded)."""

    async def write(self, path: str, data: bytes, mode: int) -> None:
        """Create a new file with exactly `mode`, write, flush to disk. An existing name (a
        planted symlink included) is an error: nothing is followed or truncated."""

    async def rename(self, src: str, dst: str) -> None:
        """POSIX rename: atomic, replaces an existing file or symlink at `dst`."""

    async def symlink(self, target: str, link: str) -> None: ...

    async def readlink(self, path: str) -> str | None:
        """The link's target, or None if `path` is absent or not a symlink."""

    async def kind(self, path: str) -> str | None:
        """'link', 'dir', 'file' or None (absent); symlinks are not followed."""

    async def listdir(self, path: str) -> list[str]: ...

    async def rmtree(self, path: str) -> None:
        """Remove a file, link or directory tree; absent is fine. A link is removed itself,
        never what it points at; links inside the tree are not followed."""

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


async def place(fs: NodeFS, path: str, version: str, files: list[PemFile],
                certificate: str | None = None) -> str | None:
    """Write `files` as `version` of P and point P at it. Returns the version P pointed at
    before (the rollback target), or None. Raises Refused, with nothing written, if .NAME.d
    or the version directory is a symlink or not a directory."""
    versions = versions_dir(path)
    await _refuse_foreign(fs, versions)
    await _refuse_foreign(fs, posixpath.join(versions, version))
    await fs.mkdir(versions, 0o711)  # the node's server traverses it; files keep their modes
    await _mark(fs, versions, certificate or posixpath.basename(path.rstrip("/")))
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


@dataclass
class Removal:
    """What `remove` did: the paths it deleted, and what it left alone and why."""

    removed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


async def remove(fs: NodeFS, path: str) -> Removal:
    """Remove P and every version, if they are certd's; leave anything else alone.

    .NAME.d is certd's if it is a real directory (not a symlink) holding the marker, or, for
    sets placed before the marker existed, if it has exactly certd's shape: P a symlink to
    `.NAME.d/<entry>` with that entry a directory, and only directories (versions, legacy,
    .tmp-* leftovers) and the `.previous` symlink inside. P is removed only if it is a
    symlink into a .NAME.d that is certd's. A plain directory, a file or a foreign symlink at
    P is left alone and reported, as is a .NAME.d that is not certd's."""
    out = Removal()
    versions = versions_dir(path)
    mine, why = await _owned(fs, path)
    kind = await fs.kind(path)
    if kind == "link" and mine and _version_in(path, await fs.readlink(path)) is not None:
        await fs.rmtree(path)  # the link itself
        out.removed.append(path)
    elif kind is not None:
        out.left.append(f"{path} is {_a(kind)} certd did not make")
    if mine:
        legacy = posixpath.join(versions, LEGACY)
        if await fs.kind(legacy) == "dir" and await fs.kind(path) is None:
            await fs.rename(legacy, path)  # what the operator had before certd: given back
            out.left.append(f"{path} restored to the set that was there before certd")
        await fs.rmtree(versions)
        out.removed.append(versions)
    elif why:
        out.left.append(why)
    return out


async def _owned(fs: NodeFS, path: str) -> tuple[bool, str | None]:
    """Whether .NAME.d is certd's; if not, why not (None: it does not exist)."""
    versions = versions_dir(path)
    kind = await fs.kind(versions)
    if kind is None:
        return False, None
    if kind != "dir":
        return False, f"{versions} is {_a(kind)} certd did not make"
    if await fs.kind(posixpath.join(versions, MARKER)) == "file":
        return True, None
    not_ours = f"{versions} has no certd marker and is not certd's layout"
    entries = await fs.listdir(versions)
    if _version_in(path, await fs.readlink(path)) not in entries:
        return False, not_ours
    for entry in entries:
        kind = await fs.kind(posixpath.join(versions, entry))
        if (entry == PREVIOUS and kind == "link") or entry.startswith(".tmp-"):
            continue
        if kind == "dir" and not entry.startswith("."):
            continue
        return False, not_ours
    return True, None


def _version_in(path: str, link: str | None) -> str | None:
    """The version a link target names if it is `.NAME.d/<version>` (what certd writes)."""
    if not link:
        return None
    parts = link.split("/")
    if (len(parts) == 2 and parts[0] == posixpath.basename(versions_dir(path))
            and parts[1] not in ("", ".", "..")):
        return parts[1]
    return None


def _a(kind: str) -> str:
    return {"link": "a symlink", "dir": "a directory"}.get(kind, "a file")


async def _refuse_foreign(fs: NodeFS, directory: str) -> None:
    kind = await fs.kind(directory)
    if kind == "link":
        raise Refused(f"{directory} is a symlink; refusing to write keys through it")
    if kind not in (None, "dir"):
        raise Refused(f"{directory} is not a directory; refusing to write keys there")


async def _mark(fs: NodeFS, versions: str, certificate: str) -> None:
    """Write the marker once (through a fresh name and a rename: a planted link at the
    marker's name is replaced, never followed)."""
    marker = posixpath.join(versions, MARKER)
    if await fs.kind(marker) == "file":
        return
    tmp = posixpath.join(versions, f".tmp-certd-{secrets.token_hex(4)}")  # pruned if left
    await fs.write(tmp, marker_text(certificate).encode("utf-8"), 0o644)
    await fs.rename(tmp, marker)


async def _link(fs: NodeFS, target: str, link: str) -> None:
    tmp = f"{link}.tmp-{secrets.token_hex(4)}"
    await fs.symlink(target, tmp)
    await fs.rename(tmp, link)


async def _adopt_legacy(fs: NodeFS, path: str, versions: str) -> str:
    """A plain directory at P (placed by hand or another tool) becomes the version 'legacy',
    so the first deploy can still roll back to it."""
    legacy = posixpath.join(versions, LEGACY)
    await fs.rmtree(legacy)
    await fs.rename(path, legacy)
    return LEGACY


async def _prune(fs: NodeFS, versions: str, keep: set[str | None]) -> None:
    """Keep the current and the previous version only, and `legacy` (the operator's, given
    back at removal); drop what a crash left half-written (.tmp-*: never pointed at)."""
    for entry in await fs.listdir(versions):
        if entry.startswith(".tmp-") or (not entry.startswith(".")
                                          and entry not in keep | {LEGACY}):
            await fs.rmtree(posixpath.join(versions, entry))
