"""Issue 12, items 1-2: certd under systemd.

- The notify protocol (certd/sdnotify.py) against a NOTIFY_SOCKET the test owns: a real
  `certd run` says READY=1 once both listeners are bound, STATUS= lines with its counts,
  WATCHDOG=1 while its loop runs and STOPPING=1 at the end; a loop blocked on purpose sends
  no WATCHDOG=1 until it runs again.
- The units (systemd/): `systemd-analyze security --offline=yes` scores each 2.0 or less,
  `systemd-analyze verify` is clean, and the polkit rule grants exactly its two actions.
  systemd is not PID 1 where this runs (a container): nothing here starts a unit, so the
  sandbox's effect on a running certd is not tested, except MemoryDenyWriteExecute=, which
  the kernel's PR_SET_MDWE reproduces (the subprocesses below run under it).
- Secrets through LoadCredential=: config values `$CREDENTIALS_DIRECTORY/NAME`.
- `certd check` (certd-check.service) alerts through the configured notifiers with no
  daemon running.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from certd import config as configuration
from certd.app import open_certd
from certd.config import ConfigError, parse
from certd.sdnotify import Notifier, sockaddr
from tests.certd_lab import Daemon, run_certd, write_config
from tests.lab import free_port
from tests.lab.procs import tcp_open
from tests.notify_servers import mail_config

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
SHIPPED_CERTD = "/usr/local/bin/certd"  # where the README's install puts the entry point
MAX_EXPOSURE = 2.0
CREDENTIALS = ("certd-api-tokens", "certd-eab-hmac-key", "certd-smtp-password",
               "certd-salt-password", "certd-ssh-key", "certd-postgres-password",
               "certd-storage-keys")

# `python -c` that runs certd the way MemoryDenyWriteExecute=yes would let it: no mapping
# both writable and executable, no page made executable later (PR_SET_MDWE with
# PR_MDWE_REFUSE_EXEC_GAIN, Linux 6.3+; an older kernel says EINVAL and certd runs as is)
DENY_WRITE_EXECUTE = ("-c", """
import ctypes, errno, runpy
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
    raise SystemExit("PR_SET_MDWE: " + errno.errorcode[ctypes.get_errno()])
runpy.run_module("certd", run_name="__main__", alter_sys=True)
""")


# --- the notify socket ----------------------------------------------------------------

class NotifySocket:
    """The test's end of $NOTIFY_SOCKET, as systemd owns it: every datagram received, one
    string each (its fields joined by newlines)."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(sockaddr(address))
        self.messages: list[str] = []

    def receive(self, timeout: float) -> bool:
        """One datagram within `timeout` seconds (0: only if one is queued); False if none."""
        self.sock.settimeout(timeout)
        try:
            self.messages.append(self.sock.recv(65536).decode())
        except (TimeoutError, BlockingIOError):
            return False
        return True

    def wait_for(self, predicate: Callable[[list[str]], bool], what: str,
                 timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout} s; got {self.messages[-20:]}")
            self.receive(min(left, 0.5))

    def drain(self) -> list[str]:
        """What is queued now, without waiting."""
        start = len(self.messages)
        while self.receive(0):
            pass
        return self.messages[start:]

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)


def count(text: str) -> Callable[[list[str]], int]:
    return lambda messages: sum(1 for m in messages if text in m.split("\n"))


@pytest.fixture(params=["abstract", "path"])
def notify_socket(request, tmp_path):
    address = (f"@certd-test-{uuid.uuid4().hex}" if request.param == "abstract"
               else str(tmp_path / "notify.sock"))
    receiver = NotifySocket(address)
    try:
        yield receiver
    finally:
        receiver.close()


# --- a real daemon --------------------------------------------------------------------

TOKEN = "systemd-test-token-0123456789"


