"""Which store a location names: a ``postgresql://`` URL is the shared store, anything else a SQLite file."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from pool.store import SqliteStore, Store
from pool.store.postgres import PostgresStore, is_postgres_url

__all__ = ["display_location", "is_postgres_url", "open_store"]


async def open_store(location: str, *, shared: bool = False) -> Store:
    """``shared``: a SQLite file opened by one worker of several (PostgreSQL is always shared)."""
    if is_postgres_url(location):
        return await PostgresStore.open(location)
    return await SqliteStore.open(location, shared=shared)


def display_location(location: str) -> str:
    """The location with any password shown as ``***`` (for errors and logs)."""
    if not is_postgres_url(location):
        return location
    parts = urlsplit(location)
    if parts.password is None:
        return location
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
