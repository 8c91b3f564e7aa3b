"""A real systemd, booted with ``systemd-nspawn`` on a throwaway copy of this machine.

Where the tests run, systemd is not PID 1 (a container/VM whose init is something else), so
a unit can only be *started* under a systemd of our own: :class:`BootedSystemd` boots
``/lib/systemd/systemd`` as PID 1 of a container whose root is an overlay of this
machine's ``/`` (writes land in a tmpfs and vanish with it), sharing this machine's network
(no ``--private-network``), so services inside reach the lab on 127.0.0.0/8 and the lab
reaches them.

Boot, in one ``unshare --mount`` (every mount dies with that namespace, nothing leaks into
this machine's mount table):

* the process moves into its own cgroup (one per hierarchy: cgroup v2, or the hybrid
  layout's ``unified`` + ``name=systemd``), so nspawn's ``payload``/``supervisor``
  sub-cgroups are made under it and :meth:`stop` removes them all;
* a tmpfs holds the overlay's upper and work directories; ``seed`` (a directory tree the
  caller fills: units, ``/etc/machine-id``...) is copied into the upper layer first;
* ``/dev`` and ``/run`` of the merged tree are emptied (nspawn refuses a populated ``/dev``;
  ``/run`` would carry this machine's runtime state);
* a tmpfs over this machine's ``/run/systemd`` (where nspawn makes ``nspawn-root`` and its
  propagation directory: on a disk here, nspawn refuses to remove them at exit, and they
  would be left behind);
* ``systemd-nspawn --boot --register=no --keep-unit`` (no machined, no host systemd to ask
  for a scope).

The default target is the caller's to seed (``etc/systemd/system/default.target``): the
network is shared, so the copy of this machine must not start its nginx, sshd, PostgreSQL...

Commands run inside with ``nsenter`` into PID 1's namespaces (:meth:`run`, :meth:`systemctl`);
files inside are reachable from here as ``/proc/<pid 1>/root/...`` (:meth:`path`).
Every wait is bounded; :meth:`stop` powers the container off, then kills by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from .procs import (
    LabError,
    StopOnExit,
    children,
    log_tail,
    running,
    start_time,
    stop_process,
    wait_until,
)

__all__ = ["BootedSystemd", "nspawn_missing"]

NSPAWN = "systemd-nspawn"

BOOT_SCRIPT = r"""
set -eu
layers=$1 root=$2 seed=$3; shift 3
for procs in $CGROUP_PROCS; do echo $$ >"$procs"; done
mount -t tmpfs -o mode=0755 certd-lab "$layers"
mkdir "$layers/upper" "$layers/work"
cp -a "$seed/." "$layers/upper/"
mount -t overlay certd-lab -o "lowerdir=/,upperdir=$layers/upper,workdir=$layers/work" "$root"
find "$root/dev" "$root/run" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
mount -t tmpfs -o mode=0755 certd-lab /run/systemd
exec systemd-nspawn --quiet --directory="$root" --boot --register=no --keep-unit \
    --link-journal=no --console=read-only --resolv-conf=off --timezone=off "$@"
"""


def nspawn_missing() -> str | None:
    """Why a container cannot be booted here, or None."""
    if shutil.which(NSPAWN) is None:
        return f"{NSPAWN} is not installed (Debian package systemd-container)"
    if os.geteuid() != 0:
        return "booting a container needs root"
    if not _cgroup_hierarchies():
        return "no writable cgroup hierarchy for systemd (/sys/fs/cgroup)"
    return None


def _cgroup_hierarchies() -> list[Path]:
    """This process's cgroup directory in each hierarchy systemd uses."""
    base = Path("/sys/fs/cgroup")
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        own["" if number == "0" else controllers] = path
    if (base / "cgroup.controllers").exists():  # cgroup v2 only
        candidates = [base / own.get("", "/").lstrip("/")]
    else:  # hybrid (or legacy): systemd's name=systemd tree, and unified if mounted
        candidates = [base / "systemd" / own.get("name=systemd", "/").lstrip("/")]
        if (base / "unified" / "cgroup.procs").exists():
            candidates.append(base / "unified" / own.get("", "/").lstrip("/"))
    return [c for c in candidates if (c / "cgroup.procs").exists() and os.access(c, os.W_OK)]


