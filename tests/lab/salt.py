"""A real SaltStack for the Salt deployer tests: salt-master + salt-api + one minion per node.

::

    certd --HTTP--> salt-api (rest_cherrypy, http://127.0.0.1:api_port, eauth "file")
                        |
                    salt-master (127.0.0.1 publish_port / ret_port, auto_accept)
                     /          \\
             salt-minion fe1   salt-minion fe2      (root; write anywhere, e.g.
                                                     lab.cert_dir("fe1", ...))

Salt comes from ``<repo>/.salt-venv`` (made by ``scripts/salt-venv``), never from
certd's environment.  Every daemon gets only ``root_dir`` for its paths (Salt prefixes
every path option with it), so nothing touches ``/etc/salt`` or ``/var``.

All minions run on this host, as root.  Two ways to aim a deploy at each node's files:

* a path with ``{node}`` in it (``lab.deploy_path_template``): the real directories, so
  certd must send each minion its own job (one ``state.high`` carries one set of paths);
* the same path on every node, as in production (``salt.deploy_path_template``): each
  minion runs in its own mount namespace (``unshare --mount``) where :attr:`SaltLab.node_root`
  is a bind mount of its node's directory (``lab.cert_dir(node, X).parent.parent``), so one
  job to all minions writes ``lab.cert_dir("fe1", X)`` on fe1 and ``lab.cert_dir("fe2", X)``
  on fe2.  ``salt.reload_command`` is the matching nginx reload.
"""

from __future__ import annotations

import json
import secrets
import shlex
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .lab import Lab
from .procs import LabError, ManagedProcess, StopOnExit, free_port, log_tails, stop_all

__all__ = ["SALT_VENV", "SaltLab", "salt_venv_missing"]

REPO_ROOT = Path(__file__).resolve().parents[2]
SALT_VENV = REPO_ROOT / ".salt-venv"
SALT_PROGRAMS = ("salt-master", "salt-minion", "salt-api")

# Permissions of the API user: every execution module on every minion.  Measured:
# ["state.high", "cmd.run_all"] is enough for certd's deployer (also while a job runs
# longer than ``timeout``: the master's saltutil.find_job needs no permission); a
# function outside the list is refused with HTTP 401, the same status as a bad token.
DEFAULT_PERMISSIONS: tuple[str, ...] = (".*",)

# AF_UNIX socket paths (under root_dir) must fit in 108 bytes.
_MAX_SOCK_PATH = 107
# What a minion logs (log_level_logfile: info) once it is connected and subscribed.
_MINION_READY = "ready to receive requests"


def salt_venv_missing(venv: Path = SALT_VENV) -> str | None:
    """None if ``venv`` has every Salt program, else a message saying how to make it."""
    missing = [p for p in SALT_PROGRAMS if not (venv / "bin" / p).exists()]
    if not missing:
        return None
    return (
        f"Salt is not installed in {venv} (missing {', '.join(missing)}): "
        "run `bash scripts/salt-venv` to create it"
    )


def _yaml(value: Any) -> str:
    """JSON is YAML: Salt reads these config files with its YAML loader."""
    return json.dumps(value, indent=2) + "\n"


