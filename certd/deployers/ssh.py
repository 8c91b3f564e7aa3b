"""The SSH deployer: SFTP for the files (the shared versioned layout, 0600 keys, posix
rename), exec for `check` and `reload`, and with `runtime_api` the node's HAProxy runtime
socket through the same connection (no reload). Host keys are always checked against the configured
known_hosts file; an unknown or changed key refuses the push. Connections are reused per node
and closed after a minute idle."""

from __future__ import annotations

import asyncio
import logging
import stat
import time

import asyncssh

from certd.config import SshDeployerConfig
from certd.deployers.base import Target
from certd.deployers.flow import NodeDeployer, Runner
from certd.deployers.haproxy import (
    READ_LIMIT,
    ChannelError,
    HAProxyRuntime,
    UnixSocketChannel,
    node_runtime,
)
from certd.deployers.layout import NodeFS, Refused
from certd.deployers.local import OUTPUT_LIMIT, CommandResult
from certd.errors import DeployError

log = logging.getLogger(__name__)

IDLE = 60.0  # seconds before an unused connection is closed
PREFERRED_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                     "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr"]


class SshFS:
    """NodeFS over one SFTP session. asyncssh errors become OSError."""

    def __init__(self, sftp: asyncssh.SFTPClient):
        self.sftp = sftp

    async def mkdir(self, path: str, mode: int) -> None:
        attrs = asyncssh.SFTPAttrs(permissions=mode)
        try:  # one request in the usual case; makedirs walks every parent
            await self.sftp.mkdir(path, attrs)
        except asyncssh.SFTPFailure:  # OpenSSH says 'Failure' for an existing directory
            kind = await self.kind(path)  # lstat: a symlink is seen as one, never followed
            if kind == "link":
                raise Refused(f"{path} is a symlink; refusing to write keys through it"
                              ) from None
            if kind != "dir":
                raise OSError(f"{path} exists and is not a directory") from None
        except asyncssh.SFTPNoSuchFile:
            await _os(self.sftp.makedirs(path, attrs, exist_ok=True))
        except asyncssh.SFTPError as exc:
            raise OSError(exc.reason) from None

    async def write(self, path: str, data: bytes, mode: int) -> None:
        # created with `mode`; the server's umask can only narrow it, never widen a key's 0600.
        # 'x' (O_CREAT|O_EXCL): a new name only, so a planted symlink is never followed
        attrs = asyncssh.SFTPAttrs(permissions=mode)
        async with await _os(self.sftp.open(path, "xb", attrs)) as f:
            await _os(f.write(data))
            try:
                await f.fsync()  # fsync@openssh.com
            except asyncssh.SFTPOpUnsupported:
                pass

    async def rename(self, src: str, dst: str) -> None:
        await _os(self.sftp.posix_rename(src, dst))

    async def symlink(self, target: str, link: str) -> None:
        await _os(self.sftp.symlink(target, link))

    async def readlink(self, path: str) -> str | None:
        try:
            return await self.sftp.readlink(path)
        except asyncssh.SFTPError:
            return None

    async def kind(self, path: str) -> str | None:
        try:
            attrs = await self.sftp.lstat(path)
        except asyncssh.SFTPNoSuchFile:
            return None
        except asyncssh.SFTPError as exc:
            raise OSError(exc.reason) from None
        mode = attrs.permissions or 0
        if stat.S_ISLNK(mode):
            return "link"
        return "dir" if stat.S_ISDIR(mode) else "file"

    async def listdir(self, path: str) -> list[str]:
        try:
            names = await self.sftp.listdir(path)
        except asyncssh.SFTPNoSuchFile:
            return []
        except asyncssh.SFTPError as exc:
            raise OSError(exc.reason) from None
        return [n for n in names if n not in (".", "..")]

    async def rmtree(self, path: str) -> None:
        kind = await self.kind(path)
        if kind == "dir":
            await _os(self.sftp.rmtree(path))
        elif kind is not None:
            await _os(self.sftp.remove(path))

    async def sync_dir(self, path: str) -> None:
        return None  # SFTP cannot fsync a directory; each rename is still atomic


async def _os(awaitable):
    try:
        return await awaitable
    except asyncssh.SFTPError as exc:
        raise OSError(exc.reason) from None


class _Node:
    def __init__(self, conn: asyncssh.SSHClientConnection, sftp: asyncssh.SFTPClient):
        self.conn, self.sftp, self.fs = conn, sftp, SshFS(sftp)
        self.used = time.monotonic()

    def close(self) -> None:
        self.sftp.exit()
        self.conn.close()


