"""Per-user usage counters: bumped on the hot path in memory, added to the store's sums at each flush."""

from __future__ import annotations

import time

from pool.store import UsageRow

__all__ = ["Usage", "plus"]


class Usage:
    """One user's usage since the last flush, bumped on the hot path (plain attribute adds)."""

    __slots__ = ("bytes_down", "bytes_up", "last_seen", "requests", "tunnels")

    def __init__(self) -> None:
        self.requests = self.tunnels = self.bytes_up = self.bytes_down = 0
        self.last_seen: float | None = None

    def add_bytes(self, up: int, down: int) -> None:
        """A request or tunnel of this user ended, having carried these bytes."""
        self.bytes_up += up
        self.bytes_down += down
        self.last_seen = time.time()

    def totals(self) -> tuple[int, int, int, int]:
        return self.requests, self.tunnels, self.bytes_up, self.bytes_down

    def take(self, row: UsageRow) -> None:
        """``row`` is being written: it no longer counts here."""
        self.requests -= row.requests
        self.tunnels -= row.tunnels
        self.bytes_up -= row.bytes_up
        self.bytes_down -= row.bytes_down
        if self.last_seen == row.last_seen:
            self.last_seen = None

    def put_back(self, row: UsageRow) -> None:
        """The write of ``row`` failed: it counts here again."""
        self.requests += row.requests
        self.tunnels += row.tunnels
        self.bytes_up += row.bytes_up
        self.bytes_down += row.bytes_down
        if row.last_seen is not None and (self.last_seen is None or row.last_seen > self.last_seen):
            self.last_seen = row.last_seen


def plus(base: UsageRow | None, row: UsageRow) -> UsageRow:
    """``base`` with the increment ``row`` added (``last_seen`` the later one)."""
    if base is None:
        return row
    seen = max(t for t in (base.last_seen, row.last_seen, 0.0) if t is not None) or None
    return UsageRow(
        row.user_id,
        base.requests + row.requests,
        base.tunnels + row.tunnels,
        base.bytes_up + row.bytes_up,
        base.bytes_down + row.bytes_down,
        seen,
    )
