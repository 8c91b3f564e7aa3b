"""The bad-input table for `certd import` (in the style of tests/test_hostile_inputs.py): a
good certbot tree (tests/certbot_tree.py) spoiled one way per case -- symlinks out of it,
devices and FIFOs, huge or garbage files, keys that do not fit, dates, chains, odd renewal
confs and accounts -- and the pair and acme.sh forms likewise. Every case: exit 1, every
line it prints bounded and printable, no traceback, and nothing written to the store."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa

from tests.certbot_tree import (
    SERVER,
    TestCA,
    account_dir,
    renewal_conf,
    write_account,
    write_acme_sh,
    write_lineage,
)
from tests.stores import opened_store
from tests.test_hostile_inputs import MARK, assert_clean_line
from tests.test_import import config_file, run

NAME = "mig.test"
CERT = {"name": NAME, "domains": ["mig.test", "www.mig.test"], "frontends": ["web"]}


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


class Tree:
    """The good tree a case spoils: live/, archive/, renewal/ and accounts/ of certbot."""

    def __init__(self, root: Path, ca: TestCA):
        self.root = root / "letsencrypt"
        self.outside = root / "outside"  # a directory next to the tree, not inside it
        self.outside.mkdir()
        self.ca = ca
        self.issued = ca.issue("mig.test", "www.mig.test")
        self.live = write_lineage(self.root, NAME, self.issued)
        write_account(self.root)

    def archive(self, kind: str) -> Path:
        return self.root / "archive" / NAME / f"{kind}1.pem"

    def write(self, kind: str, data: bytes) -> None:
        self.archive(kind).write_bytes(data)

    def link(self, kind: str, target: str | Path) -> None:
        """live/NAME/KIND.pem -> target."""
        link = self.live / f"{kind}.pem"
        link.unlink()
        link.symlink_to(target)

    def fullchain_alone(self, data: bytes) -> None:
        """fullchain.pem replaced, without the cert.pem and chain.pem links to agree with."""
        self.write("fullchain", data)
        for kind in ("cert", "chain"):
            (self.live / f"{kind}.pem").unlink()

    def conf(self, text: str | bytes) -> None:
        path = self.root / "renewal" / f"{NAME}.conf"
        path.write_bytes(text.encode() if isinstance(text, str) else text)

    def renewal(self, **params) -> None:
        """renewal/NAME.conf with [renewalparams] values replaced or added."""
        base = {"server": SERVER, "key_type": "ecdsa", "account": "5a56631715eed4cc83fd5fd56c269c32"}
        extra = "".join(f"{k} = {v}\n" for k, v in params.items() if k not in base)
        base.update({k: v for k, v in params.items() if k in base})
        self.conf(renewal_conf(NAME, self.root, extra=extra, **base))

    def account_file(self, name: str, data: str | bytes) -> None:
        path = account_dir(self.root) / name
        path.unlink()
        path.write_bytes(data.encode() if isinstance(data, str) else data)


def _outside_copy(t: Tree, kind: str) -> Path:
    """A good file of the lineage copied outside the tree (what a link out would read)."""
    target = t.outside / f"{kind}.pem"
    shutil.copy(t.archive(kind), target)
    return target


def _fifo(t: Tree, kind: str) -> None:
    t.archive(kind).unlink()
    os.mkfifo(t.archive(kind))


def _other_key(t: Tree) -> None:
    t.write("privkey", t.ca.issue("mig.test", "www.mig.test").key)


def _dsa_key() -> bytes:
    return dsa.generate_private_key(key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def _encrypted_key(t: Tree) -> bytes:
    key = serialization.load_pem_private_key(t.issued.key, None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"secret"))


def _reissue(t: Tree, *names: str, **options) -> None:
    issued = t.ca.issue(*names, **options)
    write_lineage(t.root, NAME, issued)


def _foreign_chain(t: Tree) -> None:
    other = TestCA().issue("mig.test", "www.mig.test")
    t.fullchain_alone(t.issued.cert + other.chain)


def _lineage_dir_outside(t: Tree) -> None:
    shutil.copytree(t.live, t.outside / "lineage", symlinks=False)
    shutil.rmtree(t.live)
    t.live.symlink_to(t.outside / "lineage")


def _odd_lineage(name: str) -> Callable[[Tree], None]:
    def spoil(t: Tree) -> None:
        (t.root / "live" / name).mkdir()
    return spoil


def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


GOOD_CONF_LINE = "authenticator = standalone\n"

# (id, how the good tree is spoiled, what the error must say)
CERTBOT_CASES: list[tuple[str, Callable[[Tree], None], str]] = [
    # symlinks and file kinds
    ("fullchain-links-outside", lambda t: t.link("fullchain", _outside_copy(t, "fullchain")),
     "leads outside"),
    ("privkey-links-outside", lambda t: t.link("privkey", _outside_copy(t, "privkey")),
     "leads outside"),
    ("privkey-links-to-etc", lambda t: t.link("privkey", "/etc/hostname"), "leads outside"),
    ("relative-link-climbs-out", lambda t: t.link("fullchain", "../../../outside/x.pem"),
     "No such file"),
    ("privkey-is-dev-zero", lambda t: t.link("privkey", "/dev/zero"), "leads outside"),
    ("archive-is-dev-zero", lambda t: (t.archive("privkey").unlink(),
                                       t.archive("privkey").symlink_to("/dev/zero")),
     "leads outside"),
    ("fullchain-is-a-fifo", lambda t: _fifo(t, "fullchain"), "not a regular file"),
    ("privkey-is-a-directory", lambda t: (t.archive("privkey").unlink(),
                                          t.archive("privkey").mkdir()), "not a regular file"),
    ("symlink-loop", lambda t: t.link("fullchain", "fullchain.pem"), "symbolic links"),
    ("dangling-link", lambda t: t.link("fullchain", "../../archive/mig.test/gone.pem"),
     "No such file"),
    ("privkey-missing", lambda t: (t.live / "privkey.pem").unlink(), "No such file"),
    ("lineage-dir-links-outside", _lineage_dir_outside, "leads outside"),
    ("lineage-name-escape", _odd_lineage("evil\x1b[2J"), "not a lineage name"),
    ("lineage-name-bidi", _odd_lineage("evil\u202etset"), "not a lineage name"),
    ("lineage-name-newline", _odd_lineage("evil\ncertd: all good"), "not a lineage name"),
    ("lineage-name-marker", _odd_lineage(MARK), "not a lineage name"),
    # sizes and garbage
    ("fullchain-10mb", lambda t: t.write("fullchain", b"A" * (10 << 20)), "larger than"),
    ("fullchain-empty", lambda t: t.write("fullchain", b""), "no certificate"),
    ("fullchain-binary", lambda t: t.write("fullchain", bytes(range(256)) * 4), "not UTF-8"),
    ("fullchain-nul", lambda t: t.write("fullchain", t.issued.fullchain + b"\x00"),
     "control or unprintable"),
    ("fullchain-escape", lambda t: t.write("fullchain", b"\x1b[2J" + t.issued.fullchain),
     "control or unprintable"),
    ("fullchain-garbage-pem", lambda t: t.write(
        "fullchain", b"-----BEGIN CERTIFICATE-----\nZZMARK\n-----END CERTIFICATE-----\n"),
     "does not parse"),
    ("fullchain-truncated", lambda t: t.write("fullchain", t.issued.fullchain[:300]),
     "outside PEM blocks"),
    ("fullchain-holds-the-key", lambda t: t.write("fullchain", t.issued.fullchain
                                                  + t.issued.key), "unexpected PEM block"),
    ("fullchain-11-blocks", lambda t: t.write("fullchain", t.issued.fullchain * 6),
     "more than 10 PEM blocks"),
    ("privkey-garbage", lambda t: t.write("privkey", b"ZZMARK<script>\n"),
     "one PEM private key"),
    ("privkey-two-keys", lambda t: t.write("privkey", t.issued.key * 2), "one PEM private key"),
    ("privkey-is-a-certificate", lambda t: t.write("privkey", t.issued.cert),
     "one PEM private key"),
    ("privkey-encrypted", lambda t: t.write("privkey", _encrypted_key(t)), "encrypted"),
    ("privkey-dsa", lambda t: t.write("privkey", _dsa_key()), "unsupported private key"),
    # certificates that do not fit
    ("key-mismatch", _other_key, "does not match the certificate"),
    ("expired", lambda t: _reissue(t, "mig.test", "www.mig.test", days=10, age=20), "expired"),
    ("not-yet-valid", lambda t: _reissue(t, "mig.test", "www.mig.test", age=-5),
     "not valid before"),
    ("names-lack-one", lambda t: _reissue(t, "mig.test"), "lacks www.mig.test"),
    ("leaf-alone", lambda t: t.fullchain_alone(t.issued.cert), "no intermediate"),
    ("chain-of-another-ca", _foreign_chain, "is not signed by"),
    ("chain-reversed", lambda t: t.fullchain_alone(t.issued.chain + t.issued.cert),
     "does not match the certificate"),  # the intermediate first: not our key's
    ("cert-pem-differs", lambda t: t.write("cert", t.ca.issue("x.test").cert),
     "does not match fullchain"),
    ("chain-pem-differs", lambda t: t.write("chain", TestCA().issue("x.test").chain),
     "does not match fullchain"),
    # renewal/NAME.conf
    ("conf-server-javascript", lambda t: t.renewal(server="javascript:alert(1)"),
     "server: not an absolute http(s) URL"),
    ("conf-server-marker", lambda t: t.renewal(server=f"https://{MARK}/dir"),
     "not a host name"),
    ("conf-server-file", lambda t: t.renewal(server="file:///etc/passwd"), "server"),
    ("conf-server-huge", lambda t: t.renewal(server="https://x/" + "a" * 3000), "server"),
    ("conf-server-staging", lambda t: t.renewal(
        server="https://acme-staging-v02.api.letsencrypt.org/directory"), "staging CA"),
    ("conf-account-traversal", lambda t: t.renewal(account="../../../../etc"),
     "not a certbot account id"),
    ("conf-account-marker", lambda t: t.renewal(account=MARK), "not a certbot account id"),
    ("conf-key-type-dsa", lambda t: t.renewal(key_type="dsa"), "key_type"),
    ("conf-rsa-size-huge", lambda t: t.renewal(key_type="rsa", rsa_key_size="9" * 50),
     "rsa_key_size"),
    ("conf-curve-odd", lambda t: t.renewal(elliptic_curve="secp256k1"), "elliptic_curve"),
    ("conf-server-twice", lambda t: t.conf(renewal_conf(NAME, t.root, extra="server = x\n")),
     "given twice"),
    ("conf-nul", lambda t: t.conf(renewal_conf(NAME, t.root) + "\x00"),
     "control or unprintable"),
    ("conf-escape-in-value", lambda t: t.renewal(authenticator="\x1b]0;pwned\x07"),
     "control or unprintable"),
    ("conf-binary", lambda t: t.conf(os.urandom(4096)), "renewal/mig.test.conf"),
    ("conf-1mb", lambda t: t.conf(GOOD_CONF_LINE * 50000), "larger than"),
    ("conf-long-line", lambda t: t.conf("x = " + "y" * 5000 + "\n"), "longer than"),
    ("conf-bad-section", lambda t: t.conf("[[[[x]]\n"), "not a section header"),
    ("conf-not-configobj", lambda t: t.conf("just some words\n"), "expected 'name = value'"),
    ("conf-links-outside", lambda t: (t.root / "renewal" / f"{NAME}.conf").unlink() or (
        t.root / "renewal" / f"{NAME}.conf").symlink_to("/etc/hostname"), "leads outside"),
    ("conf-is-a-fifo", lambda t: (t.root / "renewal" / f"{NAME}.conf").unlink() or os.mkfifo(
        t.root / "renewal" / f"{NAME}.conf"), "not a regular file"),
    # the account
    ("account-key-garbage", lambda t: t.account_file("private_key.json", "ZZMARK<script>"),
     "not JSON"),
    ("account-key-deep", lambda t: t.account_file("private_key.json", _deep_json(20000)),
     "nested deeper"),
    ("account-key-public-only", lambda t: t.account_file(
        "private_key.json", '{"kty": "RSA", "n": "sXch", "e": "AQAB"}'), "not a private"),
    ("account-key-huge", lambda t: t.account_file("private_key.json", " " * (1 << 20)),
     "larger than"),
    ("account-key-links-outside", lambda t: (account_dir(t.root) / "private_key.json").unlink()
     or (account_dir(t.root) / "private_key.json").symlink_to("/etc/hostname"),
     "leads outside"),
    ("account-uri-elsewhere", lambda t: t.account_file(
        "regr.json", '{"uri": "https://evil.example/acct/1"}'), "is not at the CA"),
    ("account-uri-file", lambda t: t.account_file("regr.json", '{"uri": "file:///etc/x"}'),
     "uri"),
    ("account-regr-not-object", lambda t: t.account_file("regr.json", "[1, 2]"), "uri"),
]


def _assert_refused(code: int, out: str, err: str, expected: str, tmp_path: Path) -> None:
    assert code == 1, (out[-500:], err[-500:])
    assert "Traceback" not in err
    for line in (out + err).splitlines():
        assert_clean_line(line, 600)
    assert expected in err, err[-1000:]
    database = tmp_path / "state" / "certd.db"
    if database.exists():
        async def count():
            async with opened_store(database) as store:
                return [(await store._all(f"SELECT COUNT(*) FROM {t}"))[0][0]
                        for t in ("certificates", "accounts", "events", "cert_state")]
        assert asyncio.run(count()) == [0, 0, 0, 0]


@pytest.mark.parametrize("spoil,expected", [c[1:] for c in CERTBOT_CASES],
                         ids=[c[0] for c in CERTBOT_CASES])
def test_certbot_tree(tmp_path, ca, capsys, spoil, expected):
    tree = Tree(tmp_path, ca)
    spoil(tree)
    code, out, err = run(config_file(tmp_path, [CERT]), "--certbot", str(tree.root),
                         capsys=capsys)
    _assert_refused(code, out, err, expected, tmp_path)


def test_the_good_tree_imports(tmp_path, ca, capsys):
    """The table's baseline: unspoiled, the same tree is imported."""
    tree = Tree(tmp_path, ca)
    code, out, err = run(config_file(tmp_path, [CERT]), "--certbot", str(tree.root),
                         capsys=capsys)
    assert code == 0 and f"imported 1 certificate(s): {NAME}" in out, err


