"""Salt pull mode: the state.high job carries no key, only a one-shot token per minion.

One job per batch (per group of minions whose targets render alike):

    certd-pull-fetch      cmd.run (stdin: `MINION TOKEN` lines): the minion picks its own
                          token, GETs <pull_url>/api/v1/salt/bundles/<batch> with it
                          (`Authorization: Bearer`, the header read by curl from stdin: never
                          on a command line), checks the tar's SHA-256 and keeps it in
                          <minion cachedir>/certd-pull/<batch>/ (0700)
    certd-pull-<i>-guard  per certificate: the symlink guard of salt.py
    certd-pull-<i>-place  per certificate: each file out of the tar into `.tmp-<file>`
                          (created with O_EXCL: `set -C`), chmod, rename into the version dir
    certd-pull-<i>-switch per certificate: salt.py's switch script
    certd-pull-check-<k>  each distinct check once, after every switch (require_any)
    certd-pull-reload-<k> each distinct reload once
    certd-pull-rollback   onfail of check/reload: every certificate this job switched goes
                          back to .previous, then one reload
    certd-pull-cleanup    order: last; removes the batch's directory

What Salt's job cache, returns and event bus see: paths, commands, the bundle's SHA-256 and
the tokens, each spent by the fetch (and all of the batch's dropped when the job returns).
The token: `cdb_` + 43 URL-safe characters (256 random bits), stored as its SHA-256 only,
bound to one minion and one batch, valid once and for `pull_token_ttl` (2 minutes).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import secrets
import shlex
import tarfile
from typing import Any

from certd.deployers.base import PemFile, Placement, Target, file_set
from certd.deployers.layout import MARKER, marker_text
from certd.model import IssuedCertificate

TOKEN = re.compile(r"cdb_[A-Za-z0-9_-]{43}")
BATCH = re.compile(r"[0-9a-f]{16}")
ROUTE = "/api/v1/salt/bundles/{batch}"
MAX_BUNDLE = 16 << 20  # curl --max-filesize on the minion
FETCH_TIMEOUT = 30  # seconds, curl --max-time
BATCH_DIR = "'{{ opts[\"cachedir\"] }}'/certd-pull/"  # + batch; rendered on the minion
MINION_ID = "'{{ opts[\"id\"] }}'"


def new_token() -> str:
    return "cdb_" + secrets.token_urlsafe(32)


def new_batch() -> str:
    return secrets.token_hex(8)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def bundle_files(name: str, cert: IssuedCertificate) -> list[PemFile]:
    """What one certificate contributes to a bundle: the five files and the marker."""
    return [*file_set(cert), PemFile(MARKER, marker_text(name), 0o644)]


def bundle_tar(items: list[tuple[str, IssuedCertificate]]) -> bytes:
    """The bundle: `<i>/<file>` for the i-th (name, certificate). Deterministic (no times,
    owners or modes from this host), so certd hashes it when it starts the job and the API
    rebuilds the very same bytes from the store when the minion asks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (name, cert) in enumerate(items):
            for f in bundle_files(name, cert):
                data = f.content.encode()
                info = tarfile.TarInfo(f"{i}/{f.name}")
                info.size, info.mode, info.mtime = len(data), 0o600, 0
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _templated(script: str, batch: str) -> str:
    """`script` with `@D@` standing for the batch directory and `@ID@` for the minion id,
    rendered by Salt's jinja on the minion; everything else inside {% raw %}, so no `{{`,
    `{%` or `{#` of a path or command is ever taken for jinja."""
    if "endraw" in script:
        raise ValueError("a path or command holds 'endraw'")
    raw = "{% raw %}" + script + "{% endraw %}"
    return (raw.replace("@D@", "{% endraw %}" + BATCH_DIR + batch + "{% raw %}")
            .replace("@ID@", "{% endraw %}" + MINION_ID + "{% raw %}"))


def fetch_script(url: str, batch: str, digest: str, cafile: str | None) -> str:
    ca = f" --cacert {shlex.quote(cafile)}" if cafile else ""
    where = shlex.quote(f"{url}{ROUTE.format(batch=batch)}")
    return _templated(
        "set -eu; umask 077; d=@D@; id=@ID@; tok=''; "
        "while read -r m t; do if [ \"$m\" = \"$id\" ]; then tok=$t; fi; done; "
        "if [ -z \"$tok\" ]; then echo \"certd: no bundle token for minion $id\" >&2; "
        "exit 1; fi; "
        "mkdir -p \"$(dirname \"$d\")\"; rm -rf \"$d\"; mkdir \"$d\"; "
        "printf 'Authorization: Bearer %s\\n' \"$tok\" | "
        f"curl -fsS --proto =http,https --max-time {FETCH_TIMEOUT} "
        f"--max-filesize {MAX_BUNDLE}{ca} -H @- -o \"$d/bundle.tar\" {where}; "
        f"if ! echo \"{digest}  $d/bundle.tar\" | sha256sum -c --status; then "
        "rm -rf \"$d\"; echo 'certd: the bundle does not match its SHA-256; not used' >&2; "
        "exit 1; fi; "
        f"echo certd: fetched bundle {batch}", batch)


