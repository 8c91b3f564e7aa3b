"""The log notifier: one line on the `certd.alerts` logger, at the notification's severity."""

from __future__ import annotations

import logging

from certd.config import LogNotifierConfig
from certd.model import Notification, Severity
from certd.notifiers.base import summary

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

    async def send(self, notification: Notification) -> None:
        # summary() is one line: a finding's message cannot forge further log lines
        self.logger.log(LEVELS[notification.severity], "%s: %s", notification.event,
                        summary(notification))

    async def close(self) -> None:
        pass