def _no_live(tree: Tree) -> Path:
    (tree.outside / "empty").mkdir()
    return tree.outside / "empty"


def _file(tree: Tree) -> Path:
    (tree.outside / "a-file").write_text("x")
    return tree.outside / "a-file"


# (id, the DIR given to --certbot, extra arguments, what the error says)
DIR_CASES = [
    ("missing", lambda t: t.outside / "nope", [], "No such file"),
    ("no-live", _no_live, [], "no live/ directory"),
    ("a-file", _file, [], "no live/ directory"),
    ("escape-in-dir", lambda t: t.outside / "x\x1b[2J", [], "No such file"),
    ("only-unknown", lambda t: t.root, ["--only", "ghost\x1b[2J"], "no lineage"),
]


@pytest.mark.parametrize("make_dir,extra,expected", [c[1:] for c in DIR_CASES],
                         ids=[c[0] for c in DIR_CASES])
def test_certbot_dir(tmp_path, ca, capsys, make_dir, extra, expected):
    tree = Tree(tmp_path, ca)
    code, out, err = run(config_file(tmp_path, [CERT]), "--certbot", str(make_dir(tree)),
                         *extra, capsys=capsys)
    _assert_refused(code, out, err, expected, tmp_path)


def _pair_files(tmp_path: Path, ca: TestCA) -> tuple[Path, Path]:
    issued = ca.issue("mig.test", "www.mig.test")
    (tmp_path / "fullchain.pem").write_bytes(issued.fullchain)
    (tmp_path / "key.pem").write_bytes(issued.key)
    return tmp_path / "fullchain.pem", tmp_path / "key.pem"