class BootedSystemd(StopOnExit):
    """systemd as PID 1 of a container on an overlay of ``/``; see the module docstring.

    ``seed``: a directory whose tree is laid over ``/`` before boot (its directories'
    modes and owners replace those of the same directories in ``/``: keep them 0755 root).
    ``binds``: ``(host path, container path, read_only)`` bind mounts, live both ways.
    """

    def __init__(self, workdir: Path, seed: Path,
                 binds: Sequence[tuple[Path, str, bool]] = ()) -> None:
        self.workdir = workdir
        self.seed = seed
        self.binds = list(binds)
        self.log_path = workdir / "nspawn.log"
        self.name = f"certd-lab-{uuid.uuid4().hex[:12]}"
        self.cgroups = [directory / self.name for directory in _cgroup_hierarchies()]
        self.popen: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None  # the container's PID 1, as seen from here
        self._leader_start: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> BootedSystemd:
        """Boot and wait (up to ``timeout`` s) until PID 1 says the system is running (or
        ``degraded``: some unit of this machine's copy failed, ours are what count)."""
        layers, root = self.workdir / "layers", self.workdir / "root"
        self.workdir.mkdir(parents=True, exist_ok=True)
        layers.mkdir()
        root.mkdir()
        for cgroup in self.cgroups:
            cgroup.mkdir()
        args = [f"--machine={self.name}"]
        for host, inside, read_only in self.binds:
            args.append(f"--bind{'-ro' if read_only else ''}={host}:{inside}")
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", BOOT_SCRIPT,
                 "boot", str(layers), str(root), str(self.seed), *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "CGROUP_PROCS": " ".join(
                    str(c / "cgroup.procs") for c in self.cgroups)},
            )
        try:
            self.leader = wait_until(self._find_leader, timeout, interval=0.1,
                                     what="the container's PID 1")
            self._leader_start = start_time(self.leader)
            wait_until(self._booted, timeout, interval=0.2, what="the container to boot")
        except BaseException:
            self.stop()
            raise
        return self

    def _find_leader(self) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            raise LabError(f"systemd-nspawn exited ({self.popen and self.popen.returncode}):\n"
                           + self.log_tail())
        own = os.readlink("/proc/self/ns/pid")
        for pid in children(self.popen.pid):
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") != own:
                    return pid
            except OSError:
                continue
        return None

    def _booted(self) -> bool:
        if self.popen is None or self.popen.poll() is not None:
            raise LabError("systemd-nspawn exited during boot:\n" + self.log_tail())
        state = self.systemctl("is-system-running", check=False, timeout=10).stdout.strip()
        return state in ("running", "degraded")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """``systemctl poweroff`` and up to ``timeout`` s for nspawn to exit; then SIGTERM /
        SIGKILL to nspawn's group and SIGKILL to the container's PID 1 (which takes its
        whole PID namespace along), by PID; then remove the cgroups. Idempotent."""
        if self.popen is None:
            return
        try:
            if self.alive() and self.leader is not None:
                self.run("systemctl", "--no-block", "poweroff", check=False, timeout=10)
                try:
                    wait_until(lambda: not self.alive(), timeout, interval=0.1,
                               what="the container to power off")
                except LabError:
                    pass
            stop_process(self.popen, 5.0)
        finally:
            leader = self.leader
            if leader is not None and start_time(leader) == self._leader_start \
                    and running(leader):
                os.kill(leader, signal.SIGKILL)
                wait_until(lambda: start_time(leader) != self._leader_start, 10,
                           what="the container's PID 1 to die")
            self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        for top in self.cgroups:
            if not top.exists():
                continue
            directories = sorted((p for p in top.rglob("*") if p.is_dir()),
                                 key=lambda p: len(p.parts), reverse=True) + [top]

            def removed(directories: list[Path] = directories) -> bool:
                for directory in directories:
                    try:
                        directory.rmdir()
                    except FileNotFoundError:
                        pass
                    except OSError:  # still has processes (dying): try again
                        return False
                return True

            wait_until(removed, 10, interval=0.1, what=f"{top} to be empty")

    # ---------------------------------------------------------------- inside it

    def run(self, *argv: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container (all of PID 1's namespaces), output captured."""
        if self.leader is None:
            raise LabError("container not booted")
        result = subprocess.run(
            ["nsenter", f"--target={self.leader}", "--all", "--", *argv],
            input=input, capture_output=True, text=True, timeout=timeout, check=False,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""},
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise LabError(f"{' '.join(argv)} exited {result.returncode} in the container:\n"
                           f"{result.stdout}{result.stderr}")
        return result

    def systemctl(self, *args: str, check: bool = True,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        """The unit's journal, messages only."""
        return self.run("journalctl", "--no-pager", "--quiet", "-o", "cat",
                        f"--unit={unit}", check=False, timeout=30).stdout

    def path(self, inside: str) -> Path:
        """A path inside the container, as reachable from here."""
        if self.leader is None:
            raise LabError("container not booted")
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def log_tail(self, lines: int = 60) -> str:
        return f"--- {self.log_path} ---\n" + log_tail(self.log_path, lines)