class SaltLab(StopOnExit):
    """salt-master, salt-api and minions, started with :meth:`start`, stopped with :meth:`stop`.

    Attributes:
        api_url: ``http://127.0.0.1:PORT`` of salt-api (plain HTTP, loopback only).
        username, password, eauth: credentials for ``POST /login`` (eauth ``"file"``).
        password_file: a file holding just the password (no newline), mode 0600.
        minion_ids: minion id per lab node name, e.g. ``{"fe1": "fe1", "fe2": "fe2"}``.
        node_root: the path where each minion sees its own node's directory (None
            without mount namespaces).
        deploy_path_template: ``<node_root>/certs/{certificate}`` -- the same path for
            every node, landing in ``lab.cert_dir(node, certificate)``.
        reload_command: the nginx reload of "this node", the same on every minion.
        master_job_cache_dir: ``.../cachedir/jobs``: job arguments (key material!)
            land here as ``<xx>/<hash>/.load.p`` (msgpack, mode 0644).
        master_root: the master's ``root_dir``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        node_dirs: Mapping[str, Path],
        minions: Mapping[str, str],
        api_user: str,
        api_password: str,
        permissions: Sequence[str],
        mount_namespaces: bool,
        venv: Path,
    ) -> None:
        """Allocate ports, write every config file; starts nothing.

        ``node_dirs`` maps lab node name -> its directory; ``minions`` lab node name ->
        minion id.
        """
        self.workdir = workdir
        self.venv = venv
        self.minion_ids: dict[str, str] = dict(minions)
        self.username = api_user
        self.password = api_password
        self.eauth = "file"
        self.publish_port = free_port()
        self.ret_port = free_port()
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"

        self.master_root = workdir / "master"
        self.master_conf_dir = workdir / "conf" / "master"
        self.master_job_cache_dir = self.master_root / "var/cache/salt/master/jobs"
        self.password_file = workdir / "api-password"
        self._users_file = workdir / "conf" / "eauth-users.txt"
        self.node_root: Path | None = workdir / "node" if mount_namespaces else None
        if self.node_root is not None:
            root = shlex.quote(str(self.node_root))
            self.deploy_path_template: str | None = f"{self.node_root}/certs/{{certificate}}"
            self.reload_command: str | None = (
                f"nginx -p {root}/ -c {root}/nginx.conf -e {root}/error.log -s reload"
            )
        else:
            self.deploy_path_template = self.reload_command = None
        self._check_sock_paths()

        self.master_conf_dir.mkdir(parents=True, exist_ok=True)
        self.password_file.write_text(api_password)
        self.password_file.chmod(0o600)
        self._users_file.write_text(f"{api_user}:{api_password}\n")
        self._users_file.chmod(0o600)
        (self.master_conf_dir / "master").write_text(
            _yaml(
                {
                    "id": "lab-master",
                    "root_dir": str(self.master_root),
                    "user": "root",
                    "interface": "127.0.0.1",
                    "publish_port": self.publish_port,
                    "ret_port": self.ret_port,
                    "auto_accept": True,
                    "worker_threads": 3,
                    "enable_fqdns_grains": False,
                    "netapi_enable_clients": ["local"],
                    "external_auth": {
                        "file": {
                            "^filename": str(self._users_file),
                            "^filetype": "text",
                            api_user: list(permissions),
                        }
                    },
                    "rest_cherrypy": {
                        "host": "127.0.0.1",
                        "port": self.api_port,
                        "disable_ssl": True,
                    },
                    "log_level": "warning",
                    "log_level_logfile": "info",
                }
            )
        )
        logs = workdir / "logs"
        self.master = ManagedProcess(
            "salt-master",
            [str(venv / "bin/salt-master"), "-c", str(self.master_conf_dir)],
            logs / "salt-master.log",
            env=_CLEAN_ENV,
        )
        self.api = ManagedProcess(
            "salt-api",
            [str(venv / "bin/salt-api"), "-c", str(self.master_conf_dir)],
            logs / "salt-api.log",
            env=_CLEAN_ENV,
        )
        self.minions: dict[str, ManagedProcess] = {}
        self._minion_logs: dict[str, Path] = {}
        for node, minion_id in self.minion_ids.items():
            minion_root = workdir / f"minion-{minion_id}"
            conf_dir = workdir / "conf" / f"minion-{minion_id}"
            conf_dir.mkdir(parents=True, exist_ok=True)
            (conf_dir / "minion").write_text(
                _yaml(
                    {
                        "id": minion_id,
                        "root_dir": str(minion_root),
                        "user": "root",
                        "master": "127.0.0.1",
                        "master_port": self.ret_port,
                        "publish_port": self.publish_port,
                        "acceptance_wait_time": 1,
                        # Minions start alongside the master: retry its ports every
                        # 0.1 s, not after a random 1-11 s (zmq reconnect interval).
                        "recon_default": 100,
                        "recon_max": 500,
                        "recon_randomize": False,
                        "random_reauth_delay": 0,
                        "enable_fqdns_grains": False,
                        "enable_gpu_grains": False,
                        "log_level": "warning",
                        "log_level_logfile": "info",
                    }
                )
            )
            self._minion_logs[minion_id] = minion_root / "var/log/salt/minion"
            argv = [str(venv / "bin/salt-minion"), "-c", str(conf_dir)]
            if self.node_root is not None:
                # unshare and sh exec: the minion keeps the PID (and process group).
                argv = [
                    "unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh",
                    str(node_dirs[node]), str(self.node_root), *argv,
                ]  # fmt: skip
            self.minions[minion_id] = ManagedProcess(
                f"salt-minion-{minion_id}", argv, logs / f"salt-minion-{minion_id}.log",
                env=_CLEAN_ENV,
            )
        self._timeout = 20.0

    def _check_sock_paths(self) -> None:
        longest = max(
            [f"{self.master_root}/var/run/salt/master/master_event_pull.ipc"]
            + [
                f"{self.workdir}/minion-{m}/var/run/salt/minion/minion_event_0123456789_pull.ipc"
                for m in self.minion_ids.values()
            ],
            key=len,
        )
        if len(longest) > _MAX_SOCK_PATH:
            raise LabError(f"salt workdir {self.workdir} is too long for unix sockets: {longest}")

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        lab: Lab,
        minions: dict[str, str] | None = None,
        api_user: str = "certd",
        api_password: str | None = None,
        permissions: Sequence[str] = DEFAULT_PERMISSIONS,
        mount_namespaces: bool = True,
        venv: Path = SALT_VENV,
        timeout: float = 20.0,
    ) -> "SaltLab":
        """Start master, salt-api and the minions; return once salt-api answers
        ``test.ping`` for every minion (~3-6 s on two busy cores).

        ``minions`` maps lab node name -> minion id (default: each node's own name).
        ``api_password`` defaults to a random one.  ``mount_namespaces=False`` runs the
        minions without :attr:`node_root` (then only ``{node}`` paths tell nodes apart).
        If anything fails, whatever was started is stopped before the error propagates.
        """
        problem = salt_venv_missing(venv)
        if problem:
            raise LabError(problem)
        if mount_namespaces and shutil.which("unshare") is None:
            raise LabError("salt: `unshare` (util-linux) not found; pass mount_namespaces=False")
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if minions is None:
            minions = {node.name: node.name for node in lab.nodes}
        # lab.cert_dir(node, X) is <node dir>/certs/X.
        node_dirs = {node: lab.cert_dir(node, "x").parent.parent for node in minions}
        salt = cls(
            workdir,
            node_dirs=node_dirs,
            minions=minions,
            api_user=api_user,
            api_password=api_password or secrets.token_urlsafe(18),
            permissions=permissions,
            mount_namespaces=mount_namespaces,
            venv=venv,
        )
        salt._timeout = timeout
        if salt.node_root is not None:
            salt.node_root.mkdir(exist_ok=True)  # the mount point
            for directory in node_dirs.values():
                (directory / "certs").mkdir(parents=True, exist_ok=True)
        try:
            salt.master.start()
            for minion in salt.minions.values():
                minion.start()  # they retry until the master listens
            salt.api.start()
            salt.master.wait_tcp(
                [("127.0.0.1", salt.ret_port), ("127.0.0.1", salt.publish_port)], timeout
            )
            salt.api.wait_tcp([("127.0.0.1", salt.api_port)], timeout)
            salt.wait_minions(salt.minion_ids.values(), timeout)
        except BaseException:
            salt.stop()
            raise
        return salt

    def processes(self) -> list[ManagedProcess]:
        """Every process this lab manages, in start order."""
        return [self.master, *self.minions.values(), self.api]

    def stop(self) -> None:
        """Stop everything, newest first, by PID. Idempotent."""
        stop_all(reversed(self.processes()), lambda p: p.stop(grace=self._grace(p)))

    def _grace(self, process: ManagedProcess) -> float:
        # On SIGTERM a minion takes ~5 s to exit, the master ~2 s; nothing of theirs
        # needs to survive, so their process groups get SIGKILL soon after.
        return 0.3 if process in self.minions.values() else 1.0

    def stop_minion(self, minion_id: str) -> None:
        """Stop one minion: SIGTERM, then SIGKILL to its process group after 0.3 s.

        Its orphaned children stay zombies for ~1.5 s here (until PID 1 reaps them), and
        a minion refuses to start while the pid in its ``process_responsibility`` file
        exists: so once only zombies are left (the stop waits for that), that stale file
        is removed."""
        process = self._minion(minion_id)
        process.stop(grace=self._grace(process))
        run_dir = self.workdir / f"minion-{minion_id}" / "var/run"
        for stale in run_dir.glob("process_responsibility_*"):
            stale.unlink(missing_ok=True)

    def start_minion(self, minion_id: str, timeout: float | None = None) -> None:
        """Start a minion stopped with :meth:`stop_minion`; return once it answers
        ``test.ping`` through salt-api (~2 s)."""
        process = self._minion(minion_id)
        process.start()
        self.wait_minions([minion_id], timeout or self._timeout)

    def minion_running(self, minion_id: str) -> bool:
        """True while the minion's process runs (it may not be connected yet)."""
        return self._minion(minion_id).alive()

    def _minion(self, minion_id: str) -> ManagedProcess:
        try:
            return self.minions[minion_id]
        except KeyError:
            raise LabError(f"no minion {minion_id!r}; minions are {list(self.minions)}") from None

    # ----------------------------------------------------------------- salt-api

    def login(self) -> str:
        """``POST /login`` with the lab's credentials; return the token."""
        status, body = self._post(
            "/login",
            {"username": self.username, "password": self.password, "eauth": self.eauth},
        )
        if status != 200:
            raise LabError(f"salt-api /login: HTTP {status}: {body!r}")
        return body["return"][0]["token"]

    def run(self, lowstate: Mapping[str, Any], token: str | None = None) -> Any:
        """``POST /`` one lowstate chunk (``client`` defaults to ``local``); return the
        first element of the response's ``return`` list."""
        chunk = {"client": "local", **lowstate}
        status, body = self._post("/", [chunk], token=token or self.login())
        if status != 200:
            raise LabError(f"salt-api /: HTTP {status}: {body!r}")
        return body["return"][0]

    def ping(
        self, minion_ids: Iterable[str], timeout: float = 1.0, token: str | None = None
    ) -> dict[str, Any]:
        """``test.ping`` through salt-api: ``{id: True}`` per minion that answered (a
        minion that did not is absent, or mapped to a "did not return" string)."""
        return self.run(
            {
                "tgt": list(minion_ids),
                "tgt_type": "list",
                "fun": "test.ping",
                "timeout": timeout,
                "gather_job_timeout": timeout,
            },
            token=token,
        )

    def wait_minions(self, minion_ids: Iterable[str], timeout: float) -> None:
        """Wait until every minion in ``minion_ids`` answers ``test.ping`` via salt-api.

        A ping to a minion that is not connected yet costs ``timeout +
        gather_job_timeout`` (2 s here), so pings wait for each minion's log to say
        it is ready -- or for 3 s, whichever comes first, in case that line changes.
        """
        wanted = list(minion_ids)
        log_offsets = {m: self._log_size(m) for m in wanted}
        started = time.monotonic()
        deadline = started + timeout
        token: str | None = None
        answered: Any = None
        while True:
            for process in [self.master, self.api, *(self._minion(m) for m in wanted)]:
                if not process.alive():
                    code = process.popen.returncode if process.popen else None
                    raise process.fail(f"not running (exit status {code})")
            try:
                # The first login takes ~2 s: do it while the minions get ready.
                token = token or self.login()
                ready = all(self._logged_ready(m, log_offsets[m]) for m in wanted)
                if ready or time.monotonic() - started > 3.0:
                    answered = self.ping(wanted, timeout=1.0, token=token)
            except (LabError, OSError) as exc:
                answered = f"error: {exc}"
            if isinstance(answered, dict) and all(answered.get(m) is True for m in wanted):
                return
            if time.monotonic() >= deadline:
                logs = log_tails([p.log_path for p in self.processes()], 15)
                raise LabError(
                    f"salt: minions {wanted} did not all answer test.ping within "
                    f"{timeout:.0f}s (last answer {answered!r})\n{logs}"
                )
            time.sleep(0.05)

    def _log_size(self, minion_id: str) -> int:
        try:
            return self._minion_logs[minion_id].stat().st_size
        except FileNotFoundError:
            return 0

    def _logged_ready(self, minion_id: str, offset: int) -> bool:
        try:
            with open(self._minion_logs[minion_id], "rb") as log:
                log.seek(offset)
                return _MINION_READY.encode() in log.read()
        except FileNotFoundError:
            return False

    def _post(self, path: str, payload: Any, token: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.api_url + path,
            data=json.dumps(payload).encode(),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                **({"X-Auth-Token": token} if token else {}),
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    # ----------------------------------------------------------------- debugging

    def log_paths(self) -> list[Path]:
        """Every log file: the daemons' output and their own log files under root_dir."""
        paths = [p.log_path for p in self.processes()]
        paths += [
            self.master_root / "var/log/salt/master",
            self.master_root / "var/log/salt/api",
        ]
        paths += list(self._minion_logs.values())
        return paths

    def logs(self, tail: int = 30) -> str:
        """The last ``tail`` lines of every log, for a failing test's report."""
        return log_tails(self.log_paths(), tail)

    def __repr__(self) -> str:
        return f"<SaltLab {self.api_url} minions={list(self.minions)}>"


# Salt's interpreter is the venv's own; keep the caller's Python settings out of it
# (an empty PYTHON* variable counts as unset).
_CLEAN_ENV = {"PYTHONPATH": "", "PYTHONHOME": "", "PYTHONSTARTUP": "", "PYTHONNOUSERSITE": "1"}
