"""A serving gateway's beat in the store: it is alive, and where its admin API answers.

The CLI (``proxy-pool users ...``) reads the beats to reach a running gateway's admin API, so the
balances it prints and the changes it makes are the gateway's own (unsettled spends included, a
debit out of the gateway's lease), not the database's view of a moment ago.  A beat older than
``ALIVE`` seconds is a gateway that stopped uncleanly; a clean stop removes its beat.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time

from pool.store import GatewayBeat, Store
from pool.tasks import TaskSet

__all__ = ["ALIVE", "Beacon", "admin_url", "live_gateways"]

log = logging.getLogger("proxy_pool.beacon")

INTERVAL = 5.0  # seconds between beats
ALIVE = 3 * INTERVAL  # a beat younger than this is a live gateway


def admin_url(host: str, port: int) -> str:
    """The URL a process on this host reaches the admin API at (a wildcard listen is loopback here)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"http://{host}:{port}"


def _loopback(url: str) -> bool:
    host = url.split("//", 1)[-1].rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def live_gateways(beats: list[GatewayBeat], now: float | None = None) -> list[str]:
    """Admin URLs of the live gateways this host can reach, freshest first: a loopback URL only
    from a gateway on this very host (elsewhere it would name some other process)."""
    now = time.time() if now is None else now
    here = socket.gethostname()
    return [
        b.admin_url
        for b in sorted(beats, key=lambda b: b.at, reverse=True)
        if b.at > now - ALIVE and (b.host == here or not _loopback(b.admin_url))
    ]


class Beacon:
    """Beats every ``INTERVAL`` seconds while the gateway serves; the beat goes at ``stop``."""

    def __init__(self, store: Store, replica: str, url: str) -> None:
        self.store = store
        self.replica = replica
        self.url = url
        self.host = socket.gethostname()
        self._tasks = TaskSet()

    async def start(self) -> None:
        await self._beat()
        self._tasks.spawn(self._loop(), name="gateway-beacon")

    async def stop(self) -> None:
        await self._tasks.close()
        try:
            await self.store.beat(self.replica, self.host, None)
        except Exception as exc:  # noqa: BLE001  (the beat ages out on its own)
            log.debug("could not remove the gateway beat: %s", exc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            await self._beat()

    async def _beat(self) -> None:
        try:
            await self.store.beat(self.replica, self.host, self.url)
        except Exception as exc:  # noqa: BLE001  (the database may be away; the next beat retries)
            log.debug("gateway beat not written: %s", exc)
