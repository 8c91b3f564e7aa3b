"""certd/deployers/file.py and local.py: versioned sets switched by one symlink, real commands
run without a shell, rollback when check or reload fails."""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

from certd import deployers
from certd.config import FileDeployerConfig
from certd.deployers.base import Target, file_set, placements
from certd.deployers.file import FileDeployer
from certd.deployers import layout
from certd.deployers.local import LocalFS, run_command
from certd.keys import cert_info, cert_to_pem, generate_key, key_to_pem, self_signed
from certd.model import IssuedCertificate
from tests.lab.procs import LabError, running, wait_until

PY = shlex.quote(sys.executable)


def issued(name: str = "portal", domain: str = "portal.example.org") -> IssuedCertificate:
    key = generate_key("ec-p256")
    leaf = self_signed(key, domain, days=90)
    ca = self_signed(generate_key("ec-p256"), "intermediate.example", days=365)
    info = cert_info(leaf)
    return IssuedCertificate(
        name=name, serial=info.serial, domains=info.domains, not_before=info.not_before,
        not_after=info.not_after, cert_pem=cert_to_pem(leaf), chain_pem=cert_to_pem(ca),
        key_pem=key_to_pem(key), fingerprint_sha256=info.fingerprint_sha256,
    )


@pytest.fixture(autouse=True)
def permissive_umask():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def template(tmp_path) -> str:
    return str(tmp_path / "nodes" / "{node}" / "certs" / "{certificate}")


def target(template: str, *, check: str | None = None, reload: str | None = None,
           timeout: float = 10, certificate: str = "portal", node: str = "fe1") -> Target:
    return Target.render(frontend="web", node=node, address="127.0.0.1",
                         certificate=certificate, path=template, check=check, reload=reload,
                         timeout=timeout)


class OneNode:
    """The deployer, one target at a time (its Protocol takes batches)."""

    def __init__(self, built: FileDeployer):
        self.built = built

    async def deploy(self, target: Target, cert: IssuedCertificate):
        [result] = await self.built.deploy(placements([target], cert))
        return result

    async def roll_back(self, target: Target):
        [result] = await self.built.roll_back([target])
        return result

    async def remove(self, target: Target):
        [result] = await self.built.remove([target])
        return result


def deployer(template: str) -> OneNode:
    built = deployers.build(FileDeployerConfig(type="file", path=template))
    assert isinstance(built, FileDeployer)
    return OneNode(built)


def current_version(path: Path) -> str | None:
    return os.path.basename(os.readlink(path)) if path.is_symlink() else None


def versions_of(path: Path) -> set[str]:
    return {p.name for p in (path.parent / f".{path.name}.d").iterdir()
            if not p.name.startswith(".")}


def served_serial(path: Path, cert: IssuedCertificate) -> bool:
    return (path / "cert.pem").read_text() == cert.cert_pem


# --- placing files -------------------------------------------------------------------------

async def test_deploy_places_the_five_files(template):
    cert = issued()
    t = target(template)
    result = await deployer(template).deploy(t, cert)
    assert result.ok, result.message
    assert result.message == f"file[fe1]: deployed serial {cert.serial}"
    assert not result.rolled_back
    path = Path(t.path)
    assert path == Path(template.format(node="fe1", certificate="portal"))
    files = {p.name: p for p in path.iterdir()}
    assert set(files) == {"fullchain.pem", "privkey.pem", "cert.pem", "chain.pem",
                          "combined.pem"}
    assert files["cert.pem"].read_text() == cert.cert_pem
    assert files["chain.pem"].read_text() == cert.chain_pem
    assert files["fullchain.pem"].read_text() == cert.cert_pem + cert.chain_pem
    assert files["privkey.pem"].read_text() == cert.key_pem
    assert files["combined.pem"].read_text() == cert.key_pem + cert.cert_pem + cert.chain_pem
    modes = {name: stat.S_IMODE(os.stat(p).st_mode) for name, p in files.items()}
    assert modes == {"fullchain.pem": 0o644, "privkey.pem": 0o600, "cert.pem": 0o644,
                     "chain.pem": 0o644, "combined.pem": 0o600}


async def test_path_is_a_relative_symlink_to_a_versioned_dir(template):
    cert = issued()
    t = target(template)
    await deployer(template).deploy(t, cert)
    path = Path(t.path)
    assert path.is_symlink()
    link = os.readlink(path)
    assert link == f".portal.d/{cert.serial}"
    assert not os.path.isabs(link)
    assert current_version(path) == cert.serial
    assert (path.parent / ".portal.d" / cert.serial).is_dir()


