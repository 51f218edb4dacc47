"""Text from outside made safe for a terminal: the one helper every log line goes through.

A string that came from outside (a source's reason phrase, an upstream's error, a header, a plugin's
message) may carry ESC sequences, BEL or carriage returns that rewrite an operator's terminal or fake
log lines.  ``printable`` writes every control character (C0, DEL, C1) and the Unicode line and
paragraph separators as ``\\xNN`` / ``\\uNNNN``, and a lone surrogate (a byte that was not UTF-8, kept by
``surrogateescape``: no database or JSON encoder takes it) as its byte or code point; everything else,
non-ASCII letters included, stays.
``gateway.logs`` applies it to every argument of every log record (``EscapingFilter``), so a log call
needs nothing of its own.
"""

from __future__ import annotations

import logging

__all__ = ["EscapingFilter", "printable"]

_ESCAPES = (
    {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
    | {c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0xD800, 0xDC80), *range(0xDD00, 0xE000))}
    | {c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)}  # a byte kept by surrogateescape
)


def printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\x1b``), nothing else changed."""
    return text.translate(_ESCAPES)


def _safe(value: object) -> object:
    if isinstance(value, (int, float)) or value is None:
        return value  # numbers keep their %d / %.1f formats
    return printable(value if isinstance(value, str) else str(value))


class EscapingFilter(logging.Filter):
    """Escapes control characters in a record's arguments (what a log call interpolates: the outside
    strings) and in a message logged without arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            if isinstance(record.args, tuple):
                record.args = tuple(_safe(a) for a in record.args)
            elif isinstance(record.args, dict):
                record.args = {k: _safe(v) for k, v in record.args.items()}
        elif isinstance(record.msg, str):
            record.msg = printable(record.msg)
        else:
            record.msg = printable(str(record.msg))
        return True
