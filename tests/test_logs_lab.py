"""Every log line of a lab run, in both formats (issue 12, item 4): a daemon issues and deploys
a configured certificate and an alias added through the API (a real token on every request),
is reloaded, and renews; its whole log at debug level holds no PEM block (no key, no
certificate body) and no API token. In JSON, every line is one object with the stable keys."""

from __future__ import annotations

import json

import pytest

from tests.certd_lab import Daemon, lab_config_data, run_certd, write_config

pytestmark = pytest.mark.lab

TOKEN = "logtest-" + "q7" * 20  # the admin token the CLI presents


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_key_or_token_in_any_log_line(lab, tmp_path, fmt):
    alias = f"logs-{fmt}.test"
    lab.set_sites({"logs": ["logs.test"], alias: [alias]})
    data = lab_config_data(lab, tmp_path / "state",
                           [{"name": "logs", "domains": ["logs.test"], "frontends": ["web"]}])
    data.update(log_format=fmt, log_level="debug")
    data["domains"]["default_frontends"] = ["web"]
    data["api"]["tokens_file"] = str(tmp_path / "tokens")
    (tmp_path / "tokens").write_text(f"platform {TOKEN}\n")
    cfg = write_config(tmp_path / "c.yaml", data)
    env = {"CERTD_API_TOKEN": TOKEN}
    daemon = Daemon(cfg, tmp_path / "certd.log")
    try:
        daemon.wait_log("sweep done")
        added = run_certd(cfg, "domains", "add", alias, "--wait", env=env)
        assert added.returncode == 0, added.stderr
        assert run_certd(cfg, "reload").returncode == 0
        renewed = run_certd(cfg, "renew", "logs", "--force")
        assert renewed.returncode == 0, renewed.stderr
        wrong = run_certd(cfg, "domains", "list", env={"CERTD_API_TOKEN": TOKEN[::-1]})
        assert wrong.returncode == 1
    finally:
        assert daemon.stop() == 0
    text = daemon.log()
    assert "issued serial" in text and "config reloaded" in text
    assert "-----BEGIN" not in text and "PRIVATE KEY" not in text
    assert TOKEN not in text and TOKEN[::-1] not in text
    if fmt == "json":
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert all({"ts", "level", "logger", "message"} <= set(doc) for doc in lines)
        kinds = {(doc.get("event"), doc.get("certificate")) for doc in lines}
        assert ("issue.ok", "logs") in kinds and ("issue.ok", alias) in kinds
        assert any(doc.get("event") == "deploy.ok" and doc.get("node") == "fe2"
                   for doc in lines)
        assert any(doc.get("event") == "sweep.done" and "duration_ms" in doc for doc in lines)
