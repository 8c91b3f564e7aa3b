"""Text that came from outside certd (a CA's problem detail, a node's command output, a
minion's comment, HAProxy's answer, a server's error line) made fit for one line of a message,
an event, a log line or a terminal: the one helper every component uses."""

from __future__ import annotations

from typing import Any


def one_line(value: Any, limit: int = 300, *, sep: str = " ", replace: str = " ",
             ascii_only: bool = False) -> str:
    """`value`'s lines joined by `sep` (blank ones dropped), every character that is not
    printable (control, bidi and other format characters; with `ascii_only`, anything outside
    printable ASCII) replaced by `replace`, cut to `limit` characters. Not a string: ''."""
    if not isinstance(value, str):
        return ""

    def shown(ch: str) -> str:
        ok = " " <= ch <= "~" if ascii_only else ch.isprintable()
        return ch if ok else replace

    lines = ("".join(map(shown, line)).strip() for line in value[:limit * 4].splitlines())
    text = sep.join(line for line in lines if line)
    if len(text) <= limit:
        return text
    mark = "..." if ascii_only else "…"
    return text[:limit - len(mark)] + mark
