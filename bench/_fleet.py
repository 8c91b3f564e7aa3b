"""The monitor bench's fleet: a throwaway PKI with N leaf certificates, written in certd's
deployed layout, recorded in a certd store as deployed to every node, and served by one nginx
on K loopback addresses that picks the certificate by SNI.

Only the bench uses this; nothing here is certd code.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certd import keys
from certd.deployers.base import file_set
from certd.model import (
    CertificateState, CertStatus, Deployment, DeployStatus, IssuedCertificate, utcnow)
from certd.store.sqlite import SqliteStore

NGINX = "/usr/sbin/nginx"
FALLBACK = "_fallback"
CRL_URL = "http://crl.bench.example/ca.crl"


def domain(i: int) -> str:
    return f"n{i:04d}.bench.example"


def addresses(k: int) -> list[str]:
    return [f"127.0.0.{20 + i}" for i in range(k)]


@dataclass(frozen=True)
class Pki:
    root_pem: str
    chain_pem: str  # the intermediate
    key_pem: str  # the ONE leaf key every leaf certificate shares
    leaves: list[IssuedCertificate]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(subject: str, key, issuer: x509.Name, signer, now: datetime) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=365))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(signer, hashes.SHA256()))


def make_pki(n: int, short: int, now: datetime) -> Pki:
    """A root, an intermediate and N leaves (EC P-256, SAN = one name, 90-day lifetime; the
    last `short` ones are 70 days old, so 20 days remain: under the default warn_before).
    Every leaf carries what the posture checks look for: SHA-256, KU digitalSignature, EKU
    serverAuth, AKI, a CRL distribution point."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca("certd bench root", root_key, _name("certd bench root"), root_key, now)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = _ca("certd bench intermediate", inter_key, root.subject, root_key, now)
    # one key for every leaf: generating 1,000 keys would only slow the bench's setup, and
    # nothing the monitor checks depends on keys being distinct. Never do this for real.
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    key_pem = keys.key_to_pem(leaf_key)
    chain_pem = keys.cert_to_pem(inter)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(inter_key.public_key())
    ski = x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key())
    crl = x509.CRLDistributionPoints([x509.DistributionPoint(
        [x509.UniformResourceIdentifier(CRL_URL)], None, None, None)])
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    leaves = []
    for i in range(n):
        name = domain(i)
        not_before = now - (timedelta(days=70) if i >= n - short else timedelta(hours=1))
        not_after = not_before + timedelta(days=90)
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(inter.subject)
                .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(ku, critical=True).add_extension(eku, critical=False)
                .add_extension(aki, critical=False).add_extension(ski, critical=False)
                .add_extension(crl, critical=False)
                .sign(inter_key, hashes.SHA256()))
        info = keys.cert_info(cert)
        leaves.append(IssuedCertificate(
            name=name, serial=info.serial, domains=(name,), not_before=info.not_before,
            not_after=info.not_after, cert_pem=keys.cert_to_pem(cert), chain_pem=chain_pem,
            key_pem=key_pem, fingerprint_sha256=info.fingerprint_sha256, issued_at=not_before))
    return Pki(keys.cert_to_pem(root), chain_pem, key_pem, leaves)


def write_layout(certs: Path, leaves: list[IssuedCertificate]) -> None:
    """certd's deployed layout, as the file deployer leaves it:
    certs/NAME -> .NAME.d/<serial>/ holding the five PEM files."""
    certs.mkdir(parents=True, exist_ok=True)
    for cert in leaves:
        version = certs / f".{cert.name}.d" / cert.serial
        version.mkdir(parents=True, mode=0o711)
        for f in file_set(cert):
            path = version / f.name
            path.write_text(f.content)
            path.chmod(f.mode)
        (certs / cert.name).symlink_to(f".{cert.name}.d/{cert.serial}")


