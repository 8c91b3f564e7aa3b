"""Notifiers: one Protocol, one implementation per `alerts.notifiers[].type`."""

import aiohttp

from certd.config import (
    EmailNotifierConfig,
    LogNotifierConfig,
    NotifierConfig,
    WebhookNotifierConfig,
)
from certd.notifiers.base import Notifier, payload, slack_text, wants
from certd.notifiers.email import EmailNotifier
from certd.notifiers.log import LogNotifier
from certd.notifiers.webhook import WebhookNotifier


def build(config: NotifierConfig, session: aiohttp.ClientSession) -> Notifier:
    """The registry: one branch per config model of the discriminated union. `session` is
    shared by the HTTP notifiers; its owner closes it."""
    if isinstance(config, WebhookNotifierConfig):
        return WebhookNotifier(config, session)
    if isinstance(config, EmailNotifierConfig):
        return EmailNotifier(config)
    if isinstance(config, LogNotifierConfig):
        return LogNotifier(config)
    raise TypeError(f"no notifier for {type(config).__name__}")


__all__ = ["Notifier", "build", "payload", "slack_text", "wants"]
