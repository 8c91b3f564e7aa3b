"""`certd backup` and `certd restore` against a real daemon, pebble and two nginx nodes: a
backup taken while the daemon orders certificates, an encrypted one taken once it settled;
each restored into a fresh state directory, where the settled one shows the same `certd
status --json` as the original and the one taken mid-issuance is finished, served and
renewed by a daemon started on it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.certd_lab import Daemon, deployed_rows, lab_config_data, write_config
from tests.certd_lab import run_certd as certd
from tests.lab import wait_until

pytestmark = pytest.mark.lab

NAMES = [f"bk{i}" for i in range(8)]


def store_counts(database: Path) -> tuple[int, int]:
    """(certificates stored, orders still open) in a store another process writes."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            certificates = db.execute("SELECT COUNT(DISTINCT name) FROM certificates"
                                      ).fetchone()[0]
            open_orders = db.execute("SELECT COUNT(*) FROM orders WHERE status IN "
                                     "('pending', 'ready', 'processing')").fetchone()[0]
            return certificates, open_orders
    except sqlite3.OperationalError:  # not created yet
        return 0, 0


def account_uri(database: Path) -> str:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        (uri,) = db.execute("SELECT uri FROM accounts").fetchone()
        return uri


def status(config: Path) -> list[dict]:
    out = certd(config, "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def without_days_left(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "days_left"} for row in rows]


def test_backup_while_issuing_restore_serve_and_renew(lab, tmp_path):
    # validations wait 0-3 s at this pebble, so orders are still in flight when the first
    # backup runs (the lab's shared pebble answers at once)
    pebble = lab.start_pebble(env={"PEBBLE_VA_NOSLEEP": "0", "PEBBLE_VA_SLEEPTIME": "3"})
    try:
        lab.set_sites({name: [f"{name}.test"] for name in NAMES})
        certificates = [{"name": n, "domains": [f"{n}.test"], "frontends": ["web"]}
                        for n in NAMES]

        def config(name: str) -> Path:
            return write_config(tmp_path / f"{name}.yaml", lab_config_data(
                lab, tmp_path / name, certificates, pebble))

        original = config("original")
        passphrase = tmp_path / "passphrase"
        passphrase.write_text("correct horse battery staple\n")
        during, settled = tmp_path / "during.backup", tmp_path / "settled.backup"

        daemon = Daemon(original, tmp_path / "original.log")
        try:
            # a backup while the daemon orders all eight at once
            database = tmp_path / "original" / "certd.db"
            wait_until(lambda: store_counts(database)[1] > 0, 60, what="orders in flight")
            out = certd(original, "backup", str(during))
            assert out.returncode == 0, out.stderr
            assert "not encrypted" in out.stdout and "API tokens included" in out.stdout
            with sqlite3.connect(during) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            issued, open_orders = store_counts(during)  # 0 and 8 when measured
            assert issued < len(NAMES) and open_orders, (issued, open_orders)

            # once everything is issued and on both nodes: an encrypted backup, still online
            wait_until(lambda: deployed_rows(database) == 2 * len(NAMES), 120,
                       what="every certificate deployed on both nodes")
            daemon.wait_log("sweep done")
            out = certd(original, "backup", str(settled), "--passphrase-file", str(passphrase))
            assert out.returncode == 0, out.stderr
            assert "encrypted, store schema" in out.stdout
            assert f"{len(NAMES)} certificates" in out.stdout
        finally:
            assert daemon.stop() == 0
        assert (during.stat().st_mode & 0o777) == (settled.stat().st_mode & 0o777) == 0o600
        # the original stopped right after the backup, with nothing left to do: what it
        # shows now is what it held when the backup was taken
        before = status(original)
        assert all(row["status"] == "deployed" for row in before)

        restored = config("restored")
        out = certd(restored, "restore", str(settled), "--passphrase-file", str(passphrase))
        assert out.returncode == 0, out.stderr
        assert f"{len(NAMES)} certificates" in out.stdout and "API tokens into" in out.stdout
        after = status(restored)
        # days_left is not_after (compared) less the moment `status` ran: within a rounding
        assert without_days_left(after) == without_days_left(before)
        assert all(abs(a["days_left"] - b["days_left"]) <= 0.1 for a, b in zip(after, before))
        assert ((tmp_path / "restored" / "api-tokens").read_bytes()
                == (tmp_path / "original" / "api-tokens").read_bytes())
        wrong = tmp_path / "wrong"
        wrong.write_text("not the passphrase\n")
        again = config("again")
        out = certd(again, "restore", str(settled), "--passphrase-file", str(wrong))
        assert out.returncode == 1 and "wrong passphrase" in out.stderr
        assert not (tmp_path / "again").exists()

        # the copy taken mid-issuance, restored: a daemon on it finishes the orders (its
        # listener answers pebble's validations through the nodes), deploys, and renews
        resumed = config("resumed")
        out = certd(resumed, "restore", str(during))
        assert out.returncode == 0, out.stderr
        resumed_db = tmp_path / "resumed" / "certd.db"
        assert account_uri(resumed_db) == account_uri(database)
        daemon = Daemon(resumed, tmp_path / "resumed.log")
        try:
            wait_until(lambda: deployed_rows(resumed_db) == 2 * len(NAMES), 120,
                       what="the restored daemon to finish and deploy every certificate")
            rows = {row["name"]: row for row in status(resumed)}
            assert all(rows[n]["status"] == "deployed" for n in NAMES)
            old = rows[NAMES[0]]["serial"]
            orders = pebble.count_new_orders()
            out = certd(resumed, "renew", "--force", NAMES[0])
            assert out.returncode == 0, out.stderr
            assert "relying on the running daemon" in out.stderr  # its listener answered
            new = {row["name"]: row for row in status(resumed)}[NAMES[0]]["serial"]
            assert new != old and pebble.count_new_orders() == orders + 1
            for node in lab.nodes:
                lab.wait_served_serial(node.name, f"{NAMES[0]}.test", int(new, 16))
            assert account_uri(resumed_db) == account_uri(database)
        finally:
            assert daemon.stop() == 0
        assert "Traceback" not in daemon.log()
    finally:
        pebble.stop()