def daemon_config(tmp_path: Path) -> tuple[dict, int, int]:
    """No lab: one certificate whose CA is a closed port (so it fails and backs off), its
    API tokens in a credentials directory. (config, challenge port, API port)"""
    challenge, api = free_port(), free_port()
    data = {
        "state_dir": str(tmp_path / "state"),
        "acme": {"directory": f"https://127.0.0.1:{free_port()}/dir", "timeout": "2s"},
        "challenge": {"listen": f"127.0.0.1:{challenge}"},
        "api": {"listen": f"127.0.0.1:{api}",
                "tokens_file": "$CREDENTIALS_DIRECTORY/certd-api-tokens"},
        "monitor": {"enabled": False},
        "certificates": [{"name": "x", "domains": ["x.example.org"]}],
    }
    return data, challenge, api


def credentials_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    """What LoadCredential= gives the service: a directory of read-only files."""
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    for name, text in files.items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o400)
    return directory


def test_daemon_notifies_ready_status_watchdog_stopping(tmp_path, notify_socket):
    data, challenge, api = daemon_config(tmp_path)
    (tmp_path / "state").mkdir(mode=0o700)  # StateDirectory= makes it before certd starts
    creds = credentials_dir(tmp_path, {"certd-api-tokens": f"ops {TOKEN}\n"})
    daemon = Daemon(write_config(tmp_path / "c.yaml", data), tmp_path / "certd.log",
                    launcher=DENY_WRITE_EXECUTE,
                    env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "400000",
                         "CREDENTIALS_DIRECTORY": str(creds)})
    try:
        notify_socket.wait_for(count("READY=1"), "READY=1")
        # READY=1 is sent once both listeners are bound: they accept at once
        assert tcp_open("127.0.0.1", challenge) and tcp_open("127.0.0.1", api)
        assert count("READY=1")(notify_socket.messages) == 1
        # the tokens came from the credential: the API takes the token, none was created
        answer = requests.get(f"http://127.0.0.1:{api}/api/v1/certificates",
                              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert not (tmp_path / "state" / "api-tokens").exists()

        status = re.compile(r"STATUS=1 certificate, 0 due, 1 failing; "
                            r"last sweep \d\d:\d\d:\d\dZ")
        notify_socket.wait_for(lambda ms: any(status.fullmatch(m) for m in ms),
                               "STATUS= with the counts after the first sweep")
        assert "STATUS=1 certificate; first sweep running" in notify_socket.messages
        assert all(m.count("\n") == 0 for m in notify_socket.messages
                   if m.startswith("STATUS=")), "one line, one field"
        # every WatchdogSec/2 from the loop: more keep coming while it runs
        seen = count("WATCHDOG=1")(notify_socket.messages)
        notify_socket.wait_for(lambda ms: count("WATCHDOG=1")(ms) >= seen + 3,
                               "three more WATCHDOG=1")
    finally:
        code = daemon.stop()
    notify_socket.drain()
    assert code == 0, daemon.log_tail()
    assert "STOPPING=1" in notify_socket.messages, notify_socket.messages[-5:]
    # shutting down (listeners, queued notices) the loop still runs: pings only after it
    after = notify_socket.messages[notify_socket.messages.index("STOPPING=1") + 1:]
    assert set(after) <= {"WATCHDOG=1"}, after
    assert "sd_notify" not in daemon.log(), "no send failed"


def test_watchdog_pid_of_another_process_means_no_pings(tmp_path, notify_socket):
    """WATCHDOG_PID names the process the watchdog is meant for: not certd, no pings (the
    rest of the protocol as usual)."""
    data, _, _ = daemon_config(tmp_path)
    data["api"].pop("tokens_file")
    (tmp_path / "state").mkdir(mode=0o700)
    daemon = Daemon(write_config(tmp_path / "c.yaml", data), tmp_path / "certd.log",
                    env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "100000",
                         "WATCHDOG_PID": str(os.getpid())})
    try:
        notify_socket.wait_for(count("READY=1"), "READY=1")
        notify_socket.wait_for(lambda ms: any(", 1 failing;" in m for m in ms),
                               "STATUS= after the first sweep")
    finally:
        code = daemon.stop()
    notify_socket.drain()
    assert code == 0, daemon.log_tail()
    assert "STOPPING=1" in notify_socket.messages
    assert count("WATCHDOG=1")(notify_socket.messages) == 0, notify_socket.messages


# --- the protocol, in this process ----------------------------------------------------