class SshDeployer(NodeDeployer):
    kind = "ssh"

    def __init__(self, config: SshDeployerConfig):
        super().__init__(config.max_parallel)
        self.config = config
        self._nodes: dict[tuple[str, int], _Node] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._runtime_locks: dict[tuple[str, str], asyncio.Lock] = {}

    def _port(self, target: Target) -> int:
        return target.port or self.config.port

    async def node(self, target: Target) -> tuple[NodeFS, Runner]:
        node = await self._node(target)

        async def run(command: str, timeout: float) -> CommandResult:
            return await _run(node.conn, command, timeout)

        return node.fs, run

    async def _node(self, target: Target) -> _Node:
        """The node's kept connection, made (or made again) if needed."""
        key = (target.address, self._port(target))
        self._close_idle()
        async with self._locks.setdefault(key, asyncio.Lock()):
            node = self._nodes.get(key)
            if node is None or node.conn.is_closed():
                node = self._nodes[key] = await self._connect(target)
            node.used = time.monotonic()
            return node

    def runtime(self, fs: NodeFS, target: Target) -> HAProxyRuntime | None:
        """The node's HAProxy runtime API socket through this connection: sshd opens it as
        the login user (it needs `AllowStreamLocalForwarding local` and the socket's group)."""
        where = f"{self._where(target)} {self.config.runtime_api}"

        async def open_socket(path: str):
            try:
                conn = (await self._node(target)).conn
                return await conn.open_unix_connection(path, encoding=None)
            except DeployError as exc:
                raise ChannelError(str(exc)) from None
            except asyncssh.ChannelOpenError as exc:
                raise ChannelError(f"{path}: sshd refused the socket: {exc.reason}") from None

        async def read(path: str) -> bytes | None:
            sftp = (await self._node(target)).sftp
            try:
                async with await sftp.open(path, "rb") as f:
                    return await f.read(READ_LIMIT)
            except asyncssh.SFTPNoSuchFile:
                return None
            except asyncssh.SFTPError as exc:
                raise OSError(f"{path}: {exc.reason}") from None

        return node_runtime(
            self.config, target, fs=fs, read=read, locks=self._runtime_locks,
            channel=lambda path: UnixSocketChannel(path, open=open_socket, where=where))

    async def _connect(self, target: Target) -> _Node:
        host, port = target.address, self._port(target)
        where = f"ssh[{target.node}]"
        try:
            conn = await asyncio.wait_for(asyncssh.connect(
                host, port, username=self.config.user,
                client_keys=[str(self.config.key_file)],
                known_hosts=str(self.config.known_hosts),
                config=(), agent_path=None, agent_forwarding=False,
                # AES-GCM runs in the CPU's AES instructions; asyncssh's chacha20-poly1305
                # costs two cipher contexts per packet, which dominates a fleet-wide push
                encryption_algs=PREFERRED_CIPHERS,
                connect_timeout=self.config.connect_timeout.total_seconds(),
            ), self.config.connect_timeout.total_seconds() + 5)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise DeployError(
                f"{where}: host key of {host}:{port} not accepted by "
                f"{self.config.known_hosts}: {exc.reason}; nothing written",
                node=target.node, kind="host_key") from None
        except asyncssh.PermissionDenied as exc:
            raise DeployError(f"{where}: authentication as {self.config.user} refused: "
                              f"{exc.reason}", node=target.node, kind="auth") from None
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise DeployError(f"{where}: cannot connect to {host}:{port}: {reason}",
                              node=target.node, transient=True, kind="unreachable") from None
        try:
            sftp = await conn.start_sftp_client()
        except asyncssh.Error as exc:
            conn.close()
            raise DeployError(f"{where}: sftp: {exc.reason}", node=target.node,
                              kind="unreachable") from None
        return _Node(conn, sftp)

    def _close_idle(self) -> None:
        now = time.monotonic()
        for key, node in list(self._nodes.items()):
            if now - node.used > IDLE:
                node.close()
                del self._nodes[key]

    async def close(self) -> None:
        for node in self._nodes.values():
            node.close()
            await node.conn.wait_closed()
        self._nodes.clear()


async def _run(conn: asyncssh.SSHClientConnection, command: str, timeout: float
               ) -> CommandResult:
    try:
        result = await conn.run(command, check=False, timeout=timeout,
                                stderr=asyncssh.STDOUT)
    except asyncssh.TimeoutError:
        return CommandResult(command, None, f"timed out after {timeout:g}s")
    except (asyncssh.Error, OSError) as exc:
        return CommandResult(command, None, f"ssh: {getattr(exc, 'reason', exc)}")
    output = result.stdout if isinstance(result.stdout, str) else ""
    return CommandResult(command, result.exit_status, output[:OUTPUT_LIMIT])
