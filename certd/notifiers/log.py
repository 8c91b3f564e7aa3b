"""The log notifier: one line on the `certd.alerts` logger, at the notification's severity (a
digest: one line too, its title and first items, at the digest's severity)."""

from __future__ import annotations

import logging

from certd.config import LogNotifierConfig
from certd.model import Notification, Severity
from certd.notifiers.base import Digest, digest_summary, summary

LEVELS = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.ERROR: logging.ERROR,
    Severity.CRITICAL: logging.CRITICAL,
}


class LogNotifier:
    def __init__(self, config: LogNotifierConfig, logger: logging.Logger | None = None):
        self.name = "log"
        self.min_severity = Severity(config.min_severity)
        self.logger = logger or logging.getLogger("certd.alerts")

    async def send(self, notification: Notification | Digest) -> None:
        # summary() is one line: a finding's message cannot forge further log lines
        text = (digest_summary(notification) if isinstance(notification, Digest)
                else summary(notification))
        self.logger.log(LEVELS[notification.severity], "%s: %s", notification.event, text)

    async def close(self) -> None:
        pass