async def test_second_deploy_keeps_exactly_the_previous_version(template):
    d = deployer(template)
    t = target(template)
    path = Path(t.path)
    first, second, third = issued(), issued(), issued()
    for cert in (first, second):
        assert (await d.deploy(t, cert)).ok
    assert current_version(path) == second.serial
    assert versions_of(path) == {first.serial, second.serial}
    assert served_serial(path, second)
    assert (await d.deploy(t, third)).ok
    assert versions_of(path) == {second.serial, third.serial}


async def test_redeploying_the_same_certificate(template):
    d = deployer(template)
    t = target(template)
    path = Path(t.path)
    first, second = issued(), issued()
    assert (await d.deploy(t, first)).ok
    assert (await d.deploy(t, second)).ok
    live = path.parent / ".portal.d" / second.serial
    inode = live.stat().st_ino
    (live / "cert.pem").chmod(0o600)  # someone tampered with a file
    # deploying the same certificate again (`certd deploy`) is idempotent ...
    result = await d.deploy(t, second)
    assert result.ok, result.message
    assert current_version(path) == second.serial
    assert served_serial(path, second)
    assert stat.S_IMODE((path / "cert.pem").stat().st_mode) == 0o644
    # ... keeps the live directory in place (P never dangles) ...
    assert live.stat().st_ino == inode
    # ... and keeps the previous set for rollback
    assert versions_of(path) == {first.serial, second.serial}


async def test_failing_check_rolls_back_to_the_previous_serial(template):
    d = deployer(template)
    path = Path(target(template).path)
    good, bad = issued(), issued()
    assert (await d.deploy(target(template, check="true"), good)).ok
    result = await d.deploy(target(template, check="false"), bad)
    assert not result.ok
    assert result.rolled_back
    assert result.message.startswith("file[fe1]: check: false: exit 1")
    assert current_version(path) == good.serial
    assert served_serial(path, good)
    # the failed set is not lost, the next good deploy prunes it
    newer = issued()
    assert (await d.deploy(target(template), newer)).ok
    assert versions_of(path) == {good.serial, newer.serial}


async def test_failing_check_on_first_deploy_has_nothing_to_roll_back(template):
    result = await deployer(template).deploy(target(template, check="false"), issued())
    assert not result.ok
    assert not result.rolled_back


async def test_failing_reload_rolls_back_and_captures_output(template, tmp_path):
    d = deployer(template)
    path = Path(target(template).path)
    good, bad = issued(), issued()
    assert (await d.deploy(target(template), good)).ok
    counter = tmp_path / "reloads"
    reload = (f"sh -c 'echo reload >> {counter}; echo nginx: [emerg] broken >&2; "
              f"echo on stdout; exit 3'")
    result = await d.deploy(target(template, check="true", reload=reload), bad)
    assert not result.ok
    assert result.rolled_back
    assert "reload: " in result.message and "exit 3" in result.message
    assert "nginx: [emerg] broken" in result.output
    assert "on stdout" in result.output
    assert "$ true" in result.output
    assert current_version(path) == good.serial
    assert served_serial(path, good)
    # the reload ran again after the rollback, so the server reads the restored files
    assert counter.read_text().count("reload") == 2


async def test_reload_output_on_success(template):
    result = await deployer(template).deploy(
        target(template, reload="sh -c 'echo reloaded fine'"), issued())
    assert result.ok
    assert "reloaded fine" in result.output


async def test_reload_timeout_fails_cleanly(template, tmp_path):
    d = deployer(template)
    path = Path(target(template).path)
    good, bad = issued(), issued()
    assert (await d.deploy(target(template), good)).ok
    pids = tmp_path / "pids"
    # the shell and a grandchild it starts: both must be gone after the timeout
    reload = f"sh -c 'sleep 5 & echo $! >> {pids}; echo $$ >> {pids}; wait'"
    result = await d.deploy(target(template, reload=reload, timeout=0.5), bad)
    assert not result.ok
    assert result.rolled_back
    assert "timed out after 0.5s" in result.message
    assert current_version(path) == good.serial
    for pid in map(int, pids.read_text().split()):
        assert not _alive(pid), pid


def _alive(pid: int) -> bool:
    """True while `pid` still runs after 5 s (a zombie waiting for a reaper counts as gone)."""
    try:  # bounded: a killed process disappears promptly
        wait_until(lambda: not running(pid), 5.0, interval=0.05, what=f"pid {pid} to end")
    except LabError:
        return True
    return False


async def test_missing_command_fails_cleanly(template):
    d = deployer(template)
    good, bad = issued(), issued()
    assert (await d.deploy(target(template), good)).ok
    result = await d.deploy(target(template, check="/nonexistent/certd-check --now"), bad)
    assert not result.ok
    assert result.rolled_back
    assert "cannot start" in result.message
    assert current_version(Path(target(template).path)) == good.serial