# (id, arguments after `import` given the good pair's paths, what the error says)
PAIR_CASES = [
    ("cert-dev-zero", lambda c, k: ["mig", "--cert", "/dev/zero", "--key", k],
     "not a regular file"),
    ("key-dev-urandom", lambda c, k: ["mig", "--cert", c, "--key", "/dev/urandom"],
     "not a regular file"),
    ("cert-is-the-key", lambda c, k: ["mig", "--cert", k, "--key", k], "unexpected PEM block"),
    ("name-unknown-escape", lambda c, k: ["gh\x1b[2Jost", "--cert", c, "--key", k],
     "is not configured"),
    ("name-without-cert", lambda c, k: ["mig", "--certbot", "/nope"], "go with --cert"),
    ("cert-missing", lambda c, k: ["mig", "--cert", c + ".gone", "--key", k], "No such file"),
]


@pytest.mark.parametrize("argv,expected", [c[1:] for c in PAIR_CASES],
                         ids=[c[0] for c in PAIR_CASES])
def test_pair(tmp_path, ca, capsys, argv, expected):
    cert, key = _pair_files(tmp_path, ca)
    code, out, err = run(config_file(tmp_path, [CERT]), *argv(str(cert), str(key)),
                         capsys=capsys)
    _assert_refused(code, out, err, expected, tmp_path)


