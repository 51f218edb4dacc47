"""gateway.admin.cache.Recent: one computation per interval, shared by everyone asking meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admin.cache import Recent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_callers_share_one_computation_and_time_refreshes_it() -> None:
    """Twenty callers while the first computation is held open get its one answer; within the interval
    nothing is computed again; past it, the next caller gets a new value."""
    clock = Clock()
    gate = asyncio.Event()
    results = iter(range(100))

    async def compute() -> int:
        await gate.wait()
        return next(results)

    recent: Recent[int] = Recent(compute, ttl=2.0, clock=clock)
    callers = [asyncio.ensure_future(recent.get()) for _ in range(20)]
    async with asyncio.timeout(5):
        while recent.waiting < 20:
            await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*callers) == [0] * 20
    assert recent.computations == 1
    clock.now += 1.9
    assert await recent.get() == 0 and recent.computations == 1
    clock.now += 0.2
    assert await recent.get() == 1 and recent.computations == 2


async def test_a_caller_going_away_cancels_nothing_for_the_others() -> None:
    clock = Clock()
    gate = asyncio.Event()

    async def compute() -> str:
        await gate.wait()
        return "value"

    recent: Recent[str] = Recent(compute, ttl=2.0, clock=clock)
    first = asyncio.ensure_future(recent.get())
    second = asyncio.ensure_future(recent.get())
    async with asyncio.timeout(5):
        while recent.waiting < 2:
            await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == "value"
    assert recent.computations == 1


async def test_a_failure_reaches_every_caller_and_is_not_kept() -> None:
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise OSError("database is locked")
        return calls

    recent: Recent[int] = Recent(compute, ttl=2.0, clock=Clock())
    outcomes = await asyncio.gather(recent.get(), recent.get(), return_exceptions=True)
    assert all(isinstance(o, OSError) for o in outcomes)
    assert await recent.get() == 2


async def test_forget_makes_the_next_call_compute_even_past_one_under_way() -> None:
    """A change made meanwhile: a computation started before it is not kept for later callers."""
    clock = Clock()
    values = iter(["old", "new", "newer"])
    gate = asyncio.Event()

    async def compute() -> str:
        value = next(values)
        if value == "old":
            await gate.wait()
        return value

    recent: Recent[str] = Recent(compute, ttl=60.0, clock=clock)
    before = asyncio.ensure_future(recent.get())
    async with asyncio.timeout(5):
        while recent.waiting < 1:
            await asyncio.sleep(0)
    recent.forget()
    assert await recent.get() == "new"
    gate.set()
    assert await before == "old"
    assert await recent.get() == "new"  # "old" was not kept
    recent.forget()
    assert await recent.get() == "newer"


@pytest.mark.parametrize("ttl", [2.0])
async def test_nothing_is_computed_before_someone_asks(ttl: float) -> None:
    async def compute() -> int:
        raise AssertionError("computed unasked")

    recent: Recent[int] = Recent(compute, ttl=ttl)
    assert recent.computations == 0
