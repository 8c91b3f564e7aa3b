"""certbot's config directory (/etc/letsencrypt): `live/<lineage>/` (symlinks into
`archive/<lineage>/`), `renewal/<lineage>.conf` (configobj text: `[renewalparams]` holds
server, account, key_type...) and `accounts/<CA host><directory path>/<id>/`
(`private_key.json`: a JWK; `regr.json`: `uri`, the account's URL at the CA).

Only `live/` and `accounts/` files are read, each through `files.read_file` (inside the tree,
regular, bounded). The paths written inside a renewal conf (`cert = ...`, `archive_dir = ...`)
are ignored: they may point anywhere, and a tree copied elsewhere has them wrong anyway.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import josepy as jose
from cryptography.hazmat.primitives import serialization

from certd import keys
from certd.importer import files
from certd.importer.files import AccountMissing, ImportRefused, shown
from certd.importer.model import Found, Source, SourceAccount, Unreadable

DEFAULT_DIR = Path("/etc/letsencrypt")
MAX_LINEAGES = 10000
LINEAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,254}")
ACCOUNT_ID = re.compile(r"[0-9a-f]{32}")  # certbot: the MD5 of the account's public key
_SECTION = re.compile(r"(\[{1,3})\s*([^\[\]\s]{1,255})\s*(\]{1,3})")
_KEY = re.compile(r"[^\s=]{1,255}")
CURVES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384", "secp521r1": None}
RSA_SIZES = range(1024, 16385)


def read(directory: Path = DEFAULT_DIR, only: Sequence[str] = ()) -> Source:
    """Every lineage of `directory` (or those named in `only`). Raises ImportRefused if the
    tree itself is unusable; a lineage that is not is an Unreadable among the others."""
    root = files.resolved(directory, "certbot")
    live = root / "live"
    if not live.is_dir():
        raise ImportRefused(f"certbot: {shown(str(root), 200)} has no live/ directory: not a "
                            "certbot config directory")
    names = files.entries(live, lambda e: e.is_dir(),  # README is not a lineage
                          only, what="certbot", noun="lineage",
                          limit=MAX_LINEAGES)
    return Source(f"certbot {root}", tuple(lineage(root, n) for n in names),
                  account=functools.partial(read_account, root))


def lineage(root: Path, name: str) -> Found | Unreadable:
    where = f"live/{shown(name)}"
    if not LINEAGE.fullmatch(name):
        return Unreadable("certbot", name, where, "not a lineage name certbot makes; refused")
    try:
        directory = root / "live" / name
        chain = _certificates(root, directory / "fullchain.pem", f"{where}/fullchain.pem")
        key = files.private_key(_read(root, directory / "privkey.pem",
                                      f"{where}/privkey.pem"), f"{where}/privkey.pem")
        if os.path.lexists(directory / "cert.pem"):
            _same(_certificates(root, directory / "cert.pem", f"{where}/cert.pem"), chain[:1],
                  f"{where}/cert.pem")
        if os.path.lexists(directory / "chain.pem"):
            _same(_certificates(root, directory / "chain.pem", f"{where}/chain.pem"),
                  chain[1:], f"{where}/chain.pem")
        conf = root / "renewal" / f"{name}.conf"
        params = (renewal_params(_read(root, conf, f"renewal/{name}.conf", files.MAX_CONF),
                                 f"renewal/{name}.conf")
                  if os.path.lexists(conf) else {})
        return Found("certbot", name, where, tuple(chain), keys.key_to_pem(key),
                     server=params.get("server"), account=params.get("account"),
                     key_type=params.get("key_type"))
    except ImportRefused as exc:
        return Unreadable("certbot", name, where, str(exc))


def _read(root: Path, path: Path, what: str, limit: int = files.MAX_PEM) -> bytes:
    return files.read_file(path, what, root=root, limit=limit)


def _certificates(root: Path, path: Path, what: str):
    return files.certificates(_read(root, path, what), what)


def _same(got, expected, what: str) -> None:
    def der(certs):
        return [c.public_bytes(serialization.Encoding.DER) for c in certs]

    if der(got) != der(expected):
        raise ImportRefused(f"{what} does not match fullchain.pem (a lineage left half-updated?)")


def renewal_params(data: bytes, what: str) -> dict[str, str]:
    """The `[renewalparams]` values certd uses, checked: server (an http(s) URL), account (a
    certbot account id), key_type (certd's spelling, from key_type, rsa_key_size and
    elliptic_curve). Anything odd in them, or a file that is not configobj text, raises."""
    section: list[str] = []
    raw: dict[str, str] = {}
    for number, line in files.lines(data, what):
        if line.startswith("["):
            m = _SECTION.fullmatch(line)
            if not m or len(m.group(1)) != len(m.group(3)):
                raise ImportRefused(f"{what}: line {number}: not a section header")
            depth = len(m.group(1))
            if depth > len(section) + 1:
                raise ImportRefused(f"{what}: line {number}: section nested out of order")
            section = section[:depth - 1] + [m.group(2)]
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep or not _KEY.fullmatch(key):
            raise ImportRefused(f"{what}: line {number}: expected 'name = value'")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if section == ["renewalparams"]:
            if key in raw:
                raise ImportRefused(f"{what}: line {number}: {shown(key)} given twice")
            raw[key] = value
    return _checked(raw, what)


def _checked(raw: dict[str, str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if "server" in raw:
        out["server"] = files.url(raw["server"], f"{what}: server")
    if "account" in raw:
        if not ACCOUNT_ID.fullmatch(raw["account"]):
            raise ImportRefused(f"{what}: account: not a certbot account id: "
                                f"{shown(raw['account'], 60)}")
        out["account"] = raw["account"]
    kind = raw.get("key_type", "rsa")  # certbot before 2.0 wrote none: RSA
    if kind == "rsa":
        size = raw.get("rsa_key_size", "2048")
        if not (size.isascii() and size.isdigit() and len(size) <= 5
                and int(size) in RSA_SIZES):
            raise ImportRefused(f"{what}: rsa_key_size: not a key size: {shown(size, 40)}")
        if int(size) in (2048, 3072, 4096):
            out["key_type"] = f"rsa-{int(size)}"
    elif kind == "ecdsa":
        curve = raw.get("elliptic_curve", "secp256r1")
        if curve not in CURVES:
            raise ImportRefused(f"{what}: elliptic_curve: not a curve certbot uses: "
                                f"{shown(curve, 40)}")
        if CURVES[curve]:
            out["key_type"] = CURVES[curve]
    else:
        raise ImportRefused(f"{what}: key_type: expected rsa or ecdsa, got {shown(kind, 40)}")
    return out


def read_account(root: Path, server: str, account_id: str) -> SourceAccount:
    """certbot's account `account_id` at the CA whose directory is `server` (both checked
    by the caller: `server` is certd's own directory URL, `account_id` a certbot id)."""
    if not ACCOUNT_ID.fullmatch(account_id):
        raise ImportRefused(f"certbot account {shown(account_id, 60)}: not an account id")
    parts = urlsplit(server)
    segments = [parts.netloc, *(s for s in parts.path.split("/") if s)]
    if any(s in (".", "..") or "\x00" in s for s in segments):
        raise ImportRefused(f"certbot account: {shown(server, 200)} makes no account path")
    where = "accounts/" + "/".join(segments) + f"/{account_id}"
    directory = root.joinpath("accounts", *segments, account_id)
    if not os.path.lexists(directory):
        raise AccountMissing(f"certbot has no account {account_id} under accounts/"
                             f"{'/'.join(segments)}")
    doc = files.json_document(_read(root, directory / "private_key.json",
                                    f"{where}/private_key.json", files.MAX_CONF),
                              f"{where}/private_key.json")
    try:
        jwk = jose.JWK.from_json(doc)
        pem = jwk.key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        key = keys.key_from_pem(pem.decode("ascii"))
    except Exception:  # noqa: BLE001 - josepy and cryptography raise many kinds on garbage
        raise ImportRefused(f"{where}/private_key.json: not a private RSA or EC key in JWK "
                            "form") from None
    regr = files.json_document(_read(root, directory / "regr.json", f"{where}/regr.json",
                                     files.MAX_CONF), f"{where}/regr.json")
    uri = files.url(regr.get("uri") if isinstance(regr, dict) else None,
                    f"{where}/regr.json: uri")
    return SourceAccount(account_id, uri, keys.key_to_pem(key))
