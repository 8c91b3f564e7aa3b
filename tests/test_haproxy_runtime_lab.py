"""Reload-free deploys through HAProxy's runtime API (certd/deployers/haproxy.py), against a
real haproxy (Debian's 2.6) of the test's own, configured by deploy/haproxy/certd.cfg (its
paths and ports moved to loopback and a temp dir): a TLS frontend whose crt-list names
certd's `<path>/combined.pem` files, and an admin socket.
A file deployer group with `runtime_api` and no `reload`, and an SSH deployer reaching the
socket through a real sshd."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from certd import verify
from certd.config import FileDeployerConfig, SshDeployerConfig
from certd.deployers.base import Placement, Target
from certd.deployers.file import FileDeployer
from certd.deployers.haproxy import UnixSocketChannel, clean, parse_show_ssl_cert
from certd.deployers.ssh import SshDeployer
from certd.keys import cert_info
from certd.model import IssuedCertificate
from tests.lab.procs import ManagedProcess, free_port, start_time
from tests.lab.sshd import SshServer, make_client_key, write_known_hosts

pytestmark = pytest.mark.lab  # haproxy missing fails, never skips: scripts/test installs it

SNIPPET = Path(__file__).parent.parent / "deploy" / "haproxy" / "certd.cfg"
LAB_PARTS = """\
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s

