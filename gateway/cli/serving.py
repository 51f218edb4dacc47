"""The CLI beside a running ``serve``: changes only that process can make go through its admin API.

A serve of a SQLite file keeps its pool in memory and hears nothing the CLI writes to the file, so
re-checks and removals go to its admin API (found through the lock file beside the database, where it
announces its URL).  Replicas sharing PostgreSQL hear every write through NOTIFY, so there the CLI
works on the database itself, as it does when no serve is running.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from config import Settings
from gateway.admin.token import NoTokenYet, stored_token
from gateway.cli.common import CommandFailed
from pool.dbfiles import local_database, serving_admin
from pool.errors import DuplicateError, InvalidInputError, NotFoundError

__all__ = ["AdminClient", "running_admin"]


async def running_admin(settings: Settings) -> str | None:
    """The admin URL of a serve of this SQLite file that answers now; None otherwise (PostgreSQL too)."""
    database = local_database(settings.storage)
    if database is None:
        return None
    url = serving_admin(database.absolute())
    if url is None:
        return None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3), trust_env=False) as session:
            async with session.get(url + "/healthz") as resp:
                return url if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


class AdminClient:
    """A few admin API calls; its one-line errors come back as the pool errors the CLI prints (exit 2)."""

    def __init__(self, base: str, settings: Settings) -> None:
        self.base = base
        try:
            self._headers = {"Authorization": f"Bearer {stored_token(settings)}"}
        except NoTokenYet as exc:
            raise CommandFailed(str(exc)) from None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        self._session = aiohttp.ClientSession(
            headers=self._headers, timeout=aiohttp.ClientTimeout(total=300), trust_env=False
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self._session is not None
        try:
            async with self._session.request(method, self.base + path, json=body) as resp:
                answer = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise CommandFailed(f"the running gateway's admin API at {self.base} failed: {exc}") from None
        if status < 400:
            return answer
        message = answer.get("error", f"HTTP {status}") if isinstance(answer, dict) else f"HTTP {status}"
        error = {404: NotFoundError, 409: DuplicateError, 400: InvalidInputError}.get(status)
        if error is not None:
            raise error(message)
        raise CommandFailed(f"the running gateway answered {status}: {message}")
