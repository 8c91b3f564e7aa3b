"""Removal touches only what certd deployed, and no deployer writes through a planted symlink
(issue 10, findings 2 and 3), on the real local filesystem: the file deployer (layout.py over
LocalFS), the Salt deployer's shell (remove_script, guard_script run by /bin/sh here, as a
minion runs them), and the rollout's check of the store's deployment records."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from certd import config as configuration
from certd import deployers
from certd.config import FileDeployerConfig
from certd.deployers import layout
from certd.deployers.base import LEFT_ALONE, Target, file_set, placements
from certd.deployers.local import LocalFS
from certd.deployers.salt import guard_script, remove_script, switch_script
from certd.model import CertificateSpec, Deployment, DeployStatus
from certd.rollout import Rollout, targets
from tests.test_deploy_file import issued

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def target(path: Path, *, reload: str | None = None, certificate: str = "portal") -> Target:
    return Target.render(frontend="web", node="fe1", address="127.0.0.1",
                         certificate=certificate, path=str(path), check=None, reload=reload,
                         timeout=10)


def file_deployer(path: Path):
    return deployers.build(FileDeployerConfig(type="file", path=str(path)))


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed): its kind and content or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = f"dir {p.stat().st_mode & 0o777:o}"
            else:
                out[rel] = f"{p.stat().st_mode & 0o777:o} " + p.read_text()
    return out


def sh_remove(path: Path, reload: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", remove_script(str(path), reload)], capture_output=True,
                          text=True, timeout=30)


async def file_remove(path: Path, reload: str | None = None):
    [result] = await file_deployer(path).remove([target(path, reload=reload)])
    return result


# --- operator files at `path`: never certd's -----------------------------------------------

def operator_files(certs: Path, shape: str) -> Path:
    """What an operator may hold at the path an alias renders to (conf.d, openssl.cnf, a link
    to a directory of their own)."""
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "elsewhere").mkdir()
    (certs / "elsewhere" / "site.conf").write_text("server {}\n")
    path = certs / "conf.d"
    if shape == "directory":
        path.mkdir()
        (path / "site.conf").write_text("server { listen 443; }\n")
    elif shape == "file":
        path = certs / "openssl.cnf"
        path.write_text("[req]\n")
    elif shape == "foreign-link":
        path.symlink_to("elsewhere")
    elif shape == "link-into-unmarked":  # looks like certd's link, but .NAME.d holds a file
        (certs / ".conf.d.d" / "v1").mkdir(parents=True)
        (certs / ".conf.d.d" / "notes.txt").write_text("mine\n")
        path.symlink_to(".conf.d.d/v1")
    return path


SHAPES = ["directory", "file", "foreign-link", "link-into-unmarked"]


@pytest.mark.parametrize("shape", SHAPES)
async def test_file_remove_leaves_operator_files_alone(tmp_path, shape):
    path = operator_files(tmp_path / "certs", shape)
    before = snapshot(tmp_path / "certs")
    result = await file_remove(path, reload=f"touch {tmp_path / 'reloaded'}")
    assert snapshot(tmp_path / "certs") == before
    assert result.ok and result.kind == LEFT_ALONE
    assert result.message.startswith(f"file[fe1]: nothing of certd's at {path}; left alone: ")
    assert not (tmp_path / "reloaded").exists()  # nothing removed: no reload


@pytest.mark.parametrize("shape", SHAPES)
def test_salt_remove_script_leaves_operator_files_alone(tmp_path, shape):
    path = operator_files(tmp_path / "certs", shape)
    before = snapshot(tmp_path / "certs")
    done = sh_remove(path, reload=f"touch {tmp_path / 'reloaded'}")
    assert done.returncode == 0, done.stderr
    assert snapshot(tmp_path / "certs") == before
    assert "certd: removed" not in done.stdout and "certd: left alone: " in done.stdout
    assert not (tmp_path / "reloaded").exists()


# --- certd's own layout: removed, marker or not ----------------------------------------------

async def deployed(path: Path, *, marker: bool = True, twice: bool = True) -> None:
    d = file_deployer(path)
    for _ in range(2 if twice else 1):
        [result] = await d.deploy(placements([target(path)], issued()))
        assert result.ok, result.message
    if not marker:  # a set placed before the marker existed
        (path.parent / f".{path.name}.d" / layout.MARKER).unlink()


@pytest.mark.parametrize("marker", [True, False], ids=["marked", "pre-marker"])
@pytest.mark.parametrize("how", ["file", "salt"])
async def test_certd_layout_is_removed_and_reloaded(tmp_path, marker, how):
    path = tmp_path / "certs" / "portal"
    await deployed(path, marker=marker)
    (tmp_path / "certs" / "operator.conf").write_text("keep\n")
    reload = f"touch {tmp_path / 'reloaded'}"
    if how == "file":
        result = await file_remove(path, reload)
        assert result.ok and result.kind == "", result.message
        assert result.message == f"file[fe1]: removed {path}, {path.parent / '.portal.d'}"
    else:
        done = sh_remove(path, reload)
        assert done.returncode == 0, done.stderr
        assert f"certd: removed {path}\n" in done.stdout
    assert sorted(os.listdir(tmp_path / "certs")) == ["operator.conf"]
    assert (tmp_path / "reloaded").exists()


@pytest.mark.parametrize("how", ["file", "salt"])
async def test_foreign_link_at_path_is_left_alone_certd_versions_removed(tmp_path, how):
    path = tmp_path / "certs" / "portal"
    await deployed(path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "fullchain.pem").write_text("operator's\n")
    path.unlink()
    path.symlink_to(tmp_path / "mine")  # the operator repointed P at their own files
    if how == "file":
        result = await file_remove(path)
        assert result.ok and result.kind == LEFT_ALONE
        assert f"left alone: {path} is a symlink certd did not make" in result.message
    else:
        done = sh_remove(path)
        assert f"certd: left alone: {path} is a symlink certd did not make" in done.stdout
    assert path.is_symlink() and (path / "fullchain.pem").read_text() == "operator's\n"
    assert not (tmp_path / "certs" / ".portal.d").exists()


@pytest.mark.parametrize("how", ["file", "salt"])
async def test_symlinked_versions_dir_is_left_alone_at_removal(tmp_path, how):
    path = tmp_path / "certs" / "portal"
    victim = victim_dir(tmp_path)
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / ".portal.d").symlink_to(victim)
    (victim / "x").mkdir()
    path.symlink_to(".portal.d/x")
    before = snapshot(tmp_path)
    if how == "file":
        assert (await file_remove(path)).ok
    else:
        assert sh_remove(path).returncode == 0
    assert snapshot(tmp_path) == before


async def test_marker_names_the_certificate(tmp_path):
    path = tmp_path / "certs" / "portal"
    cert = issued()
    await layout.place(LocalFS(), str(path), cert.serial, file_set(cert), "portal")
    marker = tmp_path / "certs" / ".portal.d" / ".certd"
    assert marker.read_text() == "managed by certd; certificate portal\n"
    assert not marker.is_symlink()


# --- a symlink where certd expects its own directory: refused, nothing written ---------------

def victim_dir(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o755)
    (victim / "precious.txt").write_text("do not touch\n")
    (victim / "sub").mkdir()
    return victim


@pytest.mark.parametrize("where", [".portal.d", "version"])
async def test_file_deploy_refuses_a_symlinked_directory(tmp_path, where):
    path = tmp_path / "certs" / "portal"
    victim = victim_dir(tmp_path)
    cert = issued()
    versions = path.parent / ".portal.d"
    if where == ".portal.d":
        path.parent.mkdir(parents=True)
        versions.symlink_to("../victim")
        link = versions
    else:
        versions.mkdir(parents=True)
        link = versions / cert.serial
        link.symlink_to(victim)
    before = snapshot(victim)
    [result] = await file_deployer(path).deploy(placements([target(path)], cert))
    assert not result.ok and result.kind == "refused"
    assert result.message == (f"file[fe1]: {link} is a symlink; "
                              "refusing to write keys through it")
    assert snapshot(victim) == before  # no key, no chmod, nothing deleted
    assert not path.exists() and not path.is_symlink()


async def test_local_fs_never_follows_the_last_component(tmp_path):
    victim = victim_dir(tmp_path)
    (tmp_path / "d").symlink_to(victim)
    (tmp_path / "f").symlink_to(victim / "planted.pem")  # dangling: O_CREAT would create it
    before = snapshot(victim)
    fs = LocalFS()
    with pytest.raises(layout.Refused, match="is a symlink"):
        await fs.mkdir(str(tmp_path / "d"), 0o700)
    with pytest.raises(layout.Refused, match="is a symlink"):
        await fs.write(str(tmp_path / "f"), b"KEY", 0o600)
    await fs.rmtree(str(tmp_path / "d"))  # the link only
    assert snapshot(victim) == before and not (tmp_path / "d").is_symlink()


@pytest.mark.parametrize("where", [".portal.d", "version", "marker", "inside"])
def test_salt_guard_refuses_symlinks(tmp_path, where):
    certs = tmp_path / "certs"
    victim = victim_dir(tmp_path)
    versions = certs / ".portal.d"
    if where == ".portal.d":
        certs.mkdir()
        versions.symlink_to("../victim")
        bad = versions
    else:
        (versions / "0a").mkdir(parents=True)
        bad = {"version": versions / "0b", "marker": versions / ".certd",
               "inside": versions / "0a"}[where]
        (bad / "privkey.pem" if where == "inside" else bad).symlink_to(victim)
    serial = "0a" if where == "inside" else "0b"
    done = subprocess.run(["sh", "-c", guard_script(str(certs / "portal"), serial)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    said = "holds a symlink" if where == "inside" else "is a symlink"
    assert done.stderr == f"{bad} {said}; refusing to write keys through it\n"


def test_salt_guard_passes_a_clean_layout(tmp_path):
    for path in (tmp_path / "absent" / "portal", tmp_path / "portal"):
        done = subprocess.run(["sh", "-c", guard_script(str(path), "0a")],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stderr == ""


# --- the rollout: only nodes with a recorded deployment are touched --------------------------

async def test_rollout_removes_only_where_certd_deployed(tmp_path, store):
    template = str(tmp_path / "{node}" / "certs" / "{certificate}")
    cfg = configuration.parse({
        "state_dir": str(tmp_path / "state"),
        "frontends": {"web": {
            "nodes": [{"name": "fe1", "address": "127.0.0.1"},
                      {"name": "fe2", "address": "127.0.0.2"}],
            "deployer": {"type": "file", "path": template},
            "reload": f"touch {tmp_path}/reloaded-{{node}}"}},
        "certificates": []})
    spec = CertificateSpec("conf.d", ("conf.d",), ("web",))
    chosen = targets(cfg, spec)
    fe1, fe2 = (Path(t.path) for t in chosen)
    # fe1: certd deployed there (recorded); fe2: the operator's conf.d, never certd's
    [ok] = await file_deployer(fe1).deploy(placements([chosen[0]], issued("conf.d")))
    assert ok.ok
    await store.put_deployment(Deployment("conf.d", "web", "fe1", "0a", DeployStatus.DEPLOYED,
                                          "", T0))
    fe2.mkdir(parents=True)
    (fe2 / "site.conf").write_text("server {}\n")
    rollout = Rollout(cfg, store, {"web": deployers.build(cfg.frontends["web"].deployer)},
                      lambda: T0)
    results = await rollout.remove(spec, chosen)
    assert [r.ok for r in results] == [True, True]
    assert results[1].message == f"file[fe2]: nothing deployed by certd here; {fe2} left alone"
    assert not fe1.exists() and not fe1.is_symlink()
    assert (fe2 / "site.conf").read_text() == "server {}\n"
    assert (tmp_path / "reloaded-fe1").exists() and not (tmp_path / "reloaded-fe2").exists()
    records = {d.node: d.status for d in await store.deployments("conf.d")}
    assert records == {"fe1": DeployStatus.REMOVED}  # fe2: no record invented
    # again (e.g. the alias re-removed): fe1 is now recorded as removed, nothing is touched
    again = await rollout.remove(spec, chosen)
    assert all("nothing deployed by certd here" in r.message for r in again)


# --- a plain directory adopted as `legacy` is the operator's: kept, and given back ----------

@pytest.mark.parametrize("how", ["file", "salt"])
async def test_adopted_legacy_set_survives_deploys_and_is_given_back(tmp_path, how):
    path = tmp_path / "certs" / "portal"
    path.mkdir(parents=True)
    (path / "site.conf").write_text("the operator's\n")
    d = file_deployer(path)
    for _ in range(3):  # legacy is neither current nor previous after the second deploy
        [result] = await d.deploy(placements([target(path)], issued()))
        assert result.ok, result.message
    assert "legacy" in os.listdir(path.parent / ".portal.d")
    if how == "file":
        result = await file_remove(path)
        assert result.ok and "restored to the set that was there before certd" in result.message
    else:
        done = sh_remove(path)
        assert done.returncode == 0, done.stderr
        assert "restored to the set that was there before certd" in done.stdout
    assert not path.is_symlink() and (path / "site.conf").read_text() == "the operator's\n"
    assert sorted(os.listdir(tmp_path / "certs")) == ["portal"]


def test_salt_switch_keeps_legacy(tmp_path):
    certs = tmp_path / "certs"
    versions = certs / ".portal.d"
    for version in ("legacy", "a", "b", "c"):
        (versions / version).mkdir(parents=True)
    (certs / "portal").symlink_to(".portal.d/b")
    done = subprocess.run(["sh", "-c", switch_script(str(certs / "portal"), "c")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(versions)) == [".previous", "b", "c", "legacy"]


class _DiesAfterWriting:
    """A file deployer whose process 'dies' once the files are placed, before certd records
    the deployment (what kill -9 at the failpoint deploy:switched does to a daemon)."""

    kind = "file"

    def __init__(self, inner):
        self.inner = inner

    async def deploy(self, batch):
        await self.inner.deploy(batch)
        raise RuntimeError("killed")

    async def remove(self, batch):
        return await self.inner.remove(batch)


async def test_files_placed_before_a_crash_are_still_removed(tmp_path, store):
    cfg = configuration.parse({
        "state_dir": str(tmp_path / "state"),
        "frontends": {"web": {
            "nodes": [{"name": "fe1", "address": "127.0.0.1"}], "verify": False,
            "deployer": {"type": "file", "path": str(tmp_path / "{node}" / "{certificate}")}}},
        "certificates": []})
    spec = CertificateSpec("portal", ("portal.example.org",), ("web",))
    chosen = targets(cfg, spec)
    placed = Path(chosen[0].path)
    inner = deployers.build(cfg.frontends["web"].deployer)
    with pytest.raises(RuntimeError):
        await Rollout(cfg, store, {"web": _DiesAfterWriting(inner)}, lambda: T0).run(
            spec, issued("portal"), chosen)
    assert (placed / "privkey.pem").exists()
    [record] = await store.deployments("portal")
    assert record.status is DeployStatus.DEPLOYING  # written before the first file
    [result] = await Rollout(cfg, store, {"web": inner}, lambda: T0).remove(spec, chosen)
    assert result.ok and "removed" in result.message, result.message
    assert not placed.exists() and not placed.is_symlink()
