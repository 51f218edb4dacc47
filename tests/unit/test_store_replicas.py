"""What replicas ask of the store, on SQLite and PostgreSQL: credit leases, settlements, claims, notifications."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from pool.errors import InvalidInputError
from pool.store import Settlement, SqliteStore, Store
from pool.store.notify import payloads as _payloads
from pool.store.postgres import PostgresStore
from tests.unit.test_store import store, up  # noqa: F401  (the fixture over both stores)

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


async def totals(store) -> dict[int, tuple[int, int]]:  # noqa: F811
    return {c.user_id: (c.free, c.total) for c in await store.credit_state()}


async def test_a_lease_moves_credits_out_of_the_free_balance_and_never_below_zero(store):  # noqa: F811
    """Two replicas lease 30 each from 50: the second gets the 20 left, a third gets nothing."""
    user = await store.add_user("alice", "h", 50)
    assert await store.lease_credits("a", user.id, 30) == 30
    assert await store.lease_credits("b", user.id, 30) == 20
    assert await store.lease_credits("c", user.id, 30) == 0
    assert await totals(store) == {user.id: (0, 50)}
    assert (await store.get_user("alice")).balance == 50  # the ledger: leased is not spent


async def test_settling_writes_the_ledger_and_gives_back_what_is_returned(store):  # noqa: F811
    """Spent 12 and refunded 2 of a 30 lease, 5 returned: the ledger says 40, 5 are free again, 15 still leased."""
    user = await store.add_user("alice", "h", 50)
    await store.lease_credits("a", user.id, 30)
    await store.settle_credits("a", [Settlement(user.id, spent=12, refunded=2, returned=5)])
    assert await totals(store) == {user.id: (20 + 5, 40)}
    assert (await store.get_user("alice")).balance == 40
    kinds = sorted((e.kind, e.delta) for e in await store.ledger_since(0, user_id=user.id))
    assert kinds == [("credit", 50), ("refund", 2), ("spend", -12)]
    with pytest.raises(InvalidInputError):  # more than the lease holds
        await store.settle_credits("a", [Settlement(user.id, returned=16)])


async def test_leases_many_replicas_race_for_stay_exact(store):  # noqa: F811
    """Twenty concurrent leases of 7 on 100 credits hand out exactly 100."""
    user = await store.add_user("alice", "h", 100)
    taken = await asyncio.gather(*(store.lease_credits(f"r{i}", user.id, 7) for i in range(20)))
    assert sum(taken) == 100
    assert await totals(store) == {user.id: (0, 100)}


async def test_stale_leases_are_forfeited_or_given_back(store):  # noqa: F811
    """A dead replica's lease: forfeited (spent: the user loses at most that lease) or returned."""
    user = await store.add_user("alice", "h", 50)
    await store.lease_credits("dead", user.id, 20)
    await store.lease_credits("alive", user.id, 10)
    assert await store.settle_stale_leases("dead", forfeit=True) == 20
    assert await totals(store) == {user.id: (20, 30)}
    assert (await store.get_user("alice")).balance == 30
    assert await store.settle_stale_leases(None, forfeit=False) == 10
    assert await totals(store) == {user.id: (30, 30)}


async def test_a_top_up_is_free_to_lease_and_a_debit_takes_only_free_credits(store):  # noqa: F811
    """Top-ups land in the free balance; a debit beyond it is refused, leased credits are not touched."""
    user = await store.add_user("alice", "h", 10)
    await store.lease_credits("a", user.id, 10)
    await store.append_ledger([(user.id, 5, "credit")])
    assert await totals(store) == {user.id: (5, 15)}
    with pytest.raises(InvalidInputError):
        await store.append_ledger([(user.id, -6, "spend")])
    assert await totals(store) == {user.id: (5, 15)}


async def test_a_source_run_is_claimed_once(store):  # noqa: F811
    """Two replicas see the same due source: only the first claim wins."""
    source = await store.add_source("https://example.com/list.txt")
    assert await store.claim_source(source.id, None, T0)
    assert not await store.claim_source(source.id, None, T0 + timedelta(seconds=1))
    assert (await store.get_source(source.id)).last_run_at == T0
    assert await store.claim_source(source.id, T0, T0 + timedelta(minutes=30))


async def test_get_proxies_by_ids(store):  # noqa: F811
    """The proxies a notification names, read back by id."""
    result = await store.upsert_proxies(None, [up(f"10.0.0.{i}:80") for i in range(1, 6)])
    ids = [p.id for p in result.new]
    assert [p.id for p in await store.get_proxies(ids[1:3])] == ids[1:3]
    assert await store.get_proxies([]) == []


