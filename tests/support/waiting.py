"""Waiting for a state that has no event to await (fd counts, kernel socket tables, bookkeeping sets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

__all__ = ["eventually"]


async def eventually(
    predicate: Callable[[], bool], what: Callable[[], str] | None = None, timeout: float = 10.0
) -> None:
    """Poll ``predicate`` until the event loop has made it true; fail naming what is left when it does not.

    Bounded, and it asserts a state rather than a time: a slow machine only waits longer."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"not reached within {timeout}s" + (f": {what()}" if what else ""))
