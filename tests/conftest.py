"""Shared pytest configuration: the lab fixtures (see tests/lab) and the notifier tests' real
receivers (a webhook receiver, an SMTP server: tests/notify_servers.py), the plain `store`
fixture and the store contract's `any_backend` / `any_store` (tests/stores.py)."""

from tests.lab.fixtures import *  # noqa: F401,F403
from tests.notify_servers import ca, receiver, smtp  # noqa: F401
from tests.stores import any_backend, any_store, store  # noqa: F401
