"""The Salt deployer: certd speaks HTTP to salt-api (never imports salt).

`mode: pull` (the default; certd/deployers/salt_pull.py): one `state.high` job per batch;
each minion fetches its batch from certd's API with a one-shot token, so no key ever travels
through Salt; one check and one reload per minion. `mode: push` (chosen explicitly): one
`state.high` job per certificate (a batch goes one certificate after another) targets the
minions:
`file.managed` writes the five files into a new version directory (key files 0600,
`show_changes: False`), then `cmd.run` states switch the symlink,
run `check` and `reload`, and an `onfail` state switches back if either fails. A minion counts
as done only if it answered, its retcode is 0 and every state succeeded.

The same versioned layout as certd/deployers/layout.py, expressed as shell for the minion.
Note: in push mode the job arguments (the private key) reach the master's job cache and
event bus; deploy/salt/README.md says how to limit that.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import re
import shlex
from typing import Any

import aiohttp

from certd.config import SaltDeployerConfig
from certd.deployers import salt_pull
from certd.deployers.base import (
    LEFT_ALONE,
    DeployResult,
    PemFile,
    Placement,
    Target,
    file_set,
    removal_message,
)
from certd.deployers.layout import MARKER, PREVIOUS, marker_text
from certd.errors import DeployError
from certd.httputil import BodyTooLarge, read_limited
from certd.model import IssuedCertificate, utcnow
from certd.text import one_line

MAX_BODY = 16 << 20
OUTPUT_LIMIT = 8192  # characters of command output kept per node, as the file deployer
GATHER_JOB_TIMEOUT = 5  # seconds; a dead minion costs timeout + this


def _paths(path: str) -> tuple[str, str, str]:
    parent, name = posixpath.split(path.rstrip("/"))
    return parent or "/", name, f".{name}.d"


def switch_script(path: str, serial: str) -> str:
    """Point P at version `serial`, remembering the old one as .previous; adopt a plain
    directory as 'legacy' (kept: given back at removal); prune the rest but the two."""
    parent, name, v = (shlex.quote(x) for x in _paths(path))
    s = shlex.quote(serial)
    return (
        f"set -e; cd {parent}; cur=''; "
        f"if [ -d {name} ] && [ ! -L {name} ]; then rm -rf {v}/legacy; mv {name} {v}/legacy; "
        f"cur=legacy; elif [ -L {name} ]; then cur=$(basename \"$(readlink {name})\"); fi; "
        f"if [ -n \"$cur\" ] && [ \"$cur\" != {s} ]; then "
        f"ln -sfn \"$cur\" {v}/.previous.tmp && mv -Tf {v}/.previous.tmp {v}/.previous; fi; "
        f"ln -sfn {v}/{s} {name}.tmp && mv -Tf {name}.tmp {name}; "
        f"prev=$(readlink {v}/.previous || true); "
        f"for d in {v}/*; do b=$(basename \"$d\"); "
        f"[ \"$b\" = {s} ] || [ \"$b\" = \"$prev\" ] || [ \"$b\" = legacy ] || rm -rf \"$d\"; "
        "done"
    )


def rollback_script(path: str) -> str:
    parent, name, v = (shlex.quote(x) for x in _paths(path))
    return (
        f"set -e; cd {parent}; prev=$(readlink {v}/.previous); test -d {v}/\"$prev\"; "
        f"ln -sfn {v}/\"$prev\" {name}.tmp && mv -Tf {name}.tmp {name}; echo \"$prev\""
    )


def guard_script(path: str, serial: str) -> str:
    """Refuse (exit 1, one line on stderr) if .NAME.d, the version directory, the marker or
    any entry of the version directory is a symlink, or a directory is something else: the
    file states require this one, so nothing is written through a planted link. `find -P`
    and `[ -L ]` never follow links. A missing parent is fine (makedirs creates it)."""
    parent, _, v = _paths(path)
    p, vd, sd = (shlex.quote(x) for x in (parent, v, f"{v}/{serial}"))
    say = "printf '%s/%s %s\\n' " + p  # stderr: 'PARENT/ENTRY is a symlink; refusing ...'
    link = "'is a symlink; refusing to write keys through it'"
    return (
        f"cd {p} 2>/dev/null || exit 0; "
        f"for d in {vd} {sd} {vd}/{MARKER}; do "
        f"if [ -L \"$d\" ]; then {say} \"$d\" {link} >&2; exit 1; fi; done; "
        f"for d in {vd} {sd}; do if [ -e \"$d\" ] && [ ! -d \"$d\" ]; then "
        f"{say} \"$d\" 'is not a directory; refusing to write keys there' >&2; exit 1; fi; "
        "done; "
        f"if [ -d {sd} ] && [ -n \"$(find -P {sd} -mindepth 1 -maxdepth 1 -type l)\" ]; then "
        f"{say} {sd} 'holds a symlink; refusing to write keys through it' >&2; exit 1; fi"
    )


def remove_script(path: str, reload: str | None = None) -> str:
    """The rule of layout.remove, as shell: .NAME.d is removed only if it is a real directory
    holding the marker (or, placed before the marker, has certd's shape: P links to
    `.NAME.d/<dir>`, only directories, .tmp-* and the .previous link inside); P only if it
    is a symlink into that .NAME.d. Prints `certd: removed X` and `certd: left alone: X ...`
    lines; runs `reload` only if something was removed."""
    parent, name, v = _paths(path)
    p, n, d = shlex.quote(parent), shlex.quote(name), shlex.quote(v)
    full = shlex.quote(posixpath.join(parent, name))
    vfull = shlex.quote(posixpath.join(parent, v))
    into = f"{d}/?*"  # a case pattern: `.NAME.d/<something>`, checked for a further / below
    return (
        f"cd {p} 2>/dev/null || {{ echo certd: nothing at {p}; exit 0; }}; "
        "mine=no; why=''; removed=''; "
        f"t=$(readlink {n} 2>/dev/null || true); cur=''; "
        f"case \"$t\" in {into}) cur=${{t#{d}/}}; case \"$cur\" in */*|.|..) cur='';; esac;; "
        "esac; "
        f"if [ -L {d} ]; then why='is a symlink certd did not make'; "
        f"elif [ -d {d} ]; then "
        f"if [ -f {d}/{MARKER} ] && [ ! -L {d}/{MARKER} ]; then mine=yes; "
        f"elif [ -n \"$cur\" ] && [ -d {d}/\"$cur\" ] && [ ! -L {d}/\"$cur\" ]; then mine=yes; "
        f"for e in {d}/* {d}/.[!.]* {d}/..?*; do "
        "[ -e \"$e\" ] || [ -L \"$e\" ] || continue; b=${e##*/}; "
        "case \"$b\" in .tmp-*) continue;; esac; "
        f"if [ \"$b\" = {PREVIOUS} ] && [ -L \"$e\" ]; then continue; fi; "
        "if [ -d \"$e\" ] && [ ! -L \"$e\" ]; then case \"$b\" in .*) mine=no;; esac; "
        "else mine=no; fi; done; fi; "
        "[ $mine = yes ] || why=\"has no certd marker and is not certd's layout\"; "
        f"elif [ -e {d} ]; then why='is a file certd did not make'; fi; "
        f"if [ -L {n} ] && [ $mine = yes ] && [ -n \"$cur\" ]; then rm -f {n}; "
        f"echo certd: removed {full}; removed=yes; "
        f"elif [ -L {n} ]; then echo certd: left alone: {full} is a symlink certd did not make; "
        f"elif [ -d {n} ]; then echo certd: left alone: {full} is a directory certd did not make; "
        f"elif [ -e {n} ]; then echo certd: left alone: {full} is a file certd did not make; fi; "
        f"if [ $mine = yes ] && [ -d {d}/legacy ] && [ ! -L {d}/legacy ] && [ ! -e {n} ] "
        f"&& [ ! -L {n} ]; then mv {d}/legacy {n}; "
        f"echo certd: left alone: {full} restored to the set that was there before certd; fi; "
        f"if [ $mine = yes ]; then rm -rf {d}; echo certd: removed {vfull}; removed=yes; "
        f"elif [ -n \"$why\" ]; then echo certd: left alone: {vfull} \"$why\"; fi; "
        + (f"if [ -n \"$removed\" ]; then {reload}; fi" if reload else "true")
    )


def high_data(target: Target, cert: IssuedCertificate) -> dict[str, Any]:
    """The state.high document for one certificate on the batch's minions."""
    parent, name, v = _paths(target.path)
    version_dir = posixpath.join(parent, v, cert.serial)
    ident = f"certd-{target.certificate}"
    guard = [{"cmd": f"{ident}-guard"}]
    high: dict[str, Any] = {f"{ident}-guard": {"__sls__": "certd", "__env__": "base", "cmd": [
        "run", {"name": guard_script(target.path, cert.serial)}, {"order": 1}]}}
    files = []
    marker = PemFile(MARKER, marker_text(target.certificate), 0o644)
    for f, where in [*((f, version_dir) for f in file_set(cert)),
                     (marker, posixpath.join(parent, v))]:
        sid = f"{ident}-{f.name}"
        files.append({"file": sid})
        high[sid] = {"__sls__": "certd", "__env__": "base", "file": [
            "managed", {"name": posixpath.join(where, f.name)},
            {"contents": f.content}, {"mode": f"0{f.mode:o}"}, {"makedirs": True},
            {"dir_mode": "0711"}, {"show_changes": False}, {"order": 1},
            {"require": guard}]}
    steps = [("switch", switch_script(target.path, cert.serial), files)]
    previous = [{"cmd": f"{ident}-switch"}]
    for step, command in (("check", target.check), ("reload", target.reload)):
        if command:
            steps.append((step, command, previous))
            previous = [{"cmd": f"{ident}-{step}"}]
    for step, command, require in steps:
        high[f"{ident}-{step}"] = {"__sls__": "certd", "__env__": "base", "cmd": [
            "run", {"name": command}, {"require": require}]}
    undo = rollback_script(target.path) + (f" && {target.reload}" if target.reload else "")
    watched = [{"cmd": f"{ident}-{s}"} for s, _, _ in steps[1:]]
    if watched:
        high[f"{ident}-rollback"] = {"__sls__": "certd", "__env__": "base", "cmd": [
            "run", {"name": undo}, {"onfail": watched}]}
    return high