def test_watchdog_pings_stop_while_the_loop_is_blocked(notify_socket):
    """The pings come from a task on the loop: a loop stuck in a blocking call sends none,
    and they resume when it runs again."""
    notifier = Notifier(notify_socket.address, watchdog_usec=40_000)  # every 20 ms
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="watched loop")
    thread.start()
    blocked, release = threading.Event(), threading.Event()

    def block() -> None:  # a callback that never yields: the loop is stuck in it
        blocked.set()
        release.wait(30)

    try:
        pings = asyncio.run_coroutine_threadsafe(notifier.watchdog(), loop)
        notify_socket.wait_for(lambda ms: count("WATCHDOG=1")(ms) >= 3, "WATCHDOG=1 x3")
        loop.call_soon_threadsafe(block)
        assert blocked.wait(10)
        notify_socket.drain()  # sent before the loop got stuck
        # while block() runs nothing else on the loop can: however long we look, no ping
        for _ in range(10):
            assert not notify_socket.receive(0.03), notify_socket.messages[-1]
        release.set()
        before = count("WATCHDOG=1")(notify_socket.messages)
        notify_socket.wait_for(lambda ms: count("WATCHDOG=1")(ms) >= before + 3,
                               "WATCHDOG=1 again once the loop runs")
    finally:
        release.set()
        loop.call_soon_threadsafe(pings.cancel)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        notifier.close()


def test_messages_on_the_wire(notify_socket):
    notifier = Notifier(notify_socket.address)
    notifier.ready("12 certificates")
    notifier.reloading()
    notifier.status("config refused:\nfrontends.web.nodes: required")
    notifier.stopping()
    notify_socket.wait_for(lambda ms: len(ms) >= 4, "four datagrams")
    ready, reloading, status, stopping = notify_socket.messages
    assert ready == "READY=1\nSTATUS=12 certificates"
    first, monotonic = reloading.split("\n")
    assert first == "RELOADING=1"
    usec = int(monotonic.removeprefix("MONOTONIC_USEC="))
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60_000_000
    assert status == "STATUS=config refused: frontends.web.nodes: required"
    assert stopping == "STOPPING=1"
    notifier.close()


def test_no_socket_is_a_noop_and_a_failed_send_is_logged_once(tmp_path, caplog):
    quiet = Notifier.from_environ({}, unset=False)
    assert not quiet.enabled and quiet.watchdog_usec is None
    assert quiet.send("READY=1") is False
    gone = Notifier(str(tmp_path / "nobody-listens.sock"), watchdog_usec=1000)
    with caplog.at_level("DEBUG", logger="certd.sdnotify"):
        for _ in range(3):
            gone.ready()  # never raises
    assert [r.levelname for r in caplog.records] == ["DEBUG"], caplog.records
    assert Notifier("vsock:2:1234").send("READY=1") is False  # unsupported: not raised


@pytest.mark.parametrize("env,usec", [
    ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000"}, 30_000_000),
    ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "0"}, None),
    ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "30000000"}, None),  # no socket, no watchdog
])
def test_watchdog_settings_from_the_environment(env, usec):
    assert Notifier.from_environ(env, unset=False).watchdog_usec == usec


def test_own_pid_and_unset(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "@certd-unset-test")
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environ()
    assert (notifier.address, notifier.watchdog_usec) == ("@certd-unset-test", 2_000_000)
    # commands certd runs (a deployer's reload) do not inherit the daemon's socket
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


# --- secrets through LoadCredential= ----------------------------------------------------

SECRET_FIELDS = {  # field path -> a config with that field set to VALUE
    "api.tokens_file": lambda v: {"api": {"tokens_file": v}},
    "acme.eab.hmac_key_file": lambda v: {"acme": {"eab": {"kid": "k", "hmac_key_file": v}}},
    "alerts.notifiers[0].password_file": lambda v: {"alerts": {"notifiers": [
        {"type": "email", "host": "smtp.example.org", "from": "certd@example.org",
         "to": ["ops@example.org"], "username": "certd", "password_file": v}]}},
    "frontends.web.deployer.password_file": lambda v: {"frontends": {"web": {
        "nodes": [{"name": "fe1", "address": "10.0.0.1"}],
        "deployer": {"type": "salt", "path": "/x/{certificate}", "mode": "push",
                     "url": "http://salt.example:8000", "username": "certd",
                     "password_file": v}}}},
    "frontends.web.deployer.key_file": lambda v: {"frontends": {"web": {
        "nodes": [{"name": "fe1", "address": "10.0.0.1"}],
        "deployer": {"type": "ssh", "path": "/x/{certificate}", "key_file": v,
                     "known_hosts": "/etc/certd/known_hosts"}}}},
    "storage_password_file": lambda v: {"storage": "postgresql://certd@db.example/certd",
                                        "storage_password_file": v},
    "storage_key_file": lambda v: {"storage_key_file": v},
}


