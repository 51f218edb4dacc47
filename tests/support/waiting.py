"""Waiting for a state that has no event to await (fd counts, kernel socket tables, bookkeeping sets,
other processes' admin APIs and databases)."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable

import pytest

__all__ = ["across_processes", "eventually"]


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str | Callable[[], str] | None = None,
    timeout: float = 10.0,
    *,
    interval: float = 0.005,
) -> None:
    """Poll ``predicate`` (plain or async) until it holds; fail naming what is left when it does not.

    Bounded, and it asserts a state rather than a time: a slow machine only waits longer."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                held = predicate()
                if inspect.isawaitable(held):
                    held = await held
                if held:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        said = what() if callable(what) else what
        pytest.fail(f"not reached within {timeout:g}s" + (f": {said}" if said else ""))


# other processes (replicas, a serving subprocess): each probe is a request, and a loaded machine starts slowly
across_processes = functools.partial(eventually, timeout=30.0, interval=0.05)
