"""Helpers that point certd at the lab: a config, a daemon subprocess, TLS checks."""

from __future__ import annotations

import os
import resource
import shlex
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

from certd import config as configuration
from certd.config import Config
from tests.lab import Lab, Pebble, free_port, wait_until
from tests.lab.procs import log_tail, stop_process


def lab_config_data(lab: Lab, state_dir: Path, certificates: list[dict],
                    pebble: Pebble | None = None) -> dict:
    pebble = pebble or lab.pebble
    return {
        "state_dir": str(state_dir),
        "log_level": "debug",
        "acme": {
            "directory": pebble.directory_url,
            "ca_bundle": str(pebble.ca_bundle),
            "timeout": "10s",
            "order_timeout": "60s",
            "caa_identities": ["pebble.letsencrypt.org"],
        },
        "challenge": {"listen": lab.challenge_listen},
        # aliases' preflight: the lab's DNS, the load balancer as the CA's port 80
        "domains": {"resolver": f"127.0.0.1:{lab.challtestsrv.dns_port}",
                    "validation_port": lab.http_port,
                    # the lab's "Internet" is loopback, its names end in .test/.example
                    "preflight_allow_networks": ["127.0.0.0/8"],
                    "allow_special_use": ["test", "example"]},
        # one process per daemon (the lab shares 2 cores with many processes): API workers
        # are tested in tests/test_api_workers.py, the default (one per core) by the tests
        # that write their own config (test_listener_daemon, test_cli_lab, test_systemd, ...)
        "api": {"listen": f"127.0.0.1:{free_port()}", "workers": 1},
        "frontends": {
            "web": {
                "tls_port": lab.tls_port,
                "http_port": lab.node_http_port,
                "nodes": [{"name": n.name, "address": n.address} for n in lab.nodes],
                "deployer": {"type": "file", "path": lab.deploy_path_template},
                "reload": lab.reload_command,
                "command_timeout": "20s",
            }
        },
        "certificates": certificates,
    }


def lab_config(lab: Lab, state_dir: Path, certificates: list[dict],
               pebble: Pebble | None = None) -> Config:
    return configuration.parse(lab_config_data(lab, state_dir, certificates, pebble))


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


CERTD_MODULE = ("-m", "certd")


def certd_argv(config_path: Path | None, *args: str,
               launcher: Sequence[str] = CERTD_MODULE) -> list[str]:
    """`python -m certd [-c config_path] args...` with this interpreter (`launcher`: what
    follows the interpreter instead of `-m certd`, e.g. `-c CODE` that ends by running it)."""
    config = ["-c", str(config_path)] if config_path is not None else []
    return [sys.executable, *launcher, *config, *args]


def run_certd(config_path: Path | None, *args: str, env: dict[str, str] | None = None,
              timeout: float = 120, cwd: Path | None = None,
              launcher: Sequence[str] = CERTD_MODULE) -> subprocess.CompletedProcess:
    """One `certd` command (`certd -c config_path args...`; no `-c` for None) as a real
    subprocess, waited for (killed by PID at `timeout`); stdout and stderr captured as text
    (UTF-8, undecodable bytes replaced). `env` is layered over this process's environment,
    from which `CERTD_CONFIG` is left out (the config is the one given, or the default)."""
    base = {k: v for k, v in os.environ.items() if k != "CERTD_CONFIG"}
    return subprocess.run(certd_argv(config_path, *args, launcher=launcher),
                          capture_output=True, check=False,
                          encoding="utf-8", errors="replace", timeout=timeout, cwd=cwd,
                          env={**base, **(env or {})})