def _field(cfg: configuration.Config, path: str):
    value = cfg
    for part in re.findall(r"[a-z_]+|\[\d+\]", path):
        value = value[int(part[1:-1])] if part.startswith("[") else (
            value[part] if isinstance(value, dict) else getattr(value, part))
    return value


@pytest.mark.parametrize("path", SECRET_FIELDS)
@pytest.mark.parametrize("written", ["$CREDENTIALS_DIRECTORY/secret",
                                     "${CREDENTIALS_DIRECTORY}/secret"])
def test_secret_fields_take_a_credential(monkeypatch, path, written):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/certd.service")
    cfg = parse(SECRET_FIELDS[path](written))
    assert _field(cfg, path) == Path("/run/credentials/certd.service/secret")
    plain = parse(SECRET_FIELDS[path]("/etc/certd/secret"))  # a plain path stays as written
    assert _field(plain, path) == Path("/etc/certd/secret")


@pytest.mark.parametrize("path", SECRET_FIELDS)
def test_credential_without_credentials_directory_names_the_field(monkeypatch, path):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError) as caught:
        parse(SECRET_FIELDS[path]("$CREDENTIALS_DIRECTORY/secret"))
    assert caught.value.problems == [(
        f"{path}: $CREDENTIALS_DIRECTORY is not set (or not an absolute path): run certd "
        "under its systemd unit, which loads the credentials, or set it to where they are "
        "kept (e.g. CREDENTIALS_DIRECTORY=/etc/credstore)")]


@pytest.mark.parametrize("value,problem", [
    ("$CREDENTIALS_DIRECTORY/../config.yaml", "'../config.yaml': not a credential name"),
    ("$CREDENTIALS_DIRECTORY/..", "'..': not a credential name"),
    ("${CREDENTIALS_DIRECTORY}/sub/key", "'sub/key': not a credential name"),
    ("$CREDENTIALS_DIRECTORY/", "'': not a credential name"),
    ("$CREDENTIALS_DIRECTORY", "only $CREDENTIALS_DIRECTORY/NAME is expanded"),
    ("$HOME/.ssh/id_ed25519", "only $CREDENTIALS_DIRECTORY/NAME is expanded"),
    ("${CREDENTIALS_DIRECTORY/key", "only $CREDENTIALS_DIRECTORY/NAME is expanded"),
])
def test_bad_credential_references(monkeypatch, value, problem):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/certd.service")
    with pytest.raises(ConfigError) as caught:
        parse(SECRET_FIELDS["frontends.web.deployer.key_file"](value))
    [found] = caught.value.problems
    assert found.startswith(f"frontends.web.deployer.key_file: {problem}"), found


def test_relative_credentials_directory_is_refused(monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "credentials")
    with pytest.raises(ConfigError, match=r"api\.tokens_file: \$CREDENTIALS_DIRECTORY is not"):
        parse(SECRET_FIELDS["api.tokens_file"]("$CREDENTIALS_DIRECTORY/t"))


