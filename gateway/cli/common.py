"""What every command shares: its typed failure, the database it opens, and how rows are printed."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from config import Settings
from pool.store import Store
from pool.stores import display_location
from pool.stores import open_store as _open

__all__ = ["CommandFailed", "emit", "open_store", "table"]


class CommandFailed(Exception):
    """A runtime failure (exit 1), reported as one line."""


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    location = settings.storage.location
    try:
        store = await _open(location)
    except Exception as exc:
        raise CommandFailed(f"cannot open database {display_location(location)}: {exc}") from None
    try:
        yield store
    finally:
        await store.close()


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def emit(rows: list[dict[str, Any]], columns: Sequence[str], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows, columns))
