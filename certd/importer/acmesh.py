"""acme.sh's home (~/.acme.sh): one directory per certificate, `<domain>/` or `<domain>_ecc/`,
holding `fullchain.cer`, `<domain>.key` and `<domain>.conf` (shell assignments:
`Le_Domain='...'`, `Le_API='<directory URL>'`, `Le_Keylength='ec-256'`). A directory without
its `.conf` is not a certificate (acme.sh keeps `ca/`, `deploy/`, `dnsapi/` there too).
acme.sh's ACME accounts are not imported: certd registers its own."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from certd import keys
from certd.importer import files
from certd.importer.files import ImportRefused, shown
from certd.importer.model import Found, Source, Unreadable

DEFAULT_DIR = Path("~/.acme.sh")
MAX_CERTIFICATES = 10000
DOMAIN_DIR = re.compile(r"[A-Za-z0-9*][A-Za-z0-9._-]{0,254}")
_ASSIGNMENT = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]{0,63})=(.*)")
KEY_LENGTHS = {"ec-256": "ec-p256", "ec-384": "ec-p384", "2048": "rsa-2048",
               "3072": "rsa-3072", "4096": "rsa-4096", "ec-521": None}


def read(directory: Path = DEFAULT_DIR, only: Sequence[str] = ()) -> Source:
    root = files.resolved(directory, "acme.sh")

    def is_certificate(entry: os.DirEntry) -> bool:
        domain = entry.name.removesuffix("_ecc")
        return entry.is_dir() and os.path.lexists(root / entry.name / f"{domain}.conf")

    names = files.entries(root, is_certificate, only, what="acme.sh", noun="certificate",
                          limit=MAX_CERTIFICATES)
    return Source(f"acme.sh {root}", tuple(certificate(root, n) for n in names))


def certificate(root: Path, name: str) -> Found | Unreadable:
    where = shown(name)
    domain = name.removesuffix("_ecc")
    if not DOMAIN_DIR.fullmatch(name):
        return Unreadable("acme.sh", name, where, "not a directory name acme.sh makes; "
                          "refused")
    try:
        directory = root / name
        conf = _conf(files.read_file(directory / f"{domain}.conf", f"{where}/{domain}.conf",
                                     root=root, limit=files.MAX_CONF), f"{where}/{domain}.conf")
        chain = files.certificates(
            files.read_file(directory / "fullchain.cer", f"{where}/fullchain.cer", root=root),
            f"{where}/fullchain.cer")
        key = files.private_key(
            files.read_file(directory / f"{domain}.key", f"{where}/{domain}.key", root=root),
            f"{where}/{domain}.key")
        return Found("acme.sh", name, where, tuple(chain), keys.key_to_pem(key),
                     server=conf.get("server"), key_type=conf.get("key_type"))
    except ImportRefused as exc:
        return Unreadable("acme.sh", name, where, str(exc))


def _conf(data: bytes, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, line in files.lines(data, what):
        m = _ASSIGNMENT.fullmatch(line)
        if not m:
            raise ImportRefused(f"{what}: line {number}: expected NAME='value'")
        name, value = m.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if name == "Le_API" and value:
            out["server"] = files.url(value, f"{what}: Le_API")
        elif name == "Le_Keylength" and value:
            if value not in KEY_LENGTHS:
                raise ImportRefused(f"{what}: Le_Keylength: not a key length acme.sh uses: "
                                    f"{shown(value, 40)}")
            if KEY_LENGTHS[value]:
                out["key_type"] = KEY_LENGTHS[value]
    return out
