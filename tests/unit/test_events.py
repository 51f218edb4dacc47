"""EventBus: glob subscriptions and fire-and-forget delivery that no notifier can block or break."""

from __future__ import annotations

import asyncio

import pytest

from pool.events import EVENT_TYPES, EventBus, matches
from pool.models import Event


class Recorder:
    """A notifier that records what it got and signals each delivery."""

    def __init__(self, name: str, subscribes_to: list[str]) -> None:
        self.name = name
        self.subscribes_to = subscribes_to
        self.got: list[Event] = []
        self.arrived = asyncio.Event()

    async def notify(self, event: Event) -> None:
        self.got.append(event)
        self.arrived.set()

    async def health_check(self) -> bool:
        return True


class Blocker(Recorder):
    """Never finishes a delivery; notes when it starts and when it is cancelled."""

    def __init__(self, name: str = "blocker", subscribes_to: list[str] | None = None) -> None:
        super().__init__(name, subscribes_to or ["*"])
        self.started = asyncio.Event()
        self.cancelled = False

    async def notify(self, event: Event) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()  # forever
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class Raiser(Recorder):
    async def notify(self, event: Event) -> None:
        self.arrived.set()
        raise ConnectionRefusedError("smtp down")


# -- glob matching ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "patterns", "expected"),
    [
        ("proxy.pool_low", ["*"], True),
        ("proxy.pool_low", ["proxy.*"], True),
        ("proxy.new_batch", ["proxy.*"], True),
        ("source.failed", ["proxy.*"], False),
        ("credits.low_balance", ["credits.low_balance"], True),
        ("credits.exhausted", ["credits.low_balance"], False),
        ("source.stale", ["proxy.*", "source.stale"], True),
        ("source.failed", [], False),
        ("proxyXpool_low", ["proxy.*"], False),
        ("Proxy.pool_low", ["proxy.*"], False),
    ],
)
def test_glob_matching(event_type, patterns, expected):
    """'*' matches all, 'proxy.*' the proxy events, an exact name only itself; case matters."""
    assert matches(event_type, patterns) is expected


def test_documented_event_types():
    """The event table of the contract."""
    assert set(EVENT_TYPES) == {
        "proxy.pool_low",
        "proxy.new_batch",
        "source.failed",
        "source.stale",
        "credits.low_balance",
        "credits.exhausted",
        "source.quarantined",
    }


# -- delivery --------------------------------------------------------------------------------------


async def test_each_notifier_gets_only_what_it_subscribed_to():
    """Star, prefix and exact subscribers each get their events and no others."""
    bus = EventBus()
    everything = Recorder("all", ["*"])
    proxies = Recorder("proxies", ["proxy.*"])
    exact = Recorder("exact", ["credits.exhausted"])
    for n in (everything, proxies, exact):
        bus.add_notifier(n)
    for t in ("proxy.pool_low", "source.failed", "credits.exhausted", "proxy.new_batch"):
        bus.emit_nowait(Event(t, {}))
    await bus.drain(timeout=10)
    assert sorted(e.type for e in everything.got) == sorted(
        ["proxy.pool_low", "source.failed", "credits.exhausted", "proxy.new_batch"]
    )
    assert sorted(e.type for e in proxies.got) == ["proxy.new_batch", "proxy.pool_low"]
    assert [e.type for e in exact.got] == ["credits.exhausted"]


async def test_the_event_is_delivered_as_emitted():
    """The notifier receives the very event: type, payload and time."""
    bus = EventBus()
    rec = Recorder("r", ["*"])
    bus.add_notifier(rec)
    event = Event("source.failed", {"source_id": 3, "error": "HTTP 500", "consecutive_failures": 2})
    await bus.emit(event)
    await asyncio.wait_for(rec.arrived.wait(), 10)
    assert rec.got == [event]
    await bus.drain(timeout=1)


