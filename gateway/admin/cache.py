"""A value kept for a few seconds and computed once for everyone asking meanwhile (single flight).

``/api/stats`` counts a whole pool and asks the database for every source's figures: on a 100k-proxy
SQLite pool that is ~170 ms of the store's thread, and every open dashboard asks every 5 s.  With
``Recent`` in front, N dashboards cost one computation per ``ttl``: an answer at most ``ttl`` old is
handed out as it is, and callers that come while one is being computed all await that one (a task
of its own, so a caller that goes away cancels nothing for the others).  The clock is injected, so a
test moves time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from pool.tasks import spawn

__all__ = ["Recent"]

T = TypeVar("T")


class Recent(Generic[T]):
    """``await get()``: the value of ``compute()`` from at most ``ttl`` seconds ago (by ``clock``)."""

    def __init__(self, compute: Callable[[], Awaitable[T]], ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.compute = compute
        self.ttl = ttl
        self.clock = clock
        self.computations = 0  # how many ran (tests, and a figure worth knowing)
        self.waiting = 0  # callers awaiting the computation under way
        self._value: T | None = None
        self._expires = float("-inf")
        self._flight: asyncio.Task[T] | None = None
        self._generation = 0  # moved by forget(): a computation started before keeps no value

    async def get(self) -> T:
        if self._value is not None and self.clock() < self._expires:
            return self._value
        flight = self._flight
        if flight is None:
            flight = self._flight = spawn(self._run(self._generation), name="admin-recent")
        self.waiting += 1
        try:
            return await asyncio.shield(flight)
        finally:
            self.waiting -= 1

    def forget(self) -> None:
        """The next ``get`` computes afresh (after a change made through this admin API)."""
        self._expires = float("-inf")
        self._generation += 1
        self._flight = None  # one under way may predate the change: its callers have it, nobody else

    async def _run(self, generation: int) -> T:
        self.computations += 1
        try:
            value = await self.compute()
        finally:
            if generation == self._generation:
                self._flight = None
        if generation == self._generation:
            self._value = value
            self._expires = self.clock() + self.ttl
        return value
