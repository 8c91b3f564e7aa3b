"""certbot and acme.sh trees made by hand, shaped as the real clients leave them (see
tests/test_import_lab.py for one the real certbot makes): for the import's unit and hostile
tests, where a CA of our own (trustme: root -> intermediate -> leaf) sets every date."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import josepy as jose
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa

SERVER = "https://127.0.0.1:14000/dir"
ACCOUNT_ID = "5a56631715eed4cc83fd5fd56c269c32"
ACCOUNT_URI = "https://127.0.0.1:14000/my-account/1"
DAY = dt.timedelta(days=1)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Issued:
    """A leaf as files: the full chain (leaf + intermediate), its key, the leaf alone."""

    fullchain: bytes
    key: bytes
    cert: bytes
    chain: bytes


class TestCA:
    """root -> intermediate; leaves signed by the intermediate."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.root = trustme.CA(organization_name="certd import tests")
        self.intermediate = self.root.create_child_ca()

    def issue(self, *domains: str, days: float = 90, age: float = 1,
              rsa_key: bool = False) -> Issued:
        """A leaf for `domains`, issued `age` days ago, valid `days` days from then."""
        start = now() - dt.timedelta(days=age)
        leaf = self.intermediate.issue_cert(
            *domains, not_before=start, not_after=start + dt.timedelta(days=days),
            key_type=trustme.KeyType.RSA if rsa_key else trustme.KeyType.ECDSA)
        pems = [b.bytes() for b in leaf.cert_chain_pems]
        return Issued(b"".join(pems), leaf.private_key_pem.bytes(), pems[0],
                      b"".join(pems[1:]))


def renewal_conf(name: str, config_dir: Path, *, server: str = SERVER,
                 account: str = ACCOUNT_ID, key_type: str = "ecdsa", extra: str = "") -> str:
    live = config_dir / "live" / name
    return (f"version = 5.8.0\narchive_dir = {config_dir}/archive/{name}\n"
            f"cert = {live}/cert.pem\nprivkey = {live}/privkey.pem\n"
            f"chain = {live}/chain.pem\nfullchain = {live}/fullchain.pem\n\n"
            f"# Options used in the renewal process\n[renewalparams]\naccount = {account}\n"
            f"server = {server}\nauthenticator = standalone\nkey_type = {key_type}\n{extra}")


def write_lineage(config_dir: Path, name: str, issued: Issued, *, conf: str | None = None,
                  version: int = 1) -> Path:
    """archive/NAME/*N.pem and the live/NAME/*.pem symlinks to them, renewal/NAME.conf.
    Returns live/NAME."""
    archive = config_dir / "archive" / name
    live = config_dir / "live" / name
    for d in (archive, live, config_dir / "renewal"):
        d.mkdir(parents=True, exist_ok=True)
    (config_dir / "live" / "README").write_text("This directory contains your keys.\n")
    files = {"cert": issued.cert, "chain": issued.chain, "fullchain": issued.fullchain,
             "privkey": issued.key}
    for kind, data in files.items():
        target = archive / f"{kind}{version}.pem"
        target.write_bytes(data)
        if kind == "privkey":
            os.chmod(target, 0o600)
        link = live / f"{kind}.pem"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(f"../../archive/{name}/{kind}{version}.pem")
    (config_dir / "renewal" / f"{name}.conf").write_text(
        conf if conf is not None else renewal_conf(name, config_dir))
    return live


def account_dir(config_dir: Path, server: str = SERVER, account: str = ACCOUNT_ID) -> Path:
    host_and_path = server.split("://", 1)[1]
    return config_dir / "accounts" / host_and_path / account


def write_account(config_dir: Path, *, server: str = SERVER, account: str = ACCOUNT_ID,
                  uri: str = ACCOUNT_URI) -> rsa.RSAPrivateKey:
    """accounts/<host:port><path>/<id>/ as certbot writes it (an RSA-2048 JWK)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    directory = account_dir(config_dir, server, account)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "private_key.json").write_text(jose.JWKRSA(key=key).json_dumps())
    (directory / "regr.json").write_text(f'{{"body": {{}}, "uri": "{uri}"}}')
    (directory / "meta.json").write_text('{"creation_dt": "2026-11-29T23:42:32Z"}')
    return key


def write_acme_sh(home: Path, domain: str, issued: Issued, *, ecc: bool = True,
                  server: str = SERVER, key_length: str = "ec-256") -> Path:
    """~/.acme.sh/<domain>_ecc/ as acme.sh 3 leaves it."""
    directory = home / (f"{domain}_ecc" if ecc else domain)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{domain}.cer").write_bytes(issued.cert)
    (directory / "ca.cer").write_bytes(issued.chain)
    (directory / "fullchain.cer").write_bytes(issued.fullchain)
    (directory / f"{domain}.key").write_bytes(issued.key)
    (directory / f"{domain}.conf").write_text(
        f"Le_Domain='{domain}'\nLe_Alt='no'\nLe_Webroot='no'\nLe_PreHook=''\n"
        f"Le_API='{server}'\nLe_Keylength='{key_length}'\n"
        "Le_NextRenewTimeStr='2027-01-28T00:00:00Z'\n")
    return directory