def place_script(index: int, target: Target, cert: IssuedCertificate, batch: str) -> str:
    """Each file of certificate `index` out of the tar into its version directory: a fresh
    `.tmp-<file>` (O_EXCL via `set -C`: never through a planted link), chmod, rename."""
    parent, name = posixpath.split(target.path.rstrip("/"))
    parent = parent or "/"
    v = posixpath.join(parent, f".{name}.d")
    sd = posixpath.join(v, cert.serial)
    lines = ["set -eu; umask 077; b=@D@/bundle.tar; "
             f"(umask 066; mkdir -p {shlex.quote(sd)}); "]
    for f in bundle_files(target.certificate, cert):
        final = posixpath.join(v if f.name == MARKER else sd, f.name)
        tmp = posixpath.join(posixpath.dirname(final), f".tmp-{f.name.lstrip('.')}")
        t, dst = shlex.quote(tmp), shlex.quote(final)
        member = shlex.quote(f"{index}/{f.name}")
        lines.append(f"rm -f {t}; (set -C; tar -xOf \"$b\" {member} > {t}); "
                     f"chmod {f.mode:o} {t}; mv -f {t} {dst}; ")
    lines.append(f"echo certd: placed {shlex.quote(target.certificate)} {cert.serial}")
    return _templated("".join(lines), batch)


def _state(fun: str, name: str, *args: dict) -> dict[str, Any]:
    return {"__sls__": "certd", "__env__": "base",
            fun.split(".")[0]: [fun.split(".")[1], {"name": name}, *args]}


def pull_high(placements: list[Placement], batch: str, tokens: dict[str, str], url: str,
              digest: str, cafile: str | None) -> dict[str, Any]:
    """The state.high document of one batch for minions whose targets render alike
    (`placements`: one minion's share, in bundle order)."""
    from certd.deployers.salt import guard_script, rollback_script, switch_script

    stdin = "".join(f"{m} {t}\n" for m, t in sorted(tokens.items()))
    high: dict[str, Any] = {"certd-pull-fetch": _state(
        "cmd.run", fetch_script(url, batch, digest, cafile), {"stdin": stdin},
        {"template": "jinja"}, {"order": 1})}
    switches = []
    for i, p in enumerate(placements):
        t, serial = p.target, p.cert.serial
        high[f"certd-pull-{i}-guard"] = _state("cmd.run", guard_script(t.path, serial),
                                               {"order": 1})
        high[f"certd-pull-{i}-place"] = _state(
            "cmd.run", place_script(i, t, p.cert, batch), {"template": "jinja"},
            {"require": [{"cmd": "certd-pull-fetch"}, {"cmd": f"certd-pull-{i}-guard"}]})
        high[f"certd-pull-{i}-switch"] = _state(
            "cmd.run", switch_script(t.path, serial),
            {"require": [{"cmd": f"certd-pull-{i}-place"}]})
        switches.append({"cmd": f"certd-pull-{i}-switch"})
    checks = list(dict.fromkeys(p.target.check for p in placements if p.target.check))
    reloads = list(dict.fromkeys(p.target.reload for p in placements if p.target.reload))
    steps = [*((f"check-{k}", c) for k, c in enumerate(checks)),
             *((f"reload-{k}", r) for k, r in enumerate(reloads))]
    before: dict[str, Any] = {"require_any": switches}
    for step, command in steps:
        high[f"certd-pull-{step}"] = _state("cmd.run", command, before)
        before = {"require": [{"cmd": f"certd-pull-{step}"}]}
    if steps:
        undo = ["r=''; "]
        for i, p in enumerate(placements):
            parent, name = posixpath.split(p.target.path.rstrip("/"))
            link = shlex.quote(f".{name}.d/{p.cert.serial}")
            at = shlex.quote(posixpath.join(parent or "/", name))
            back = rollback_script(p.target.path)
            undo.append(f"if [ \"$(readlink {at} 2>/dev/null)\" = {link} ]; then "
                        f"if ({back}) >/dev/null; then echo certd: rolled back {i}; r=yes; "
                        "fi; fi; ")
        undo.append("if [ -n \"$r\" ]; then " + "; ".join([*reloads, "true"]) + "; fi")
        high["certd-pull-rollback"] = _state(
            "cmd.run", "".join(undo),
            {"onfail": [{"cmd": f"certd-pull-{s}"} for s, _ in steps]})
    high["certd-pull-cleanup"] = _state("cmd.run", _templated("rm -rf @D@", batch),
                                        {"template": "jinja"}, {"order": "last"})
    return high
