"""What the admin API and the CLI show about a user: no hash, no password; usage as every replica's sum."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pool.accounts.account import Account

__all__ = ["UserView", "iso_time", "user_view"]


@dataclass(frozen=True)
class UserView:
    """What the admin API and the CLI show about a user (no hash, no password)."""

    id: int
    name: str
    credits: int
    enabled: bool = True
    max_connections: int | None = None
    max_requests_per_second: float | None = None
    requests: int = 0
    tunnels: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    last_seen: float | None = None

    def public_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "credits": self.credits,
            "enabled": self.enabled,
            "max_connections": self.max_connections,
            "max_requests_per_second": self.max_requests_per_second,
            "requests": self.requests,
            "tunnels": self.tunnels,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "last_seen": iso_time(self.last_seen),
        }


def iso_time(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


def user_view(a: Account) -> UserView:
    """Usage: the store's sum (every replica's flushes) plus ours since the last flush."""
    base, u = a.base, a.usage
    seen = max((t for t in (base.last_seen if base else None, u.last_seen) if t is not None), default=None)
    return UserView(
        a.id,
        a.name,
        a.known,
        a.enabled,
        a.max_connections,
        a.rate.rate if a.rate is not None else None,
        u.requests + (base.requests if base else 0),
        u.tunnels + (base.tunnels if base else 0),
        u.bytes_up + (base.bytes_up if base else 0),
        u.bytes_down + (base.bytes_down if base else 0),
        seen,
    )
