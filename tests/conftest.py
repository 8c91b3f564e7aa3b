"""Shared pytest configuration: the lab fixtures (see tests/lab)."""

from tests.lab.fixtures import *  # noqa: F401,F403