class Daemon:
    """`certd run` as a real subprocess in its own session; stopped by PID. `nofile` sets
    its soft file limit (systemd's default is 1,024); `env` is layered over this process's
    environment; `launcher` as for certd_argv."""

    def __init__(self, config_path: Path, log_path: Path, *, nofile: int | None = None,
                 env: dict[str, str] | None = None, launcher: Sequence[str] = CERTD_MODULE):
        self.log_path = log_path
        self._log = open(log_path, "ab")

        def limit_files() -> None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        self.proc = subprocess.Popen(
            certd_argv(config_path, "run", launcher=launcher),
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=limit_files if nofile else None,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log, for a failure report."""
        return log_tail(self.log_path, lines)

    def wait_log(self, text: str, count: int = 1, timeout: float = 60) -> None:
        def seen():
            if self.proc.poll() is not None:
                raise AssertionError(f"certd exited {self.proc.returncode}:\n{self.log_tail()}")
            return self.log().count(text) >= count

        wait_until(seen, timeout, what=f"certd log to show {text!r} x{count}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM to certd alone (it shuts down what it started), its group killed after
        `timeout` s and reaped; the exit status."""
        code = stop_process(self.proc, timeout, whole_group=False)
        self._log.close()
        return code

    def kill9(self) -> None:
        stop_process(self.proc, term=False)
        self._log.close()


def verified_handshake(address: str, port: int, server_name: str, root_pem: str
                       ) -> bytes:
    """A TLS handshake that verifies the served chain against `root_pem` and the name."""
    ctx = ssl.create_default_context(cadata=root_pem)
    with socket.create_connection((address, port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            return tls.getpeercert(binary_form=True)


def challenge_lines(lab: Lab, node: str, host: str) -> list[str]:
    return [line for line in lab.access_log(node)
            if "/.well-known/acme-challenge/" in line and f'"{host}"' in line]


def poll(predicate, timeout: float = 30, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def served_serial(lab: Lab, node: str, server_name: str) -> str:
    """The hex serial `node` serves for `server_name`, or '' if the handshake fails (nothing
    deployed there yet: nginx refuses it)."""
    try:
        return format(lab.served_certificate(node, server_name).serial_number, "x")
    except OSError:
        return ""


def web_deployer(cfg: Config, name: str):
    """(the `web` frontend's deployer, its targets for certificate `name` on `name`.test)."""
    from certd import deployers
    from certd.model import CertificateSpec
    from certd.rollout import targets

    spec = CertificateSpec(name, (f"{name}.test",), ("web",))
    return deployers.build(cfg.frontends["web"].deployer), targets(cfg, spec)


@contextmanager
def planted_symlink(lab: Lab, name: str):
    """`.{name}.d -> ../victim-{name}` planted in fe1's certs directory (the victim: mode 0755,
    holding precious.txt) while the block runs, removed after. Yields (fe1's certs directory,
    the victim)."""
    certs = lab.cert_dir("fe1", name).parent
    victim = certs.parent / f"victim-{name}"
    victim.mkdir(exist_ok=True)
    victim.chmod(0o755)
    (victim / "precious.txt").write_text("do not touch\n")
    (certs / f".{name}.d").symlink_to(f"../victim-{name}")
    try:
        yield certs, victim
    finally:
        (certs / f".{name}.d").unlink()


async def deploy_past_a_planted_symlink(lab: Lab, deployer, chosen, name: str):
    """`name` deployed to `chosen` past a planted symlink (`planted_symlink`), then the
    deployer closed and the link removed. Returns (results by node, fe1's certs directory,
    the victim)."""
    from certd.deployers.base import placements
    from tests.test_deploy_file import issued

    with planted_symlink(lab, name) as (certs, victim):
        try:
            results = {r.target.node: r for r in
                       await deployer.deploy(placements(chosen, issued(name, f"{name}.test")))}
        finally:
            await deployer.close()
    return results, certs, victim


def counted_reload(lab: Lab, counter: Path) -> str:
    """The lab's reload command behind a wrapper that first appends the node's name to
    `counter`: reloads per node counted from the node's side."""
    wrapper = shlex.quote(f'echo "$0" >> {shlex.quote(str(counter))}; exec "$@"')
    return f"sh -c {wrapper} {{node}} {lab.reload_command}"


def reloads_per_node(counter: Path) -> dict[str, int]:
    return dict(Counter(counter.read_text().split())) if counter.exists() else {}


def deployed_rows(database: Path) -> int:
    """Deployments recorded `deployed` in a store another process writes (read-only)."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM deployments WHERE status = 'deployed'"
                              ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