# (id, how a good acme.sh certificate directory is spoiled, what the error says)
ACME_SH_CASES = [
    ("api-javascript", lambda d: (d / "mig.test.conf").write_text(
        "Le_API='javascript:alert(1)'\n"), "Le_API"),
    ("keylength-odd", lambda d: (d / "mig.test.conf").write_text("Le_Keylength='ec-1'\n"),
     "Le_Keylength"),
    ("conf-shell-code", lambda d: (d / "mig.test.conf").write_text("$(rm -rf /)\n"),
     "expected NAME='value'"),
    ("fullchain-links-outside", lambda d: ((d / "fullchain.cer").unlink(), (
        d / "fullchain.cer").symlink_to("/etc/hostname")), "leads outside"),
]


@pytest.mark.parametrize("spoil,expected", [c[1:] for c in ACME_SH_CASES],
                         ids=[c[0] for c in ACME_SH_CASES])
def test_acme_sh(tmp_path, ca, capsys, spoil, expected):
    home = tmp_path / "acme.sh"
    spoil(write_acme_sh(home, "mig.test", ca.issue("mig.test", "www.mig.test")))
    code, out, err = run(config_file(tmp_path, [CERT]), "--acme-sh", str(home), capsys=capsys)
    _assert_refused(code, out, err, expected, tmp_path)