def write_fallback(certs: Path) -> None:
    """What nginx serves for a name it does not know (or no SNI): a self-signed certificate."""
    key = keys.generate_key("ec-p256")
    fallback = certs / FALLBACK
    fallback.mkdir(parents=True, exist_ok=True)
    cert = keys.self_signed(key, "fallback.invalid", days=30)
    (fallback / "fullchain.pem").write_text(keys.cert_to_pem(cert))
    (fallback / "privkey.pem").write_text(keys.key_to_pem(key))
    (fallback / "privkey.pem").chmod(0o600)


async def populate(db: Path, leaves: list[IssuedCertificate], frontend: str,
                   nodes: list[str]) -> None:
    """Every certificate stored, its state `deployed`, and one deployment row per node (an
    hour old, so the monitor's stale grace has passed). One transaction."""
    store = SqliteStore(db)
    await store.open()
    deployed_at = utcnow() - timedelta(hours=1)
    try:
        await store.db.execute("BEGIN")
        for cert in leaves:
            await store.add_certificate(cert)
            await store.put_state(CertificateState(cert.name, CertStatus.DEPLOYED,
                                                   updated_at=deployed_at))
            for node in nodes:
                await store.put_deployment(Deployment(cert.name, frontend, node, cert.serial,
                                                      DeployStatus.DEPLOYED, "bench",
                                                      deployed_at))
        await store.db.execute("COMMIT")
    finally:
        await store.close()


_NGINX_CONF = """\
daemon off;
{user}
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    # SNI -> certificate directory; only names of the bench's shape reach the file system
    map $ssl_server_name $bench_cert {{
        default {fallback};
        "~^(?<bench_name>n[0-9]+\\.bench\\.example)$" $bench_name;
    }}
    server {{
{listens}
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {certs}/$bench_cert/fullchain.pem;
        ssl_certificate_key {certs}/$bench_cert/privkey.pem;
        return 200 "ok\\n";
    }}
}}
"""


class Nginx:
    """One nginx master in the foreground with its own prefix, stopped by PID."""

    def __init__(self, prefix: Path, certs: Path, addrs: list[str], port: int):
        self.prefix, self.certs, self.addrs, self.port = prefix, certs, addrs, port
        self.process: subprocess.Popen | None = None

    def write_config(self) -> Path:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        write_fallback(self.certs)
        conf = self.prefix / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(
            user="user root root;" if os.geteuid() == 0 else "", prefix=self.prefix,
            certs=self.certs, fallback=FALLBACK,
            listens="\n".join(f"        listen {a}:{self.port} ssl;" for a in self.addrs)))
        return conf

    def start(self, timeout: float = 10.0) -> None:
        conf = self.write_config()
        argv = [NGINX, "-p", f"{self.prefix}/", "-c", str(conf),
                "-e", str(self.prefix / "error.log")]
        subprocess.run([*argv, "-t", "-q"], check=True)
        with open(self.prefix / "stdout.log", "w") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        for addr in self.addrs:
            while True:
                if self.process.poll() is not None:
                    raise SystemExit(f"nginx exited ({self.process.returncode}):\n"
                                     + (self.prefix / "error.log").read_text()[-2000:])
                try:
                    socket.create_connection((addr, self.port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"nginx not listening on {addr}:{self.port}")
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)  # graceful: the master waits for its workers
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


# --- probes from Python: the floor under the monitor -------------------------------------

def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def handshake(ctx: ssl.SSLContext, address: str, port: int, name: str) -> bytes:
    """One TLS handshake with SNI; returns the served leaf (DER)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(address, port, ssl=ctx, server_hostname=name), 10)
    try:
        return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


async def handshakes(targets: list[tuple[str, str]], port: int, in_flight: int
                     ) -> tuple[float, int]:
    """Wall time of all handshakes to (address, name) targets with `in_flight` at once, and
    how many failed."""
    ctx = client_context()
    todo = iter(targets)
    failed = 0

    async def worker() -> None:
        nonlocal failed
        for address, name in todo:
            try:
                await handshake(ctx, address, port, name)
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                failed += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - t0, failed