"""


def config(root: Path, port: int) -> str:
    """deploy/haproxy/certd.cfg itself, its paths and ports moved into the test's directory,
    with the defaults and the `app` backend a site would add."""
    text = SNIPPET.read_text()
    for old, new in (("/run/haproxy/admin.sock", f"{root}/admin.sock"),
                     ("/etc/haproxy/certd.crt-list", f"{root}/crt-list.txt"),
                     ("bind :443 ", f"bind 127.0.0.1:{port} "),
                     ("bind :80\n", f"bind 127.0.0.1:{free_port()}\n"),
                     ("CERTD1_HOST:8402", f"127.0.0.1:{free_port()}"),
                     ("CERTD2_HOST:8402", f"127.0.0.1:{free_port()}"),
                     ("CERTD1_HOST:8403", f"127.0.0.1:{free_port()}"),
                     ("CERTD2_HOST:8403", f"127.0.0.1:{free_port()}")):
        assert old in text, old
        text = text.replace(old, new)
    text = text.replace("\nfrontend http\n", "\n" + LAB_PARTS + "frontend http\n", 1)
    return text + "\nbackend app\n    http-request return status 200\n"


def issued(ca: trustme.CA, name: str, *, key_of: trustme.LeafCert | None = None
           ) -> IssuedCertificate:
    leaf = ca.issue_cert(f"{name}.test")
    cert_pem = leaf.cert_chain_pems[0].bytes().decode()
    info = cert_info(x509.load_pem_x509_certificate(cert_pem.encode()))
    return IssuedCertificate(
        name=name, serial=info.serial, domains=info.domains, not_before=info.not_before,
        not_after=info.not_after, cert_pem=cert_pem,
        chain_pem="".join(p.bytes().decode() for p in leaf.cert_chain_pems[1:]),
        key_pem=(key_of or leaf).private_key_pem.bytes().decode(),
        fingerprint_sha256=info.fingerprint_sha256,
    )


class Node:
    """One haproxy, started and stopped by PID, and the file deployer groups that feed it."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.certs = root / "certs"
        self.crt_list = root / "crt-list.txt"
        self.socket = root / "admin.sock"
        (root / "haproxy.cfg").write_text(config(root, self.port))
        self.process = ManagedProcess("haproxy-runtime",
                                      ["haproxy", "-db", "-f", str(root / "haproxy.cfg")],
                                      root / "haproxy.log", cwd=root)

    def path(self, name: str) -> str:
        return str(self.certs / name)

    def target(self, name: str) -> Target:
        return Target.render(frontend="lb", node="hx1", address="127.0.0.1", certificate=name,
                             path=str(self.certs / "{certificate}"), check=None, reload=None,
                             timeout=10)

    def deployer(self, *, runtime: bool = True) -> FileDeployer:
        extra = ({"runtime_api": str(self.socket), "runtime_crt_list": str(self.crt_list)}
                 if runtime else {})
        return FileDeployer(FileDeployerConfig(type="file", path=str(self.certs / "x"),
                                               **extra))

    def start(self) -> None:
        self.process.start()
        self.process.wait_tcp([("127.0.0.1", self.port)])

    def ask(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(command.encode())
            out = b""
            while data := s.recv(65536):
                out += data
        return out.decode()

    def info(self) -> dict[str, str]:
        return dict(line.split(": ", 1) for line in self.ask("show info\n").splitlines()
                    if ": " in line)

    async def serves(self, name: str, serial: str, timeout: float = 5) -> tuple[bool, str]:
        return await verify.wait_serving("127.0.0.1", self.port, f"{name}.test", serial,
                                         timeout)

    def restart(self) -> None:
        self.process.stop()
        self.start()


@pytest.fixture
def node():
    root = Path(tempfile.mkdtemp(prefix="hx-", dir="/tmp"))  # a short unix socket path
    try:
        made = Node(root)
        yield made
    finally:
        made.process.stop()  # by its PID (idempotent)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def started(node: Node, first: IssuedCertificate) -> None:
    """The node as an operator sets it up: a first set placed by certd (no runtime API yet),
    listed in the crt-list by its stable path, then haproxy started."""
    [r] = await node.deployer(runtime=False).deploy([Placement(node.target(first.name), first)])
    assert r.ok, r.message
    node.crt_list.write_text(f"{node.path(first.name)}/combined.pem\n")
    node.start()


async def test_new_and_renewed_certificates_are_served_without_a_reload(node, ca):
    a1 = issued(ca, "a")
    await started(node, a1)
    try:
        assert (await node.serves("a", a1.serial))[0]
        pid, began = node.process.pid, start_time(node.process.pid)
        uptime = int(node.info()["Uptime_sec"])
        a2, b1 = issued(ca, "a"), issued(ca, "b")
        deployer = node.deployer()
        results = await deployer.deploy([Placement(node.target("a"), a2),
                                         Placement(node.target("b"), b1)])
        assert [r.ok for r in results] == [True, True], [r.message for r in results]
        assert "(runtime api)" in results[0].message
        # verified like any deploy: the served serial, by a TLS handshake with SNI
        assert await node.serves("a", a2.serial) == (True, "")
        assert await node.serves("b", b1.serial) == (True, "")
        # no reload: the same process, never re-executed, its uptime not reset
        assert node.process.alive() and node.process.pid == pid
        assert start_time(pid) == began
        info = node.info()
        assert int(info["Pid"]) == pid and int(info["Uptime_sec"]) >= uptime
        loaded = parse_show_ssl_cert(node.ask("show ssl cert\n"))
        assert loaded.transaction is None
        assert f"{node.path('b')}/combined.pem" in loaded.files
        # the files for the next restart: the new one listed, both sets on disk
        assert node.crt_list.read_text().splitlines() == [
            f"{node.path('a')}/combined.pem", f"{node.path('b')}/combined.pem"]
        assert Path(node.path("a")).resolve().name == a2.serial
        # the same deploy again is a no-op for haproxy (set + commit of the same set)
        again = await deployer.deploy([Placement(node.target("b"), b1)])
        assert again[0].ok, again[0].message
        assert node.crt_list.read_text().count("/b/combined.pem") == 1

        node.restart()  # what the disk holds is what was served
        assert node.process.pid != pid
        assert await node.serves("a", a2.serial) == (True, "")
        assert await node.serves("b", b1.serial) == (True, "")
    finally:
        node.process.stop()


async def test_a_set_haproxy_refuses_is_rolled_back_alone(node, ca):
    a1 = issued(ca, "a")
    await started(node, a1)
    try:
        pid = node.process.pid
        other = ca.issue_cert("x.test")
        bad = issued(ca, "a", key_of=other)  # the key does not match the certificate
        c1 = issued(ca, "c")
        new_bad = issued(ca, "d", key_of=other)  # a new one refused: no store left behind
        results = await node.deployer().deploy([
            Placement(node.target("a"), bad), Placement(node.target("c"), c1),
            Placement(node.target("d"), new_bad)])
        a, c, d = results
        assert c.ok, c.message
        assert not a.ok and a.kind == "runtime" and a.rolled_back
        assert "commit ssl cert" in a.message and "inconsistencies" in a.message
        assert len(a.message) < 400 and "PRIVATE KEY" not in a.message + a.output
        assert not d.ok and d.kind == "runtime"
        assert node.process.pid == pid
        assert await node.serves("a", a1.serial) == (True, "")
        assert await node.serves("c", c1.serial) == (True, "")
        loaded = parse_show_ssl_cert(node.ask("show ssl cert\n"))
        assert loaded.transaction is None  # the refused commit was aborted
        assert f"{node.path('d')}/combined.pem" not in loaded.files
        # the disk agrees: a back on its first set, c listed, d not
        assert Path(node.path("a")).resolve().name == a1.serial
        listed = node.crt_list.read_text()
        assert "/c/combined.pem" in listed and "/d/" not in listed

        node.restart()
        assert await node.serves("a", a1.serial) == (True, "")
        assert await node.serves("c", c1.serial) == (True, "")
    finally:
        node.process.stop()


async def test_roll_back_and_remove_go_through_the_runtime_api(node, ca):
    a1 = issued(ca, "a")
    await started(node, a1)
    try:
        pid = node.process.pid
        deployer = node.deployer()
        a2, e1 = issued(ca, "a"), issued(ca, "e")
        results = await deployer.deploy([Placement(node.target("a"), a2),
                                         Placement(node.target("e"), e1)])
        assert all(r.ok for r in results)
        assert await node.serves("a", a2.serial) == (True, "")
        # what the rollout does when verification fails: back to the previous set, served
        [back] = await deployer.roll_back([node.target("a")])
        assert back.ok and back.rolled_back, back.message
        assert await node.serves("a", a1.serial) == (True, "")
        # removal: out of the crt-list file and out of the process
        [gone] = await deployer.remove([node.target("e")])
        assert gone.ok, gone.message
        assert "/e/" not in node.crt_list.read_text()
        assert (f"{node.path('e')}/combined.pem"
                not in parse_show_ssl_cert(node.ask("show ssl cert\n")).files)
        assert node.process.pid == pid
        node.restart()  # haproxy starts: the crt-list names no removed file
        assert await node.serves("a", a1.serial) == (True, "")
    finally:
        node.process.stop()


async def test_unreachable_api_fails_the_placements_and_puts_the_files_back(node, ca):
    a1 = issued(ca, "a")
    [r] = await node.deployer(runtime=False).deploy([Placement(node.target("a"), a1)])
    assert r.ok
    a2 = issued(ca, "a")  # no haproxy running: nothing listens on the socket
    [r] = await node.deployer().deploy([Placement(node.target("a"), a2)])
    assert not r.ok and r.kind == "runtime" and r.rolled_back
    assert "runtime api" in r.message and str(node.socket) in r.message
    assert Path(node.path("a")).resolve().name == a1.serial


async def test_channel_answers_are_bounded_and_cleaned(node, ca):
    await started(node, issued(ca, "a"))
    try:
        small = UnixSocketChannel(str(node.socket), limit=64)
        with pytest.raises(OSError, match="longer than 64 bytes"):
            await small.send("show info\n", 5)
        answer = await UnixSocketChannel(str(node.socket)).send("bogus\x1b[31m\n", 5)
        shown = clean(answer + "\x1b[2J\x00")
        assert len(shown) <= 200 and all(" " <= ch <= "~" for ch in shown)
    finally:
        node.process.stop()


SSHD_SOCKETS = "AllowTcpForwarding local\nAllowStreamLocalForwarding local"


@pytest.fixture
def sshd(node):
    """A real sshd on 127.0.0.1 whose login may open unix sockets on the node (sshd checks
    socket paths against the same permission as TCP local forwarding: the lines the README
    gives for the certd user), next to the node's haproxy."""
    client = make_client_key(node.root / "client")
    server = SshServer(node.root / "sshd", "127.0.0.1", client_pubkey=client.public_line)
    sshd_allows(server, SSHD_SOCKETS)
    with server.start():
        yield server, client, write_known_hosts(node.root / "known_hosts", [server])


def sshd_allows(server: SshServer, lines: str) -> None:
    text = server.config_path.read_text()
    assert "AllowTcpForwarding no\n" in text
    server.config_path.write_text(text.replace("AllowTcpForwarding no\n", lines + "\n"))


def ssh_deployer(node: Node, sshd) -> SshDeployer:
    server, client, known_hosts = sshd
    return SshDeployer(SshDeployerConfig(
        type="ssh", user="root", port=server.port, key_file=client.private_path,
        known_hosts=known_hosts, path=str(node.certs / "x"), connect_timeout="3s",
        runtime_api=str(node.socket), runtime_crt_list=str(node.crt_list)))


async def test_runtime_api_over_the_ssh_connection(node, ca, sshd):
    """The SSH deployer reaches the node's admin socket through its own connection: a new and
    a renewed certificate served with no reload, a refused one rolled back alone."""
    a1 = issued(ca, "a")
    await started(node, a1)
    deployer = ssh_deployer(node, sshd)
    try:
        pid, began = node.process.pid, start_time(node.process.pid)
        a2, b1 = issued(ca, "a"), issued(ca, "b")
        bad = issued(ca, "c", key_of=ca.issue_cert("x.test"))  # key and cert differ
        a, b, c = await deployer.deploy([Placement(node.target("a"), a2),
                                         Placement(node.target("b"), b1),
                                         Placement(node.target("c"), bad)])
        assert a.ok and b.ok, (a.message, b.message)
        assert "(runtime api)" in a.message
        assert not c.ok and c.kind == "runtime"  # new: nothing to go back to
        assert "PRIVATE KEY" not in c.message + c.output
        assert await node.serves("a", a2.serial) == (True, "")
        assert await node.serves("b", b1.serial) == (True, "")
        assert node.process.pid == pid and start_time(pid) == began
        assert node.crt_list.read_text().splitlines() == [
            f"{node.path('a')}/combined.pem", f"{node.path('b')}/combined.pem"]
        [back] = await deployer.roll_back([node.target("a")])
        assert back.ok, back.message
        assert await node.serves("a", a1.serial) == (True, "")
        [gone] = await deployer.remove([node.target("b")])
        assert gone.ok, gone.message
        assert (f"{node.path('b')}/combined.pem"
                not in parse_show_ssl_cert(node.ask("show ssl cert\n")).files)
        assert node.process.pid == pid
    finally:
        await deployer.close()
        node.process.stop()


async def test_sshd_refusing_the_socket_fails_clearly_and_puts_the_files_back(node, ca, sshd):
    server, _, _ = sshd
    a1 = issued(ca, "a")
    await started(node, a1)
    server.stop()
    text = server.config_path.read_text()
    server.config_path.write_text(text.replace(SSHD_SOCKETS, "AllowTcpForwarding no"))
    server.start()
    deployer = ssh_deployer(node, sshd)
    try:
        [r] = await deployer.deploy([Placement(node.target("a"), issued(ca, "a"))])
        assert not r.ok and r.kind == "runtime" and r.rolled_back, r.message
        assert "sshd refused the socket" in r.message and str(node.socket) in r.message
        assert Path(node.path("a")).resolve().name == a1.serial
        assert await node.serves("a", a1.serial) == (True, "")
    finally:
        await deployer.close()
        node.process.stop()
