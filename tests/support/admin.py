"""Talking to a running pool's admin API as the operator: the bearer token every ``/api/*`` route wants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["admin_headers", "admin_session", "token_beside"]


def admin_headers(pool: Any) -> dict[str, str]:
    """``Authorization: Bearer TOKEN`` for an in-process ``ProxyPool`` (configured or generated token)."""
    assert pool.admin_token, "the pool has not started"
    return {"Authorization": f"Bearer {pool.admin_token}"}


def admin_session(pool: Any, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session that sends the pool's admin token with every request."""
    return aiohttp.ClientSession(headers=admin_headers(pool), **kwargs)


def token_beside(database: str | Path) -> dict[str, str]:
    """The header for a ``serve`` subprocess on ``database``, read from the token file it generated."""
    token = Path(f"{database}.admin-token").read_text(encoding="ascii").strip()
    return {"Authorization": f"Bearer {token}"}