def test_eab_key_inline_or_from_a_file(tmp_path, monkeypatch):
    key = "c2VjcmV0LWtleS0xMjM0NTY3ODkw"
    assert parse({"acme": {"eab": {"kid": "k", "hmac_key": key}}}).acme.eab.secret() == key
    creds = credentials_dir(tmp_path, {"certd-eab-hmac-key": key + "\n",
                                       "bad": "not base64 ZZMARK!!\n"})
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    eab = {"kid": "k", "hmac_key_file": "$CREDENTIALS_DIRECTORY/certd-eab-hmac-key"}
    assert parse({"acme": {"eab": eab}}).acme.eab.secret() == key
    for name, problem in [("bad", "must hold the base64url key"),
                          ("missing", "cannot read it: No such file")]:
        cfg = parse({"acme": {"eab": {**eab, "hmac_key_file": f"$CREDENTIALS_DIRECTORY/{name}"}}})
        with pytest.raises(ConfigError) as caught:
            cfg.acme.eab.secret()
        assert caught.value.problems[0].startswith(f"acme.eab.hmac_key_file: {problem}")
        assert "ZZMARK" not in str(caught.value)  # a secret is never quoted
    for both in [{"kid": "k"}, {"kid": "k", "hmac_key": key, "hmac_key_file": "/k"}]:
        with pytest.raises(ConfigError) as caught:
            parse({"acme": {"eab": both}})
        assert caught.value.problems == [
            "acme.eab: give the key as hmac_key or hmac_key_file (one of them)"]


async def test_the_issuer_gets_the_eab_key_from_its_credential(tmp_path, monkeypatch):
    key = "c2VjcmV0LWtleS0xMjM0NTY3ODkw"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY",
                       str(credentials_dir(tmp_path, {"certd-eab-hmac-key": key + "\n"})))
    cfg = parse({"state_dir": str(tmp_path / "state"), "acme": {"eab": {
        "kid": "kid-1", "hmac_key_file": "$CREDENTIALS_DIRECTORY/certd-eab-hmac-key"}}})
    async with open_certd(cfg) as certd:
        assert certd.issuer.eab == ("kid-1", key)


# --- certd check, the watcher that does not die with the daemon ------------------------

def test_check_alerts_by_email_with_its_password_from_a_credential(tmp_path, smtp, ca):
    """certd-check.service: `certd check` with no daemon running, its SMTP password from
    $CREDENTIALS_DIRECTORY, a monitored endpoint that answers nothing: the finding reaches a
    real SMTP server (STARTTLS, AUTH), and the exit status says error (2, for OnFailure=)."""
    creds = credentials_dir(tmp_path, {"certd-smtp-password": smtp.password + "\n"})
    mail = mail_config(tmp_path, smtp, ca).model_dump(mode="json", by_alias=True,
                                                      exclude={"timeout"})
    mail["password_file"] = "${CREDENTIALS_DIRECTORY}/certd-smtp-password"
    data = {
        "state_dir": str(tmp_path / "state"),
        "acme": {"directory": f"https://127.0.0.1:{free_port()}/dir"},
        "monitor": {"protocols": False, "timeout": "5s",
                    "endpoints": [{"address": "127.0.0.1", "port": free_port(),
                                   "names": ["down.example.org"]}]},
        "alerts": {"notifiers": [mail]},
    }
    (tmp_path / "smtp-password").unlink()  # only the credential holds it
    out = run_certd(write_config(tmp_path / "c.yaml", data), "check", "--json",
                    env={"CREDENTIALS_DIRECTORY": str(creds)}, launcher=DENY_WRITE_EXECUTE)
    assert out.returncode == 2, out.stderr
    report = json.loads(out.stdout)
    assert [(f["check"], f["severity"]) for f in report["findings"]] == [("unreachable", "error")]
    assert smtp.logins and all(ok for _, ok in smtp.logins), smtp.logins
    [message] = smtp.messages
    assert "down.example.org" in message.get_content()


# --- the units ------------------------------------------------------------------------

