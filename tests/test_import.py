"""`certd import` without a CA: certbot and acme.sh trees made by hand (tests/certbot_tree.py),
the real CLI in-process (or as a process, for kill -9), the real store. Which lineage goes
where, what a dry run leaves, the account, the pair form, a crash mid-import, and `replaces`
for imported certificates. tests/test_import_lab.py runs the real certbot against pebble."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from cryptography import x509

from certd import cli, keys
from certd import config as configuration
from certd.issuance import ari
from certd.issuance.issuer import account_jwk
from certd.service import IMPORTED, Certd
from tests.certbot_tree import (
    ACCOUNT_ID,
    ACCOUNT_URI,
    SERVER,
    TestCA,
    renewal_conf,
    write_account,
    write_acme_sh,
    write_lineage,
)
from tests.certd_api import api_config_data
from tests.certd_lab import run_certd, write_config
from tests.stores import opened_store

MIG = {"name": "mig", "domains": ["mig.test", "www.mig.test"], "frontends": ["web"]}
BLOG = {"name": "blog.test", "domains": ["blog.test"], "frontends": ["web"]}
OLD = {"name": "old", "domains": ["old.test"], "frontends": ["web"]}


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def config_file(tmp_path: Path, certificates: list[dict], **acme) -> Path:
    data = api_config_data(tmp_path, acme={"directory": SERVER, **acme},
                           certificates=certificates)
    return write_config(tmp_path / "config.yaml", data)


def run(config: Path, *argv: str, capsys) -> tuple[int, str, str]:
    """`certd -c config import ...` in this process."""
    try:
        code = cli.main(["-c", str(config), "import", *argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(tmp_path: Path, directory: str = SERVER) -> SimpleNamespace:
    """What the store (tmp_path/state) holds: current certificate, state and IMPORTED events
    per name, the account at `directory`, the count of certificate rows, the events."""
    async def read():
        async with opened_store(tmp_path / "state" / "certd.db") as store:
            rows = await store._all("SELECT name FROM certificates")
            names = {r[0] for r in rows}
            return SimpleNamespace(
                rows=len(rows),
                current={n: await store.current_certificate(n) for n in names},
                state={n: await store.get_state(n) for n in names},
                imported={n: await store.events(certificate=n, kind=IMPORTED) for n in names},
                account=await store.get_account(directory),
                events=await store.events(limit=1000))
    return asyncio.run(read())


def serial(pem: bytes) -> str:
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


def test_certbot_tree_goes_into_the_configured_certificates(tmp_path, ca, capsys):
    le = tmp_path / "letsencrypt"
    mig = ca.issue("mig.test", "www.mig.test")
    write_lineage(le, "mig.test", mig)  # -> mig, by its exact names
    blog = ca.issue("blog.test", "extra.blog.test", rsa_key=True)
    write_lineage(le, "blog.test", blog, conf=renewal_conf("blog.test", le, key_type="rsa"))
    write_lineage(le, "old.test", ca.issue("old.test", days=10, age=30))  # expired
    newer = ca.issue("old.test")
    write_lineage(le, "old.test-0001", newer)  # the same names, valid: it wins
    write_lineage(le, "other.test", ca.issue("other.test"))  # matches nothing
    account_key = write_account(le)
    config = config_file(tmp_path, [MIG, BLOG, OLD])

    code, out, err = run(config, "--certbot", str(le), "--dry-run", capsys=capsys)
    assert code == 0, err
    assert not (tmp_path / "state").exists()  # a dry run creates no store
    assert "would import: serial " + serial(mig.cert) in out
    assert "dry run: nothing written (3 certificate(s) would be imported)" in out

    code, out, err = run(config, "--certbot", str(le), capsys=capsys)
    assert code == 0, err
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if "live/" in line}
    assert "-> mig: imported: serial " + serial(mig.cert) in lines["live/mig.test -> mig"]
    assert "also covers extra.blog.test" in out
    assert "certbot made rsa-2048 keys; certd's renewals make ec-p256 keys" in out
    assert "superseded by live/old.test-0001" in lines["live/old.test -> old"]
    assert "not imported: no configured certificate" in lines["live/other.test"]
    assert "certd deploy " in out
    snap = snapshot(tmp_path)
    assert snap.rows == 3 and set(snap.current) == {"mig", "blog.test", "old"}
    assert snap.current["old"].serial == serial(newer.cert)
    cert = snap.current["mig"]
    assert cert.serial == serial(mig.cert) and cert.order_url is None
    assert cert.domains == ("mig.test", "www.mig.test")
    assert keys.same_public_key(x509.load_pem_x509_certificate(cert.cert_pem.encode()),
                                keys.key_from_pem(cert.key_pem))
    assert cert.fullchain_pem.encode() == mig.fullchain
    assert {s.status.value for s in snap.state.values()} == {"issued"}  # the sweep deploys
    event = snap.imported["mig"][0]
    assert event.data["serial"] == cert.serial and event.data["same_account"] is True
    assert snap.account.uri == ACCOUNT_URI
    assert keys.key_from_pem(snap.account.key_pem).private_numbers() == \
        account_key.private_numbers()

    # the printed snippet, added to the config, makes the next run import that lineage
    after = out[out.index("      - name: other.test"):].splitlines()
    snippet = [line[6:] for line in after[:next(i for i, line in enumerate(after)
                                                 if not line.startswith("      "))]]
    entry = yaml.safe_load("\n".join(snippet))
    assert entry == [{"name": "other.test", "domains": ["other.test"], "frontends": ["web"]}]
    config = config_file(tmp_path, [MIG, BLOG, OLD, *entry])
    code, out, err = run(config, "--certbot", str(le), capsys=capsys)
    assert code == 0, err
    assert "imported 1 certificate(s): other.test" in out
    assert out.count("already imported") == 3
    assert snapshot(tmp_path).rows == 4


def test_a_certificate_certd_holds_is_kept_unless_replace(tmp_path, ca, capsys):
    le = tmp_path / "le"
    write_lineage(le, "mig.test", ca.issue("mig.test", "www.mig.test"))
    config = config_file(tmp_path, [MIG])
    code, _, err = run(config, "--certbot", str(le), capsys=capsys)
    assert code == 0, err
    renewed = ca.issue("mig.test", "www.mig.test")
    write_lineage(le, "mig.test", renewed, version=2)  # certbot renewed it meanwhile
    code, out, _ = run(config, "--certbot", str(le), capsys=capsys)
    assert code == 0 and "certd already holds serial" in out and "--replace" in out
    assert snapshot(tmp_path).rows == 1
    code, out, _ = run(config, "--certbot", str(le), "--replace", capsys=capsys)
    assert code == 0 and "replaces serial" in out
    assert snapshot(tmp_path).current["mig"].serial == serial(renewed.cert)


def test_certd_keeps_its_own_account(tmp_path, ca, capsys):
    le = tmp_path / "le"
    write_lineage(le, "mig.test", ca.issue("mig.test", "www.mig.test"))
    write_account(le)
    config = config_file(tmp_path, [MIG])

    async def own_account():
        from certd.model import Account
        async with opened_store(tmp_path / "state" / "certd.db") as store:
            await store.save_account(Account(SERVER, "https://127.0.0.1:14000/my-account/9",
                                             keys.key_to_pem(keys.generate_key("ec-p256"))))
    asyncio.run(own_account())
    code, out, _ = run(config, "--certbot", str(le), capsys=capsys)
    assert code == 0 and "certd already has an account" in out
    snap = snapshot(tmp_path)
    assert snap.account.uri.endswith("/my-account/9")
    assert snap.imported["mig"][0].data["same_account"] is False  # so: no ARI `replaces`


def test_account_of_another_ca_is_left(tmp_path, ca, capsys):
    le = tmp_path / "le"
    other = "https://acme.other.example/directory"
    write_lineage(le, "mig.test", ca.issue("mig.test", "www.mig.test"),
                  conf=renewal_conf("mig.test", le, server=other))
    write_account(le, server=other)
    code, out, _ = run(config_file(tmp_path, [MIG]), "--certbot", str(le), capsys=capsys)
    assert code == 0 and f"issued through {other}; certd renews through {SERVER}" in out
    snap = snapshot(tmp_path)
    assert snap.account is None and snap.imported["mig"][0].data["same_account"] is False


def test_pair_of_files(tmp_path, ca, capsys):
    issued = ca.issue("mig.test", "www.mig.test")
    (tmp_path / "leaf.pem").write_bytes(issued.cert)
    (tmp_path / "chain.pem").write_bytes(issued.chain)
    (tmp_path / "key.pem").write_bytes(issued.key)
    config = config_file(tmp_path, [MIG])
    leaf_only = run(config, "mig", "--cert", str(tmp_path / "leaf.pem"), "--key",
                    str(tmp_path / "key.pem"), capsys=capsys)
    assert leaf_only[0] == 1 and "no intermediate certificate" in leaf_only[2]
    code, _, err = run(config, "mig", "--cert", str(tmp_path / "leaf.pem"), "--chain",
                         str(tmp_path / "chain.pem"), "--key", str(tmp_path / "key.pem"),
                         capsys=capsys)
    assert code == 0, err
    assert snapshot(tmp_path).current["mig"].serial == serial(issued.cert)
    unknown = run(config, "ghost", "--cert", str(tmp_path / "leaf.pem"), "--key",
                  str(tmp_path / "key.pem"), capsys=capsys)
    assert unknown[0] == 1 and "certificate ghost is not configured" in unknown[2]
    no_key = run(config, "mig", "--cert", str(tmp_path / "leaf.pem"), capsys=capsys)
    assert no_key[0] == 1 and "--cert takes NAME and --key" in no_key[2]


def test_acme_sh_home(tmp_path, ca, capsys):
    home = tmp_path / "acme.sh"
    issued = ca.issue("blog.test")
    write_acme_sh(home, "blog.test", issued)
    (home / "ca").mkdir()  # acme.sh's own directories are not certificates
    (home / "account.conf").write_text("LOG_FILE='/root/.acme.sh/acme.sh.log'\n")
    code, out, err = run(config_file(tmp_path, [BLOG]), "--acme-sh", str(home), capsys=capsys)
    assert code == 0, err
    assert "blog.test_ecc -> blog.test: imported" in out
    assert snapshot(tmp_path).current["blog.test"].serial == serial(issued.cert)


def test_kill_9_mid_import_leaves_a_consistent_store_and_a_rerun_finishes(tmp_path, ca):
    le = tmp_path / "le"
    issued = ca.issue("mig.test", "www.mig.test")
    write_lineage(le, "mig.test", issued)
    config = config_file(tmp_path, [MIG])
    crashed = run_certd(config, "import", "--certbot", str(le),
                        env={"CERTD_FAILPOINT": "import:stored"})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    snap = snapshot(tmp_path)
    # killed inside the import's unit of work (row written, state and event not yet):
    # nothing of it committed
    assert snap.rows == 0 and not snap.current
    assert not [e for e in snap.events if e.kind == IMPORTED or e.certificate == "mig"]
    again = run_certd(config, "import", "--certbot", str(le))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "mig.test -> mig: imported" in again.stdout
    cert = snapshot(tmp_path).current["mig"]  # the row is whole: certificate and its key
    assert keys.same_public_key(x509.load_pem_x509_certificate(cert.cert_pem.encode()),
                                keys.key_from_pem(cert.key_pem))
    snap = snapshot(tmp_path)
    assert snap.rows == 1 and snap.state["mig"].status.value == "issued"
    assert len(snap.imported["mig"]) == 1


@pytest.mark.parametrize("same_account", [True, False])
async def test_replaces_only_for_certificates_of_the_same_account(tmp_path, ca, same_account):
    """A CA refuses an ARI `replaces` naming a certificate another account ordered (Let's
    Encrypt: 'requester account did not request the certificate being replaced')."""
    cfg = configuration.parse(api_config_data(tmp_path, acme={"directory": SERVER},
                                              certificates=[MIG]))
    issued = ca.issue("mig.test", "www.mig.test")
    leaf = x509.load_pem_x509_certificate(issued.cert)
    info = keys.cert_info(leaf)
    from certd.model import Event, IssuedCertificate
    cert = IssuedCertificate("mig", info.serial, ("mig.test", "www.mig.test"), info.not_before,
                             info.not_after, issued.cert.decode(), issued.chain.decode(),
                             issued.key.decode())

    async def offers_ari():
        return True

    issuer = SimpleNamespace(client=SimpleNamespace(offers_ari=offers_ari))
    async with opened_store(tmp_path / "state" / "certd.db") as store:
        certd = Certd(cfg, store, issuer, {})
        try:
            await certd.adopt(cert, Event(IMPORTED, "x", certificate="mig",
                                          data={"serial": cert.serial,
                                                "same_account": same_account}), expected=None)
            current = await store.current_certificate("mig")
            replaces = await certd._replaces(current)
        finally:
            await certd.close()
    assert replaces == (ari.cert_id(leaf) if same_account else None)


def test_account_keys_of_both_kinds_sign():
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_pem = keys.key_to_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert type(account_jwk(rsa_pem)).__name__ == "JWKRSA"  # certbot's accounts
    assert type(account_jwk(keys.key_to_pem(keys.generate_key("ec-p256")))).__name__ == "JWKEC"


def test_the_renewal_conf_is_read_for_what_certd_uses(tmp_path, ca):
    from certd.importer import certbot

    le = tmp_path / "le"
    conf = renewal_conf("mig.test", le, key_type="rsa",
                        extra="rsa_key_size = 3072\n[[webroot_map]]\nmig.test = /var/www\n")
    params = certbot.renewal_params(conf.encode(), "renewal/mig.test.conf")
    assert params == {"server": SERVER, "account": ACCOUNT_ID, "key_type": "rsa-3072"}


def test_a_certificate_of_too_many_names_is_reported_in_one_bounded_line(tmp_path, ca, capsys):
    le = tmp_path / "le"
    write_lineage(le, "many.test", ca.issue(*(f"n{i}.many.test" for i in range(150))))
    code, out, err = run(config_file(tmp_path, [MIG]), "--certbot", str(le), capsys=capsys)
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if "live/many.test" in line]
    assert "skipped: certd cannot manage it: 150 DNS names" in line and len(line) < 200
