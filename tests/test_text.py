"""certd.text.one_line: the one way outside text becomes one line of a message."""

from __future__ import annotations

from certd.deployers.local import CommandResult
from certd.text import one_line


def test_lines_joined_controls_and_bidi_replaced():
    assert one_line("nginx: [emerg]\r\n\x1b[2Jbad\u202e key\n\n") == "nginx: [emerg] [2Jbad  key"
    assert one_line("a\nb", sep=" / ") == "a / b"
    assert one_line(None) == "" and one_line(42) == ""


def test_bounded_with_a_mark():
    assert one_line("x" * 1000, 50) == "x" * 49 + "…"
    shown = one_line("é" * 100 + "\x00", 20, replace="?", ascii_only=True)
    assert shown == "?" * 17 + "..." and shown.isascii()


def test_a_command_failure_quotes_the_node_cleaned_and_bounded():
    result = CommandResult("nginx -t", 1, "ok\n\x1b]0;pwned\x07" + "z" * 10_000)
    text = result.describe()
    assert text.startswith("nginx -t: exit 1: ") and len(text) < 400
    assert text.isprintable()