class SaltDeployer:
    kind = "salt"

    def __init__(self, config: SaltDeployerConfig, store=None):
        self.config = config
        self.store = store  # pull mode: where the bundle tokens go (certd's store)
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._login_lock = asyncio.Lock()

    # salt-api ---------------------------------------------------------------------------
    async def _post(self, path: str, payload: Any, token: str | None = None
                    ) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Accept": "application/json"}
        if token:
            headers["X-Auth-Token"] = token
        timeout = aiohttp.ClientTimeout(total=self.config.timeout.total_seconds() + 30)
        try:
            async with self._session.post(self.config.url + path, json=payload,
                                          headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    return resp.status, None
                try:
                    body = await read_limited(resp, MAX_BODY)
                except BodyTooLarge:
                    raise DeployError(f"salt[{self.config.url}]: answer larger than "
                                      f"{MAX_BODY} bytes", node="*", kind="salt") from None
                try:
                    return resp.status, json.loads(body)
                except (ValueError, RecursionError):  # RecursionError: nested too deep
                    raise DeployError(f"salt[{self.config.url}]: answer is not JSON",
                                      node="*", kind="salt") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise DeployError(f"salt[{self.config.url}]: {type(exc).__name__}: {exc}",
                              node="*", transient=True, kind="unreachable") from None

    async def _login(self) -> str:
        async with self._login_lock:
            if self._token:
                return self._token
            try:
                password = (await asyncio.to_thread(self.config.password_file.read_text)).strip()
            except OSError as exc:
                raise DeployError(f"salt: password_file {self.config.password_file}: "
                                  f"{exc.strerror}", node="*", kind="auth") from None
            status, doc = await self._post("/login", {
                "username": self.config.username, "password": password,
                "eauth": self.config.eauth})
            token = _token(doc) if status == 200 else None
            if not token:
                raise DeployError(f"salt[{self.config.url}]: login as {self.config.username} "
                                  f"({self.config.eauth}) refused: HTTP {status}",
                                  node="*", kind="auth")
            self._token = token
            return token

    async def run(self, lowstate: dict[str, Any]) -> dict[str, Any]:
        """One call; the token is refreshed once on 401. Returns {minion: answer}."""
        for attempt in (1, 2):
            token = await self._login()
            status, doc = await self._post("/", [lowstate], token)
            if status == 401 and attempt == 1:
                self._token = None
                continue
            if status != 200:
                raise DeployError(f"salt[{self.config.url}]: HTTP {status}", node="*",
                                  kind="salt")
            try:
                answers = doc["return"][0]
            except (KeyError, IndexError, TypeError):
                raise DeployError(f"salt[{self.config.url}]: unexpected answer", node="*",
                                  kind="salt") from None
            return answers if isinstance(answers, dict) else {}
        raise DeployError(f"salt[{self.config.url}]: token refused", node="*", kind="auth")

    def _job(self, targets: list[Target], fun: str, arg: list) -> dict[str, Any]:
        return {"client": "local", "tgt": [t.minion for t in targets], "tgt_type": "list",
                "fun": fun, "arg": arg, "full_return": True,
                "timeout": int(self.config.timeout.total_seconds()),
                # how long the master asks a silent minion whether it is still working
                "gather_job_timeout": GATHER_JOB_TIMEOUT}

    # Deployer ---------------------------------------------------------------------------
    async def deploy(self, batch: list[Placement]) -> list[DeployResult]:
        if self.config.mode == "pull":
            return await self._deploy_pull(batch)
        return await self._deploy_push(batch)

    async def _deploy_pull(self, batch: list[Placement]) -> list[DeployResult]:
        """One job per group of minions whose placements render alike (usually one job for
        the whole batch); each minion pulls the same bundle with its own token."""
        by_node: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(batch):
            by_node.setdefault((p.target.frontend, p.target.node), []).append(i)
        groups: dict[tuple, list[tuple[str, str]]] = {}
        for node, indexes in by_node.items():
            sig = tuple((batch[i].target.certificate, batch[i].cert.serial, batch[i].target.path,
                         batch[i].target.check, batch[i].target.reload) for i in indexes)
            groups.setdefault(sig, []).append(node)
        out: list[DeployResult | None] = [None] * len(batch)
        for nodes in groups.values():
            share = [[batch[i] for i in by_node[n]] for n in nodes]
            try:
                results = await self._pull_job(share)
            except DeployError as exc:
                results = [[DeployResult(p.target, False,
                                         str(exc).replace("[*]", f"[{p.target.node}]"),
                                         kind=exc.kind) for p in mine] for mine in share]
            for n, node_results in zip(nodes, results):
                for i, r in zip(by_node[n], node_results):
                    out[i] = r
        return out  # type: ignore[return-value]

    async def _pull_job(self, share: list[list[Placement]]) -> list[list[DeployResult]]:
        if self.store is None:
            raise DeployError("salt: mode pull needs certd's store (build the deployer with "
                              "it)", node="*", kind="write")
        first = share[0]
        bundle = salt_pull.bundle_tar([(p.target.certificate, p.cert) for p in first])
        digest = hashlib.sha256(bundle).hexdigest()
        batch_id = salt_pull.new_batch()
        items = [(p.target.certificate, p.cert.serial) for p in first]
        minions = [mine[0].target.minion or mine[0].target.node for mine in share]
        tokens = {m: salt_pull.new_token() for m in minions}
        now = utcnow()
        await self.store.expire_bundle_tokens(now)
        try:
            for minion, token in tokens.items():
                await self.store.create_bundle_token(
                    salt_pull.token_digest(token), batch=batch_id, minion=minion, items=items,
                    now=now, expires_at=now + self.config.pull_token_ttl)
            high = salt_pull.pull_high(first, batch_id, tokens, self.config.pull_url or "",
                                       digest, self.config.pull_cafile)
            answers = await self.run(self._job([mine[0].target for mine in share],
                                               "state.high", [high]))
        finally:  # the job is over: no token of it stays valid, used or not
            await self.store.expire_bundle_tokens(utcnow(), batch_id)
        return [_pull_results(mine, answers.get(minion))
                for mine, minion in zip(share, minions)]

    async def _deploy_push(self, batch: list[Placement]) -> list[DeployResult]:
        """The minimal adaptation to batches: one state.high job per certificate, one after
        another (each with its own check and reload on its minions), so a batch costs a
        reload per certificate here. Pull mode will bring one job per batch."""
        by_cert: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(batch):
            by_cert.setdefault((p.target.certificate, p.cert.serial), []).append(i)
        out: list[DeployResult | None] = [None] * len(batch)
        for indexes in by_cert.values():
            cert = batch[indexes[0]].cert
            results = await self._by_rendering([batch[i].target for i in indexes],
                                               lambda b, cert=cert: self._deploy(b, cert))
            for i, result in zip(indexes, results):
                out[i] = result
        return out  # type: ignore[return-value]

    async def _deploy(self, batch: list[Target], cert: IssuedCertificate
                      ) -> list[DeployResult]:
        answers = await self.run(self._job(batch, "state.high", [high_data(batch[0], cert)]))
        return [_state_result(t, answers.get(t.minion), cert) for t in batch]

    async def roll_back(self, targets: list[Target]) -> list[DeployResult]:
        return await self._by_rendering(targets, lambda b: self._commands(
            b, rollback_script(b[0].path), "rolled back"))

    async def remove(self, targets: list[Target]) -> list[DeployResult]:
        return await self._by_rendering(targets, self._remove)

    async def _remove(self, batch: list[Target]) -> list[DeployResult]:
        script = remove_script(batch[0].path, batch[0].reload)
        answers = await self.run(self._job(batch, "cmd.run_all", [script]))
        out = []
        for t in batch:
            answer = answers.get(t.minion)
            ret = answer.get("ret") if isinstance(answer, dict) else None
            where = f"salt[{t.node}]"
            if not isinstance(ret, dict):
                out.append(DeployResult(t, False, f"{where}: minion {t.minion} did not "
                                        "answer", kind="unreachable"))
                continue
            stdout = str(ret.get("stdout", ""))[:OUTPUT_LIMIT]
            lines = [_clean(x[len("certd: "):], 300) for x in stdout.splitlines()
                     if x.startswith("certd: ")]
            removed = [x[len("removed "):] for x in lines if x.startswith("removed ")]
            left = [x[len("left alone: "):] for x in lines if x.startswith("left alone: ")]
            message = removal_message(where, t.path, removed, left)
            if ret.get("retcode") != 0:
                stage = "reload" if removed else "remove"
                out.append(DeployResult(t, False, f"{message}; {stage}: exit "
                                        f"{_clean(repr(ret.get('retcode')), 40)}: "
                                        f"{_clean(str(ret.get('stderr', ''))[-200:], 200)}",
                                        output=stdout, kind=stage))
            else:
                out.append(DeployResult(t, True, message, output=stdout,
                                        kind=LEFT_ALONE if left else ""))
        return out

    async def _commands(self, batch: list[Target], script: str, done: str
                        ) -> list[DeployResult]:
        reload = batch[0].reload
        command = script + (f" && {reload}" if reload else "")
        answers = await self.run(self._job(batch, "cmd.run_all", [command]))
        out = []
        for t in batch:
            answer = answers.get(t.minion)
            ret = answer.get("ret") if isinstance(answer, dict) else None
            if not isinstance(ret, dict):
                out.append(DeployResult(t, False, f"salt[{t.node}]: minion {t.minion} did "
                                        "not answer", kind="unreachable"))
            elif ret.get("retcode") != 0:
                out.append(DeployResult(t, False, f"salt[{t.node}]: {done}: exit "
                                        f"{_clean(repr(ret.get('retcode')), 40)}: "
                                        f"{_clean(str(ret.get('stderr', ''))[-200:], 200)}",
                                        output=str(ret.get("stdout", ""))[:OUTPUT_LIMIT]))
            else:
                out.append(DeployResult(t, True, f"salt[{t.node}]: {done}",
                                        rolled_back=done == "rolled back",
                                        output=str(ret.get("stdout", ""))[:OUTPUT_LIMIT]))
        return out

    async def _by_rendering(self, targets: list[Target], work) -> list[DeployResult]:
        """One job per distinct (path, check, reload): the high data is the same for every
        minion of a job, so nodes whose templates render differently get their own job."""
        groups: dict[tuple, list[Target]] = {}
        for t in targets:
            groups.setdefault((t.path, t.check, t.reload), []).append(t)
        results: dict[Target, DeployResult] = {}
        for batch in groups.values():
            try:
                for r in await work(batch):
                    results[r.target] = r
            except DeployError as exc:
                for t in batch:
                    results[t] = DeployResult(t, False, str(exc).replace("[*]", f"[{t.node}]"),
                                              kind=exc.kind)
        return [results[t] for t in targets]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _token(doc: Any) -> str | None:
    """The token of a /login answer; None unless it is one printable ASCII word (it goes into
    a header: CR/LF there would be header injection, and aiohttp refuses it with ValueError)."""
    try:
        token = doc["return"][0]["token"]
    except (KeyError, IndexError, TypeError):
        return None
    ok = isinstance(token, str) and re.fullmatch(r"[\x21-\x7e]{1,512}", token)
    return token if ok else None


def _clean(text: str, limit: int) -> str:
    """What a minion said, fit for one line of a message: control, bidi and other invisible
    characters blanked, cut to `limit`."""
    return one_line(text, limit)


def _stdout(state: dict) -> str:
    changes = state.get("changes")
    return str(changes.get("stdout", "")) if isinstance(changes, dict) else ""


def _state_result(target: Target, answer: Any, cert: IssuedCertificate) -> DeployResult:
    where = f"salt[{target.node}]"
    if not isinstance(answer, dict) or not isinstance(answer.get("ret"), dict):
        detail = answer if isinstance(answer, str) else "no answer"
        return DeployResult(target, False, f"{where}: minion {target.minion} did not answer "
                            f"({_clean(detail, 200)})", kind="unreachable")
    states = answer["ret"]
    failed = {sid: st for sid, st in states.items()
              if isinstance(st, dict) and st.get("result") is not True}
    rollback = next((st for sid, st in states.items()
                     if "-rollback_|-" in sid and isinstance(st, dict)
                     and st.get("result") is True and st.get("changes")), None)
    failed = {sid: st for sid, st in failed.items() if "-rollback_|-" not in sid}
    output = "\n".join(filter(None, (_stdout(st) for st in states.values()
                                     if isinstance(st, dict))))[:OUTPUT_LIMIT]
    switched = any(f"certd-{target.certificate}-switch_|-" in sid for sid, st in states.items()
                   if isinstance(st, dict) and st.get("result") is True)
    if answer.get("retcode") == 0 and not failed and switched:
        return DeployResult(target, True, f"{where}: deployed serial {cert.serial}",
                            output=output)
    if not failed:  # nothing it shows failed, yet it is not a success
        why = (f"retcode {_clean(repr(answer.get('retcode')), 40)}" if switched
               else "the deployment's states did not run")
        return DeployResult(target, False, f"{where}: {why}", output=output, kind="write")
    guard = next((st for sid, st in failed.items()
                  if f"certd-{target.certificate}-guard_|-" in sid), None)
    if guard is not None:  # a planted symlink: the file states never ran
        changes = guard.get("changes") if isinstance(guard.get("changes"), dict) else {}
        said = str(changes.get("stderr") or guard.get("comment", "")).strip().splitlines()
        return DeployResult(target, False, f"{where}: {_clean((said[-1:] or [''])[0], 300)}",
                            output=output, kind="refused")
    # the first step that failed on its own (later ones fail on its requisite)
    step, first = "state", next(iter(failed.values()), {})
    for name in ("switch", "check", "reload"):
        hit = [st for sid, st in failed.items() if f"certd-{target.certificate}-{name}_|-" in sid]
        if hit:
            step, first = name, hit[0]
            break
    if step == "state":  # a file.managed state
        step = "write"
    comment = str(first.get("comment", "")).strip().splitlines()[-1:] or [""]
    return DeployResult(target, False, f"{where}: {step}: {_clean(comment[0], 300)}",
                        rolled_back=rollback is not None, output=output,
                        kind=step)


def _pull_state(states: dict, sid: str) -> dict | None:
    """The state whose id is `sid` (tags are `cmd_|-<id>_|-<name>_|-run`)."""
    for tag, st in states.items():
        if isinstance(st, dict) and f"_|-{sid}_|-" in tag:
            return st
    return None


def _said(st: dict) -> str:
    changes = st.get("changes") if isinstance(st.get("changes"), dict) else {}
    lines = str(changes.get("stderr") or st.get("comment", "")).strip().splitlines()
    return _clean((lines[-1:] or [""])[0], 300)


def _pull_results(placements: list[Placement], answer: Any) -> list[DeployResult]:
    """One minion's answer to a pull job, as one result per placement (bundle order)."""
    node = placements[0].target.node
    where = f"salt[{node}]"
    if not isinstance(answer, dict) or not isinstance(answer.get("ret"), dict):
        detail = answer if isinstance(answer, str) else "no answer"
        minion = placements[0].target.minion
        return [DeployResult(p.target, False, f"{where}: minion {minion} did not answer "
                             f"({_clean(detail, 200)})", kind="unreachable") for p in placements]
    states = answer["ret"]
    output = "\n".join(filter(None, (_stdout(st) for st in states.values()
                                     if isinstance(st, dict))))[:OUTPUT_LIMIT]
    fetch = _pull_state(states, "certd-pull-fetch")
    if fetch is None or fetch.get("result") is not True:
        why = _said(fetch) if fetch else "the deployment's states did not run"
        return [DeployResult(p.target, False, f"{where}: fetch: {why}", output=output,
                             kind="write") for p in placements]
    failed_step = None
    for tag, st in states.items():
        m = re.search(r"_\|-certd-pull-(check|reload)-\d+_\|-", tag)
        if m and isinstance(st, dict) and st.get("result") is not True and (
                failed_step is None or st.get("__run_num__", 0)
                < failed_step[1].get("__run_num__", 0)):
            failed_step = (m.group(1), st)
    rollback = _pull_state(states, "certd-pull-rollback") or {}
    rolled = set(re.findall(r"^certd: rolled back (\d+)$", _stdout(rollback), re.M))
    out = []
    for i, p in enumerate(placements):
        guard = _pull_state(states, f"certd-pull-{i}-guard") or {}
        place = _pull_state(states, f"certd-pull-{i}-place") or {}
        switch = _pull_state(states, f"certd-pull-{i}-switch") or {}
        if guard.get("result") is not True:
            out.append(DeployResult(p.target, False, f"{where}: {_said(guard)}",
                                    output=output, kind="refused"))
        elif place.get("result") is not True:
            out.append(DeployResult(p.target, False, f"{where}: write: {_said(place)}",
                                    output=output, kind="write"))
        elif switch.get("result") is not True:
            out.append(DeployResult(p.target, False, f"{where}: switch: {_said(switch)}",
                                    output=output, kind="switch"))
        elif failed_step is not None:
            step, st = failed_step
            out.append(DeployResult(p.target, False, f"{where}: {step}: {_said(st)}",
                                    rolled_back=str(i) in rolled, output=output, kind=step))
        else:
            out.append(DeployResult(p.target, True,
                                    f"{where}: deployed serial {p.cert.serial}", output=output))
    return out
