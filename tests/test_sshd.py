"""Smoke test of the lab's OpenSSH servers (tests/lab/sshd.py), driven with asyncssh the
way certd's SSH deployer will: key auth as root, strict known_hosts, SFTP upload +
posix_rename, the reload command run remotely."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import asyncssh
import pytest

from tests.lab import Lab, SshLab, make_client_key, wait_until
from tests.lab.procs import running

pytestmark = pytest.mark.lab


async def _run(
    ssh: SshLab, node: str, command: str, **options: object
) -> asyncssh.SSHCompletedProcess:
    async with asyncssh.connect(**{**ssh.connect_options(node), **options}) as conn:
        return await asyncio.wait_for(conn.run(command, check=False), 10)


def test_layout(ssh_nodes: SshLab, lab: Lab) -> None:
    assert set(ssh_nodes.servers) == {"fe1", "fe2"}
    for node in ("fe1", "fe2"):
        server = ssh_nodes.servers[node]
        assert server.address == lab.node(node).address
        assert server.alive() and server.pid
        assert server.known_hosts_line() == (
            f"[{server.address}]:{server.port} " + " ".join(server.host_key_public.split()[:2])
        )
        assert server.known_hosts_line() in ssh_nodes.known_hosts.read_text().splitlines()
    assert stat.S_IMODE(os.stat(ssh_nodes.key_file).st_mode) == 0o600
    assert ssh_nodes.key_file.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert ssh_nodes.client_key.public_line.startswith("ssh-ed25519 AAAA")
    wrong = ssh_nodes.wrong_known_hosts
    assert wrong is not None and ssh_nodes.wrong_node == "fe2"
    lines = wrong.read_text().splitlines()
    assert ssh_nodes.servers["fe1"].known_hosts_line() in lines
    assert ssh_nodes.servers["fe2"].known_hosts_line() not in lines
    assert any(line.startswith(f"[127.0.0.3]:{ssh_nodes.port('fe2')} ") for line in lines)


async def test_echo_on_both_nodes(ssh_nodes: SshLab) -> None:
    for node in ("fe1", "fe2"):
        result = await _run(ssh_nodes, node, "echo ok")
        assert (result.exit_status, result.stdout) == (0, "ok\n"), result.stderr


async def test_sftp_upload_rename_and_reload(ssh_nodes: SshLab, lab: Lab) -> None:
    target = lab.cert_dir("fe1", "sshsmoke")
    parent = target.parent
    final = parent / "sshsmoke.txt"
    temporary = parent / ".sshsmoke.txt.tmp"
    final.write_text("old\n")  # posix_rename must replace an existing file
    reload_command = lab.reload_command.format(node="fe1")
    error_log = lab.frontends["fe1"].error_log_path
    reloads_before = error_log.read_text().count("reconfiguring")
    try:
        async with asyncssh.connect(**ssh_nodes.connect_options("fe1")) as conn:
            async with conn.start_sftp_client() as sftp:
                async with sftp.open(str(temporary), "w") as remote:
                    await remote.write("new\n")
                await sftp.chmod(str(temporary), 0o600)
                await sftp.posix_rename(str(temporary), str(final))
            result = await asyncio.wait_for(conn.run(reload_command, check=False), 10)
        assert result.exit_status == 0, (result.stdout, result.stderr)
        assert final.read_text() == "new\n"
        assert stat.S_IMODE(final.stat().st_mode) == 0o600
        assert not temporary.exists()
        # nginx logs "signal 1 (SIGHUP) received from <pid>, reconfiguring" for the reload.
        wait_until(
            lambda: error_log.read_text().count("reconfiguring") > reloads_before,
            5,
            what="fe1 to log the reload",
        )
    finally:
        final.unlink(missing_ok=True)
        temporary.unlink(missing_ok=True)


async def test_wrong_known_hosts_is_refused(ssh_nodes: SshLab) -> None:
    wrong = ssh_nodes.wrong_known_hosts
    assert wrong is not None
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await _run(ssh_nodes, "fe2", "echo never", known_hosts=str(wrong))
    # The other node's entry in the same file is right.
    result = await _run(ssh_nodes, "fe1", "echo ok", known_hosts=str(wrong))
    assert result.stdout == "ok\n"


async def test_unknown_client_key_is_refused(ssh_nodes: SshLab, tmp_path: Path) -> None:
    stranger = make_client_key(tmp_path)
    with pytest.raises(asyncssh.PermissionDenied):
        await _run(ssh_nodes, "fe1", "echo never", client_keys=[str(stranger.private_path)])


async def test_stopped_node_refuses_then_comes_back(ssh_nodes: SshLab) -> None:
    server = ssh_nodes.servers["fe2"]
    port, host_key, old_pid = server.port, server.host_key_public, server.pid
    # An open session on the node, to see that stop() ends it too.
    conn = await asyncssh.connect(**ssh_nodes.connect_options("fe2"))
    try:
        process = await conn.create_process("sleep 30")
        wait_until(server.session_pids, 5, what="the session's processes")
        sessions = server.session_pids()
        ssh_nodes.stop("fe2")
        try:
            assert not server.alive()
            await asyncio.wait_for(process.wait_closed(), 5)
            # Killed, not finished: the command dies first (-1 with exit_signal TERM),
            # or the connection drops before the status arrives (None).
            assert process.exit_status in (None, -1)
            assert not [pid for pid in sessions if running(pid)]
            with pytest.raises(OSError):
                await _run(ssh_nodes, "fe2", "echo never")
        finally:
            ssh_nodes.start("fe2")
    finally:
        conn.close()
    assert server.alive() and server.pid != old_pid
    assert (server.port, server.host_key_public) == (port, host_key)
    result = await _run(ssh_nodes, "fe2", "echo back")
    assert result.stdout == "back\n"


async def test_fleet_on_many_addresses(ssh_fleet) -> None:
    fleet: SshLab = ssh_fleet(3)
    assert [s.address for s in fleet] == ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
    results = await asyncio.gather(*(_run(fleet, name, f"echo {name}") for name in fleet.servers))
    assert [r.stdout for r in results] == ["n1\n", "n2\n", "n3\n"]
    fleet.stop()
    assert not any(s.alive() for s in fleet)