async def test_postgres_check_claims_split_due_proxies(pg_url):
    """Two replicas claim the same due proxies at once: each proxy goes to exactly one; an expired claim is free."""
    a, b = await PostgresStore.open(pg_url), await PostgresStore.open(pg_url)
    try:
        proxies = (await a.upsert_proxies(None, [up(f"10.0.0.{i}:80") for i in range(1, 101)])).new
        ids = [p.id for p in proxies]
        until = datetime.now(UTC) + timedelta(minutes=2)
        got_a, got_b = await asyncio.gather(a.claim_checks(proxies, until), b.claim_checks(proxies, until))
        assert not set(got_a) & set(got_b)
        assert sorted(got_a + got_b) == ids
        assert await a.claim_checks(proxies, until) == []
        past = datetime.now(UTC) - timedelta(seconds=1)
        await a._pool.execute("UPDATE proxies SET claimed_until = $1", past.timestamp())
        assert await b.claim_checks(proxies[:3], until) == ids[:3]
        # a result saved releases the claim; a replica that has not heard of it yet does not claim again
        checked = proxies[3]
        checked.last_checked = T0
        await a.save_results([(checked, [])])
        assert await b.claim_checks([(await b.get_proxy(checked.id))], until) == [checked.id]
        stale = (await a.upsert_proxies(None, [up("10.0.0.1:80")])).new  # nothing new
        assert stale == []
        await a._pool.execute("UPDATE proxies SET claimed_until = NULL")
        old_view = proxies[4]  # last_checked None here, T0 in the database
        fresh = await a.get_proxy(old_view.id)
        fresh.last_checked = T0
        await a.save_results([(fresh, [])])
        assert await b.claim_checks([old_view], until) == []
    finally:
        await a.close()
        await b.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def pair(request, tmp_path) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database as two serving processes open it: PostgreSQL replicas, or two workers
    of a pool on one SQLite file (``shared``)."""
    if request.param == "sqlite":
        a = await SqliteStore.open(tmp_path / "pool.db", shared=True)
        b = await SqliteStore.open(tmp_path / "pool.db", shared=True)
    else:
        url = request.getfixturevalue("pg_url")
        a, b = await PostgresStore.open(url), await PostgresStore.open(url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_changes_are_announced_to_the_other_processes(pair):
    """A check result, a user and a source written on one store are heard by another (ids only), not by itself."""
    a, b = pair
    heard_a: list[tuple[str, list[int]]] = []
    heard_b: asyncio.Queue[tuple[str, list[int]]] = asyncio.Queue()
    a.subscribe(lambda kind, ids: heard_a.append((kind, ids)))
    b.subscribe(lambda kind, ids: heard_b.put_nowait((kind, ids)))
    await _wait_listening(a)
    await _wait_listening(b)
    (p,) = (await a.upsert_proxies(None, [up("1.2.3.4:80")])).new
    assert await asyncio.wait_for(heard_b.get(), 5) == ("proxies", [p.id])
    user = await a.add_user("alice", "h", 5)
    assert await asyncio.wait_for(heard_b.get(), 5) == ("users", [user.id])
    source = await a.add_source("https://example.com/x.txt")
    assert await asyncio.wait_for(heard_b.get(), 5) == ("sources", [source.id])
    await a.delete_proxies([p.id])
    assert await asyncio.wait_for(heard_b.get(), 5) == ("deleted", [p.id])
    await a.ask_credits([user.id])  # outside any write
    assert await asyncio.wait_for(heard_b.get(), 5) == ("wanted", [user.id])
    assert heard_a == []


async def test_a_sqlite_worker_that_fell_behind_the_pruning_resyncs(tmp_path):
    """Rows pruned before a worker read them (it stalled): it is told to resync, then follows on."""
    a = await SqliteStore.open(tmp_path / "pool.db", shared=True)
    b = await SqliteStore.open(tmp_path / "pool.db", shared=True)
    heard: asyncio.Queue[tuple[str, list[int]]] = asyncio.Queue()
    b.subscribe(lambda kind, ids: heard.put_nowait((kind, ids)))
    try:
        await _wait_listening(b)
        with sqlite3.connect(tmp_path / "pool.db") as db:  # rows 1..3 written and pruned unseen
            db.execute("INSERT INTO pool_changes (id, origin, kind, ids, at) VALUES (4, 'x', 'users', '7', 0)")
        assert await asyncio.wait_for(heard.get(), 5) == ("resync", [])
        assert await asyncio.wait_for(heard.get(), 5) == ("users", [7])
        source = await a.add_source("https://example.com/x.txt")
        assert await asyncio.wait_for(heard.get(), 5) == ("sources", [source.id])
    finally:
        await a.close()
        await b.close()


async def test_sqlite_change_rows_are_pruned_but_the_newest(tmp_path, monkeypatch):
    """Old rows go (every PRUNE_EVERY writes) but the newest, so ids never go back; a worker that reads
    after the pruning hears a resync instead of missing changes silently."""
    import pool.store.feed as feed

    a = await SqliteStore.open(tmp_path / "pool.db", shared=True)
    b = await SqliteStore.open(tmp_path / "pool.db", shared=True)
    heard: asyncio.Queue[tuple[str, list[int]]] = asyncio.Queue()
    b.subscribe(lambda kind, ids: heard.put_nowait((kind, ids)))
    try:
        await _wait_listening(b)
        monkeypatch.setattr(feed, "KEEP", -1.0)  # every row is old at once
        async with a._write() as tx:  # one transaction: b sees all of it at once, pruned
            for i in range(feed.PRUNE_EVERY):
                await tx.notify("users", [i])
        with sqlite3.connect(tmp_path / "pool.db") as db:
            assert db.execute("SELECT COUNT(*), MAX(id) FROM pool_changes").fetchone() == (1, feed.PRUNE_EVERY)
        assert await asyncio.wait_for(heard.get(), 5) == ("resync", [])
        assert await asyncio.wait_for(heard.get(), 5) == ("users", [feed.PRUNE_EVERY - 1])
    finally:
        await a.close()
        await b.close()


async def _wait_listening(s: Store) -> None:
    if isinstance(s, PostgresStore):
        assert s._announcer.listening is not None
        await asyncio.wait_for(s._announcer.listening.wait(), 10)
    else:
        assert s._feed is not None
        await asyncio.wait_for(s._feed.following.wait(), 10)


def test_notification_payloads_stay_small():
    """Ten thousand ids become several messages, each under PostgreSQL's 8000-byte limit, none lost."""
    messages = _payloads("tok", "proxies", range(100_000, 110_000))
    assert len(messages) > 1 and all(len(m.encode()) < 8000 for m in messages)
    ids = [int(x) for m in messages for x in m.split(":", 2)[2].split(",")]
    assert ids == list(range(100_000, 110_000))
