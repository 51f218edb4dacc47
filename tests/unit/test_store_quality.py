"""Source quality in both stores: which sources list a proxy, removal with a source, scrape history,
survival counts, last yield and quarantine, and the compare-and-set marks one replica wins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pool.errors import NotFoundError
from pool.models import ProxyStatus
from pool.store import SCRAPES_KEEP
from tests.unit.test_store import count_rows, store, up  # noqa: F401  (store: the fixture over both stores)

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


async def set_status(store, proxy_id: int, status: ProxyStatus, latency: float | None = None) -> None:  # noqa: F811
    proxy = await store.get_proxy(proxy_id)
    proxy.status, proxy.latency_ms = status, latency
    await store.save_results([(proxy, [])])


async def test_removing_a_source_takes_the_proxies_only_it_listed(store):  # noqa: F811
    """A proxy listed by another source too stays; one only this source listed goes; ids are returned."""
    a = await store.add_source("https://example.test/a.txt")
    b = await store.add_source("https://example.test/b.txt")
    await store.upsert_proxies(a.id, [up("1.1.1.1:80"), up("2.2.2.2:80")])
    await store.upsert_proxies(b.id, [up("2.2.2.2:80"), up("3.3.3.3:80")])  # 2.2.2.2 known, now listed by b too
    by_host = {p.host: p.id for p in await store.all_proxies()}
    assert await store.remove_source(a.id) == [by_host["1.1.1.1"]]
    assert sorted(p.host for p in await store.all_proxies()) == ["2.2.2.2", "3.3.3.3"]
    assert await count_rows(store, "proxy_sources") == 2
    assert sorted(await store.remove_source(b.id)) == sorted([by_host["2.2.2.2"], by_host["3.3.3.3"]])
    assert await store.all_proxies() == []


async def test_removing_an_unknown_source_changes_nothing(store):  # noqa: F811
    a = await store.add_source("https://example.test/a.txt")
    await store.upsert_proxies(a.id, [up("1.1.1.1:80")])
    with pytest.raises(NotFoundError, match="no source with id 999"):
        await store.remove_source(999)
    assert len(await store.all_proxies()) == 1 and len(await store.list_sources()) == 1


async def test_scrape_history_newest_first_and_trimmed(store):  # noqa: F811
    a = await store.add_source("https://example.test/a.txt")
    for n in range(SCRAPES_KEEP + 2):
        error = "refused" if n % 2 else None
        await store.record_scrape(a.id, at=T0 + timedelta(minutes=n), found=n, new=1, error=error)
    history = await store.source_scrapes(a.id)
    assert len(history) == SCRAPES_KEEP
    assert (history[0].found, history[0].error, history[0].at) == (SCRAPES_KEEP + 1, "refused", T0 + timedelta(minutes=SCRAPES_KEEP + 1))
    assert history[1].public_dict() == {"at": (T0 + timedelta(minutes=SCRAPES_KEEP)).isoformat(), "found": SCRAPES_KEEP, "new": 1, "error": None}
    assert [s.found for s in await store.source_scrapes(a.id, limit=3)] == [101, 100, 99]
    await store.remove_source(a.id)
    assert await count_rows(store, "source_scrapes") == 0


async def test_activity_per_listing_source(store):  # noqa: F811
    """A proxy two sources list is active for both; dead ones are left out; the median skips unmeasured
    latencies and is the mean of the middle two for an even count."""
    a = await store.add_source("https://example.test/a.txt")
    b = await store.add_source("https://example.test/b.txt")
    await store.upsert_proxies(a.id, [up("1.1.1.1:80"), up("2.2.2.2:80"), up("3.3.3.3:80")])
    await store.upsert_proxies(b.id, [up("2.2.2.2:80")])
    ids = {p.host: p.id for p in await store.all_proxies()}
    await set_status(store, ids["1.1.1.1"], ProxyStatus.ACTIVE, 100.0)
    await set_status(store, ids["2.2.2.2"], ProxyStatus.ACTIVE, None)
    await set_status(store, ids["3.3.3.3"], ProxyStatus.DEAD, 50.0)
    assert await store.source_activity() == {a.id: (2, 100.0), b.id: (1, None)}
    await store.upsert_proxies(a.id, [up("4.4.4.4:80"), up("5.5.5.5:80"), up("6.6.6.6:80")])
    ids = {p.host: p.id for p in await store.all_proxies()}
    for host, latency in (("4.4.4.4", 300.0), ("5.5.5.5", 20.0), ("6.6.6.6", 250.0)):
        await set_status(store, ids[host], ProxyStatus.ACTIVE, latency)
    assert await store.source_activity() == {a.id: (5, 175.0), b.id: (1, None)}  # 20 100 | 250 300
    await set_status(store, ids["6.6.6.6"], ProxyStatus.DEAD)
    assert (await store.source_activity())[a.id] == (4, 100.0)  # 20 100 300


async def test_survival_counts_each_link_once_per_mark(store):  # noqa: F811
    """Windows (since, until] that contain first_seen + 1 h count each proxy once, and the active ones."""
    a = await store.add_source("https://example.test/a.txt")
    before = datetime.now(UTC)
    await store.upsert_proxies(a.id, [up("1.1.1.1:80"), up("2.2.2.2:80")])
    after = datetime.now(UTC)
    ids = {p.host: p.id for p in await store.all_proxies()}
    await set_status(store, ids["1.1.1.1"], ProxyStatus.ACTIVE, 10.0)
    await set_status(store, ids["2.2.2.2"], ProxyStatus.DEAD)
    hour, day = timedelta(hours=1), timedelta(hours=24)
    await store.record_survival(before, before + hour - timedelta(seconds=1))  # nobody is 1 h old yet
    src = await store.get_source(a.id)
    assert (src.seen_1h, src.survived_1h) == (0, 0)
    await store.record_survival(before + hour - timedelta(seconds=1), after + hour + timedelta(seconds=1))
    await store.record_survival(after + hour + timedelta(seconds=1), after + 2 * hour)  # the next window: nothing
    src = await store.get_source(a.id)
    assert (src.seen_1h, src.survived_1h, src.seen_24h, src.survived_24h) == (2, 1, 0, 0)
    assert src.public_dict()["survival_1h"] == 0.5 and src.public_dict()["survival_24h"] is None
    await set_status(store, ids["1.1.1.1"], ProxyStatus.DEAD)
    await store.record_survival(before + day - timedelta(seconds=1), after + day + timedelta(seconds=1))
    src = await store.get_source(a.id)
    assert (src.seen_24h, src.survived_24h) == (2, 0)


async def test_yield_and_quarantine_roundtrip(store):  # noqa: F811
    a = await store.add_source("https://example.test/a.txt")
    b = await store.add_source("https://example.test/b.txt")
    await store.record_quality(yields=[a.id], at=T0, quarantine={b.id: T0})
    got_a, got_b = await store.get_source(a.id), await store.get_source(b.id)
    assert (got_a.last_yield_at, got_a.quarantined, got_b.quarantined_at) == (T0, False, T0)
    assert got_b.public_dict()["quarantined"] is True
    await store.record_quality(yields=[], at=T0, quarantine={b.id: None})
    assert not (await store.get_source(b.id)).quarantined


async def test_marks_are_won_once(store):  # noqa: F811
    """Compare-and-set: of two claims from the same last value, one wins."""
    assert await store.get_mark("quality") is None
    assert await store.claim_mark("quality", None, T0)
    assert not await store.claim_mark("quality", None, T0 + timedelta(seconds=1))
    assert await store.get_mark("quality") == T0
    assert await store.claim_mark("quality", T0, T0 + timedelta(seconds=30))
    assert not await store.claim_mark("quality", T0, T0 + timedelta(seconds=31))
    assert await store.get_mark("quality") == T0 + timedelta(seconds=30)
