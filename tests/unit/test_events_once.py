"""Once per pool (``pool/events.py``): the occasion key of each event, the claim rule, and two buses on
one store (two processes of a pool) delivering each occasion once, on both databases."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from pool.events import EventBus, credit_occasion, delivers, occasion
from pool.models import Event, Occasion
from tests.unit.test_events import Recorder
from tests.unit.test_store import store  # noqa: F401  (the fixture over both stores)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Ledger:
    """``Marks`` without a database: a latest top-up per user, marks that fail when told to."""

    def __init__(self, top_ups: dict[int, int] | None = None, *, down: bool = False) -> None:
        self.top_ups = top_ups or {}
        self.down = down

    async def last_top_up(self, user_id: int) -> int:
        if self.down:
            raise ConnectionError("database unreachable")
        return self.top_ups.get(user_id, 0)

    async def get_mark(self, name: str) -> datetime | None:
        raise ConnectionError("database unreachable")

    async def claim_mark(self, name: str, last: datetime | None, at: datetime) -> bool:
        raise ConnectionError("database unreachable")


def test_a_credit_event_is_one_occasion_per_user_and_top_up() -> None:
    assert credit_occasion("credits.exhausted", 7, 12) == credit_occasion("credits.exhausted", 7, 12)
    keys = {
        credit_occasion("credits.exhausted", 7, 12).name,
        credit_occasion("credits.exhausted", 7, 13).name,  # after a top-up: a new occasion
        credit_occasion("credits.exhausted", 8, 12).name,  # another user
        credit_occasion("credits.low_balance", 7, 12).name,  # another event
        credit_occasion("credits.exhausted", 71, 2).name,  # no run-together of user and top-up
        credit_occasion("credits.exhausted", 7, 12).name,
    }
    assert len(keys) == 5
    assert credit_occasion("credits.exhausted", 7, 12).since is None  # never told again under that name


def test_the_claim_rule() -> None:
    assert delivers(None, None) and delivers(None, T0)
    assert not delivers(T0, None)  # a named occasion is told once, ever
    assert not delivers(T0, T0) and not delivers(T0 + timedelta(seconds=1), T0)  # told since the recovery
    assert delivers(T0 - timedelta(seconds=1), T0)  # told before it: this is a new crossing


async def test_occasions_come_from_the_event_or_the_ledger() -> None:
    ledger = Ledger({7: 12})
    assert await occasion(Event("credits.exhausted", {"user_id": 7}), ledger) == credit_occasion(
        "credits.exhausted", 7, 12
    )
    assert await occasion(Event("credits.low_balance", {"user_id": 7, "balance": 1, "threshold": 5}), ledger) == (
        credit_occasion("credits.low_balance", 7, 12)
    )
    own = Occasion("event:source.stale:source-3:since-1.000")
    assert await occasion(Event("source.stale", {"source_id": 3}, once=own), ledger) == own
    # decided by one process already (a claimed scrape, the quality pass): no claim
    assert await occasion(Event("source.failed", {"source_id": 3}), ledger) is None
    assert await occasion(Event("proxy.new_batch", {"source_id": 3}), ledger) is None


async def test_two_processes_on_one_store_deliver_each_occasion_once(store) -> None:  # noqa: F811
    record = await store.add_user("dave", "hash", 5)
    buses, recorders = [], []
    for n in range(2):
        bus, recorder = EventBus(), Recorder(f"hook-{n}", ["*"])
        bus.marks = store
        bus.add_notifier(recorder)
        buses.append(bus)
        recorders.append(recorder)

    async def both_see(event: Event) -> None:
        for bus in buses:
            bus.emit_nowait(event)
        for bus in buses:
            await bus._tasks.wait(10)

    def told() -> int:
        return sum(len(r.got) for r in recorders)

    exhausted = Event("credits.exhausted", {"user_id": record.id})
    await both_see(exhausted)
    await both_see(exhausted)  # a late sighting of the same occasion
    assert told() == 1
    await store.append_ledger([(record.id, 3, "credit")])  # a top-up: the next one is a new occasion
    await both_see(Event("credits.exhausted", {"user_id": record.id}))
    assert told() == 2
    await store.append_ledger([(record.id, -1, "spend"), (record.id, 1, "refund")])  # not a top-up
    await both_see(Event("credits.exhausted", {"user_id": record.id}))
    assert told() == 2

    # since-based (proxy.pool_low): told again only for a crossing after a recovery newer than the mark
    low = Occasion("event:proxy.pool_low", since=T0)
    await both_see(Event("proxy.pool_low", {"active_count": 1, "threshold": 3}, at=T0 + timedelta(seconds=1), once=low))
    assert told() == 3
    await both_see(Event("proxy.pool_low", {"active_count": 1, "threshold": 3}, at=T0 + timedelta(seconds=2), once=low))
    assert told() == 3
    again = Occasion("event:proxy.pool_low", since=T0 + timedelta(seconds=5))  # recovered after that
    await both_see(Event("proxy.pool_low", {"active_count": 2, "threshold": 3}, at=T0 + timedelta(seconds=6), once=again))
    assert told() == 4

    # unclaimed events reach every process's notifiers, as before
    await both_see(Event("source.failed", {"source_id": 1}))
    assert told() == 6


@pytest.mark.parametrize("down", [True, False])
async def test_a_database_out_of_reach_delivers_locally_and_says_so(down: bool, caplog) -> None:
    bus, recorder = EventBus(), Recorder("hook", ["*"])
    bus.marks = Ledger({7: 1}, down=down)
    bus.add_notifier(recorder)
    with caplog.at_level(logging.WARNING, logger="proxy_pool.events"):
        bus.emit_nowait(Event("credits.exhausted", {"user_id": 7}))
        await bus._tasks.wait(10)
    assert [e.type for e in recorder.got] == ["credits.exhausted"]
    assert "could not claim it for the pool" in caplog.text and "ConnectionError" in caplog.text