async def test_a_notifier_that_never_returns_blocks_nothing():
    """emit returns at once while a notifier hangs; the other notifiers still get the event."""
    bus = EventBus()
    blocker, rec = Blocker(), Recorder("r", ["*"])
    bus.add_notifier(blocker)
    bus.add_notifier(rec)
    await bus.emit(Event("proxy.pool_low", {"active_count": 0, "threshold": 5}))  # returns without waiting
    bus.emit_nowait(Event("proxy.pool_low", {"active_count": 0, "threshold": 5}))
    await asyncio.wait_for(rec.arrived.wait(), 10)
    await asyncio.wait_for(blocker.started.wait(), 10)
    assert len(rec.got) >= 1
    await bus.drain(timeout=0)  # shutdown cancels what still hangs
    assert blocker.cancelled


async def test_a_hanging_delivery_times_out_and_counts_as_a_failure():
    """With a notify timeout, a hung delivery ends as a recorded failure instead of living forever."""
    bus = EventBus(notify_timeout=0.05)
    blocker = Blocker()
    bus.add_notifier(blocker)
    bus.emit_nowait(Event("source.stale", {}))
    await bus.drain(timeout=10)
    assert blocker.cancelled
    assert bus.delivery_failures == {"blocker": 1}
    assert "TimeoutError" in bus.last_error["blocker"]


async def test_a_raising_notifier_is_logged_and_counted_not_propagated(caplog):
    """A notifier that raises: emit is unaffected, the failure is counted with its reason, others still deliver."""
    bus = EventBus()
    raiser, rec = Raiser("smtp", ["*"]), Recorder("hook", ["*"])
    bus.add_notifier(raiser)
    bus.add_notifier(rec)
    for _ in range(3):
        bus.emit_nowait(Event("credits.exhausted", {"user_id": 1}))
    await bus.drain(timeout=10)
    assert len(rec.got) == 3
    assert bus.delivery_failures == {"smtp": 3}
    assert bus.last_error["smtp"] == "ConnectionRefusedError: smtp down"
    assert "smtp down" in caplog.text


async def test_notifier_that_raises_before_awaiting_does_not_break_emit():
    """Even a notify() that is not a coroutine and raises when called stays inside its task."""

    class SyncRaiser(Recorder):
        def notify(self, event: Event):  # type: ignore[override]
            raise RuntimeError("not even async")

    bus = EventBus()
    bus.add_notifier(SyncRaiser("bad", ["*"]))
    bus.emit_nowait(Event("proxy.new_batch", {"source_id": 1, "count": 2}))
    await bus.drain(timeout=10)
    assert bus.delivery_failures == {"bad": 1}


async def test_no_subscriber_means_no_task():
    """An event nobody wants is dropped at once."""
    bus = EventBus()
    rec = Recorder("r", ["credits.*"])
    bus.add_notifier(rec)
    bus.emit_nowait(Event("proxy.pool_low", {}))
    await bus.drain(timeout=10)
    assert rec.got == []


# -- listeners -------------------------------------------------------------------------------------


async def test_listeners_see_every_event_synchronously():
    """In-process listeners (metrics, logs) see every event before emit returns, whatever the subscriptions."""
    bus = EventBus()
    seen: list[str] = []
    bus.add_listener(lambda e: seen.append(e.type))
    bus.emit_nowait(Event("proxy.pool_low", {}))
    bus.emit_nowait(Event("source.failed", {}))
    assert seen == ["proxy.pool_low", "source.failed"]


async def test_a_broken_listener_does_not_stop_the_others_or_the_caller():
    """A listener that raises is logged; later listeners and notifiers still run."""
    bus = EventBus()
    seen: list[str] = []

    def broken(event: Event) -> None:
        raise ValueError("listener bug")

    bus.add_listener(broken)
    bus.add_listener(lambda e: seen.append(e.type))
    rec = Recorder("r", ["*"])
    bus.add_notifier(rec)
    bus.emit_nowait(Event("credits.low_balance", {"user_id": 1, "balance": 5, "threshold": 10}))
    assert seen == ["credits.low_balance"]
    await bus.drain(timeout=10)
    assert [e.type for e in rec.got] == ["credits.low_balance"]


def test_listeners_work_without_an_event_loop():
    """With only listeners, emit_nowait needs no running loop (synchronous callers)."""
    bus = EventBus()
    seen: list[Event] = []
    bus.add_listener(seen.append)
    bus.emit_nowait(Event("proxy.pool_low", {}))
    assert len(seen) == 1
