"""certd/logs.py: the JSON line format, the per-component levels, the private-key scrub."""

from __future__ import annotations

import json
import logging

import pytest

from certd import config as configuration
from certd import logs
from certd.errors import ConfigError

KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0w\n-----END PRIVATE KEY-----\n"


def record(msg: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("certd.rollout", logging.INFO, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_have_stable_keys():
    line = logs.JsonFormatter().format(record(
        "file[%s]: deployed", "fe1", event="deploy.ok", certificate="portal", node="fe1",
        duration_ms=31, unrelated="not a key"))
    doc = json.loads(line)
    assert doc["level"] == "info" and doc["logger"] == "certd.rollout"
    assert doc["message"] == "file[fe1]: deployed" and doc["ts"].endswith("+00:00")
    assert {k: doc[k] for k in ("event", "certificate", "node", "duration_ms")} == {
        "event": "deploy.ok", "certificate": "portal", "node": "fe1", "duration_ms": 31}
    assert "unrelated" not in doc and "\n" not in line


def test_exceptions_become_one_json_field():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        doc = json.loads(logs.JsonFormatter().format(record("failed", exc_info=sys.exc_info())))
    assert "ValueError: boom" in doc["exception"]


@pytest.mark.parametrize("text", [KEY, "before " + KEY + " after", KEY[:60],
                                  KEY.replace("PRIVATE", "EC PRIVATE")])
def test_private_keys_never_reach_a_line(text):
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        line = formatter.format(record("%s", text, error=text))
        assert "MIGHAgEAMBMG" not in line and "private key removed" in line


def test_levels_per_component_and_reset_on_reload():
    root = logging.getLogger().level
    try:
        logs.apply_levels("info", {"certd.deployers": "debug"})
        assert logging.getLogger("certd.deployers").getEffectiveLevel() == logging.DEBUG
        assert logging.getLogger("aiosqlite").level == logging.WARNING
        logs.apply_levels("warning", {})
        assert logging.getLogger("certd.deployers").getEffectiveLevel() == logging.WARNING
    finally:
        logs.apply_levels("info", {})
        logging.getLogger().setLevel(root)


@pytest.mark.parametrize("value", [{"certd deployers": "debug"}, {"certd": "loud"},
                                   {"x" * 101: "info"}, "debug"])
def test_bad_log_levels_are_config_errors(value):
    with pytest.raises(ConfigError, match="log_levels"):
        configuration.parse({"log_levels": value})


def test_log_format_is_checked():
    assert configuration.parse({"log_format": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format"):
        configuration.parse({"log_format": "xml"})


def test_setup_installs_one_handler_on_the_current_stderr(monkeypatch):
    import io

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    root.handlers = []  # a fresh process: nobody configured logging
    try:
        logs.setup("info", "json")
        logs.setup("info", "text")  # again (a second call): still one handler
        assert len(root.handlers) == 1 and isinstance(root.handlers[0], logs._Stderr)
        swapped = io.StringIO()
        monkeypatch.setattr("sys.stderr", swapped)
        logging.getLogger("certd.test").warning("to the current stderr")
        assert "WARNING certd.test: to the current stderr" in swapped.getvalue()
        foreign = logging.NullHandler()  # someone else's logging: left as it is
        root.handlers = [foreign]
        logs.setup("debug", "json")
        assert root.handlers == [foreign] and root.level == logging.INFO
    finally:
        root.handlers = saved[1]
        root.setLevel(saved[0])
