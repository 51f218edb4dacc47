"""Log set-up: one line per event that matters, as text or JSON.  No per-request lines unless asked.

Every record passes ``config.printable.EscapingFilter``: control characters in what a log call
interpolates (strings from outside) are written as ``\\xNN``, so no log line carries a terminal escape.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from config.printable import EscapingFilter, printable

__all__ = ["RepeatLimit", "setup_logging"]


class RepeatLimit(logging.Filter):
    """Repeated warnings and errors are rate-limited: the same message template from the same logger
    passes ``burst`` times per ``window`` seconds; the first one after a window that dropped some says how
    many were dropped.  Per-request lines (INFO, the access log) are never limited.  A message is known by
    its template's first line (asyncio's exception handler logs pre-formatted text whose first line says
    what happened: "socket.accept() out of system resource").  Memory is bounded: at most ``keys``."""

    def __init__(
        self,
        burst: int = 5,
        window: float = 60.0,
        keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst, self.window, self.keys, self.clock = burst, window, keys, clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [window start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg).split("\n", 1)[0][:120])
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= self.window:
            dropped = int(seen[2]) if seen is not None else 0
            if seen is None and len(self._seen) >= self.keys:
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = [now, 1, 0]
            if dropped:
                note = f"{dropped} more like this in the last {self.window:g} s not logged"
                record.msg = f"{record.msg} ({note})"
            return True
        if seen[1] < self.burst:
            seen[1] += 1
            return True
        seen[2] += 1
        return False


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # the workers of ``serve --workers N`` share one stderr
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The text format; a traceback's lines keep their breaks, their control characters are escaped."""

    def formatException(self, ei: Any) -> str:
        return "\n".join(printable(line) for line in super().formatException(ei).split("\n"))


def setup_logging(level: str = "info", fmt: str = "text", access_log: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler.addFilter(RepeatLimit())
    handler.addFilter(EscapingFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("proxy_pool.access").setLevel("INFO" if access_log else "WARNING")
    for noisy in ("aiohttp.access", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel("WARNING")