def systemd_analyze(*args: str) -> subprocess.CompletedProcess:
    program = shutil.which("systemd-analyze")
    if program is None:
        pytest.fail("systemd-analyze is missing: scripts/test installs Debian's systemd")
    return subprocess.run([program, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def unit_settings(path: Path) -> dict[str, list[str]]:
    """KEY -> every value it is given in the unit (comments and sections ignored)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("unit", ["certd.service", "certd-check.service"])
def test_security_exposure(unit):
    out = systemd_analyze("security", "--offline=yes", "--no-pager", str(UNITS / unit))
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", out.stdout)
    assert found, out.stdout + out.stderr
    exposed = [line for line in out.stdout.splitlines() if line.startswith("✗")]
    assert float(found.group(1)) <= MAX_EXPOSURE, "\n".join(exposed)


def test_units_verify(tmp_path):
    """`systemd-analyze verify` checks that ExecStart= programs exist: the units are copied
    with the shipped /usr/local/bin/certd replaced by this venv's entry point."""
    entry_point = Path(sys.executable).parent / "certd"
    assert entry_point.exists(), "pip install -e . makes it"
    names = ["certd.service", "certd-check.service", "certd-check.timer",
             "certd-nginx-check.service"]
    for name in names:
        text = (UNITS / name).read_text()
        (tmp_path / name).write_text(text.replace(SHIPPED_CERTD, str(entry_point)))
    out = systemd_analyze("verify", *(str(tmp_path / n) for n in names))
    assert out.returncode == 0, out.stdout + out.stderr
    assert not [line for line in (out.stdout + out.stderr).splitlines()
                if "certd" in line or str(tmp_path) in line], out.stdout + out.stderr


def test_unit_contract():
    """What the issue and the README rely on: notify with a watchdog, reload by SIGHUP,
    the dedicated user and directories, the same credentials for the daemon and the check."""
    daemon = unit_settings(UNITS / "certd.service")
    check = unit_settings(UNITS / "certd-check.service")
    expected = {"Type": ["notify"], "NotifyAccess": ["main"], "User": ["certd"],
                "ExecStart": [f"{SHIPPED_CERTD} run"],
                "ExecReload": ["/bin/kill -HUP $MAINPID"], "Restart": ["on-failure"],
                "StateDirectory": ["certd"], "ConfigurationDirectory": ["certd"],
                "WorkingDirectory": ["/var/lib/certd"]}
    assert {k: daemon.get(k) for k in expected} == expected
    assert daemon["WatchdogSec"] and daemon["LoadCredential"] == list(CREDENTIALS)
    assert check["LoadCredential"] == list(CREDENTIALS)
    assert check["ExecStart"] == [f"{SHIPPED_CERTD} check"] and check["User"] == ["certd"]
    assert check["StateDirectory"] == ["certd"] and check["Type"] == ["oneshot"]
    timer = unit_settings(UNITS / "certd-check.timer")
    assert timer["OnCalendar"] and timer["RandomizedDelaySec"]


POLKIT_PROBE = """
const fs = require("fs");
let rule = null;
globalThis.polkit = {Result: {YES: "yes", NO: "no", AUTH_ADMIN: "auth_admin", NOT_HANDLED: null},
                     addRule: (f) => { rule = f; }};
(0, eval)(fs.readFileSync(process.argv[1], "utf8"));
const out = JSON.parse(process.argv[2]).map(([user, id, unit, verb]) => rule(
    {id: id, lookup: (key) => ({unit: unit, verb: verb})[key]}, {user: user}) || null);
console.log(JSON.stringify(out));
"""


def test_polkit_rule_grants_exactly_the_reload_path():
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.fail("no JavaScript interpreter (node) to evaluate the polkit rule with: "
                    "apt-get install nodejs (scripts/test does)", pytrace=False)
    manage = "org.freedesktop.systemd1.manage-units"
    cases = [
        (("certd", manage, "nginx.service", "reload"), "yes"),
        (("certd", manage, "certd-nginx-check.service", "start"), "yes"),
        (("certd", manage, "nginx.service", "restart"), None),
        (("certd", manage, "nginx.service", "stop"), None),
        (("certd", manage, "nginx.service", "start"), None),
        (("certd", manage, "certd-nginx-check.service", "stop"), None),
        (("certd", manage, "ssh.service", "reload"), None),
        (("certd", manage, "constructor", "reload"), None),
        (("certd", manage, "__proto__", "reload"), None),
        (("www-data", manage, "nginx.service", "reload"), None),
        (("certd", "org.freedesktop.systemd1.manage-unit-files", "nginx.service", "reload"),
         None),
        (("certd", "org.freedesktop.login1.reboot", None, None), None),
    ]
    out = subprocess.run([node, "-e", POLKIT_PROBE, str(UNITS / "certd-polkit.rules"),
                          json.dumps([c for c, _ in cases])],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [want for _, want in cases]
