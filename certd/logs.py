"""Logging setup: human-readable lines by default, or one JSON object per line
(`log_format: json`, `--log-format json`) for journald/Loki, a level per component
(`log_levels: {certd.deployers: debug}`), applied again on reload.

JSON keys are stable: `ts`, `level`, `logger`, `message`, then whichever of KEYS the call
site passed with `extra=` (`log.info("...", extra={"certificate": name})`), then `exception`
(the traceback) if any. A last line of defence drops PEM private-key blocks from any line;
the first line is never logging key material or tokens at all.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

KEYS = ("event", "certificate", "domain", "node", "order", "duration_ms", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# libraries whose INFO lines are noise in a daemon's log unless asked for per component
# (asyncssh: a few INFO lines per SSH connection and channel; `log_levels: {asyncssh: info}`)
QUIET = {"aiosqlite": "WARNING", "apscheduler": "WARNING", "asyncssh": "WARNING"}
_PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|$)",
                          re.DOTALL)


def scrub(text: str) -> str:
    """`text` with any PEM private-key block (even a truncated one) replaced."""
    if "PRIVATE KEY-----" not in text:
        return text
    return _PRIVATE_KEY.sub("[private key removed]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc)
                          .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for key in KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class _Stderr(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a record is written (as logging's own last
    resort does), so a replaced or closed stderr never breaks logging."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def setup(level: str, fmt: str = "text", levels: dict[str, str] | None = None) -> None:
    """One handler on stderr (journald takes it from there), replacing the one an earlier
    call installed. Like logging.basicConfig, it leaves logging alone where someone else
    configured it already (certd's CLI called inside a test runner or another program)."""
    root = logging.getLogger()
    if any(not isinstance(h, _Stderr) for h in root.handlers):
        return
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    apply_levels(level, levels)


_configured: set[str] = set()  # components given a level by the config, reset on reload


def apply_levels(level: str, levels: dict[str, str] | None = None) -> None:
    """The root level, then each component's (a reload drops the ones no longer given)."""
    logging.getLogger().setLevel(level.upper())
    wanted = {**QUIET, **{k: v.upper() for k, v in (levels or {}).items()}}
    for name in _configured - set(wanted):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, value in wanted.items():
        logging.getLogger(name).setLevel(value)
    _configured.clear()
    _configured.update(wanted)