async def test_unparseable_command_fails_cleanly(template):
    result = await deployer(template).deploy(target(template, reload="sh -c 'unclosed"),
                                             issued())
    assert not result.ok
    assert "cannot parse" in result.message


async def test_placeholders_are_substituted_per_argument(template, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "argv.json"
    script = "import sys, json; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"
    reload = f'{PY} -c "{script}" {out} {{certificate}} {{node}} {{address}}'
    name = "my cert; touch PWNED"
    node = "fe'1 $(touch PWNED2)"
    t = Target.render(frontend="web", node=node, address="127.0.0.1", certificate=name,
                      path=str(tmp_path / "certs" / "x"), check=None, reload=reload,
                      timeout=10)
    result = await deployer(template).deploy(t, issued())
    assert result.ok, result.message + result.output
    assert json.loads(out.read_text()) == [name, node, "127.0.0.1"]
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


async def test_unwritable_path_fails_cleanly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    template = str(blocker / "{certificate}")
    result = await deployer(template).deploy(target(template), issued())
    assert not result.ok
    assert result.message.startswith("file[fe1]: write ")


# --- legacy directories, crash leftovers ----------------------------------------------------

async def test_plain_directory_is_adopted_as_legacy(template):
    path = Path(target(template).path)
    path.mkdir(parents=True)
    (path / "fullchain.pem").write_text("OLD CHAIN")
    (path / "privkey.pem").write_text("OLD KEY")
    d = deployer(template)
    cert = issued()
    assert (await d.deploy(target(template), cert)).ok
    assert path.is_symlink()
    assert versions_of(path) == {"legacy", cert.serial}
    assert (path.parent / ".portal.d" / "legacy" / "fullchain.pem").read_text() == "OLD CHAIN"


async def test_rollback_to_legacy(template):
    path = Path(target(template).path)
    path.mkdir(parents=True)
    (path / "fullchain.pem").write_text("OLD CHAIN")
    result = await deployer(template).deploy(target(template, check="false"), issued())
    assert not result.ok
    assert result.rolled_back
    assert current_version(path) == "legacy"
    assert (path / "fullchain.pem").read_text() == "OLD CHAIN"


async def test_crash_leftovers_are_cleaned_and_never_pointed_at(template):
    path = Path(target(template).path)
    versions = path.parent / ".portal.d"
    versions.mkdir(parents=True)
    for leftover in (".tmp-deadbeef-1234", ".tmp-0a-99999"):
        (versions / leftover).mkdir()
        (versions / leftover / "fullchain.pem").write_text("half written")
    cert = issued()
    assert (await deployer(template).deploy(target(template), cert)).ok
    assert not any(p.name.startswith(".tmp-") for p in versions.iterdir())
    assert not os.readlink(path).split("/")[-1].startswith(".tmp-")
    assert served_serial(path, cert)


async def test_each_placement_points_at_a_complete_set(tmp_path):
    """After every placement P resolves to a directory holding all five files."""
    path = tmp_path / "p"
    for _ in range(3):
        cert = issued()
        await layout.place(LocalFS(), str(path), cert.serial, file_set(cert))
        assert sorted(os.listdir(path)) == sorted(f.name for f in file_set(cert))


async def test_remove(tmp_path):
    path = tmp_path / "p"
    cert = issued()
    await layout.place(LocalFS(), str(path), cert.serial, file_set(cert))
    await layout.remove(LocalFS(), str(path))
    assert not path.exists() and not path.is_symlink()
    assert not (tmp_path / ".p.d").exists()


async def test_roll_back_and_remove_through_the_deployer(template):
    d = deployer(template)
    t = target(template, reload="true")
    path = Path(t.path)
    first, second = issued(), issued()
    assert (await d.deploy(t, first)).ok and (await d.deploy(t, second)).ok
    back = await d.roll_back(t)
    assert back.ok and back.rolled_back and current_version(path) == first.serial
    removed = await d.remove(t)
    assert removed.ok and not path.exists() and not path.is_symlink()


# --- run_command -------------------------------------------------------------------------

async def test_run_command_results():
    ok = await run_command("sh -c 'echo hi'", 10)
    assert ok.ok and ok.returncode == 0 and ok.output == "hi\n"
    bad = await run_command("sh -c 'echo why >&2; exit 3'", 10)
    assert not bad.ok and bad.returncode == 3
    assert bad.describe() == "sh -c 'echo why >&2; exit 3': exit 3: why"
    empty = await run_command("", 10)
    assert not empty.ok and empty.output == "empty command"


async def test_run_command_output_is_bounded():
    result = await run_command(f"{PY} -c \"print('x' * 100000)\"", 10)
    assert result.ok
    assert len(result.output) <= 8192

