"""Accounts of several replicas on one database (PostgreSQL, or the workers of a pool on one SQLite file):
leases keep credits exact, a crash costs a lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from config.settings import CreditsSettings
from pool.accounts import Accounts
from pool.store import SqliteStore, Store
from pool.store.postgres import PostgresStore
from tests.support.waiting import eventually
from tests.unit.test_store_replicas import _wait_listening


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(request, tmp_path) -> AsyncIterator[list[Store]]:
    if request.param == "sqlite":
        opened: list[Store] = [await SqliteStore.open(tmp_path / "pool.db", shared=True) for _ in range(3)]
    else:
        url = request.getfixturevalue("pg_url")
        opened = [await PostgresStore.open(url) for _ in range(3)]
    yield opened
    for s in opened:
        await s.close()


async def replica(store: Store, name: str, **settings: object) -> Accounts:
    settings = {"lease_block": 20, "flush_interval": 60.0, **settings}
    return await Accounts.open(store, CreditsSettings(**settings), replica=name)  # type: ignore[arg-type]


async def test_three_replicas_never_spend_more_than_the_balance(stores):
    """50 credits, three replicas leasing blocks of 20: 120 charges succeed exactly 50 times."""
    a, b, c = [await replica(s, f"r{i}") for i, s in enumerate(stores)]
    await a.add_user("alice", 50)
    for accounts in (b, c):
        await accounts.flush()
    await a.flush()
    held = [acc._by_name["alice"].balance for acc in (a, b, c)]
    assert sum(held) == 50 and max(held) <= 20
    ok = sum(acc.charge("alice", 1) for acc in (a, b, c) for _ in range(40))
    assert ok == 50
    for accounts in (a, b, c):
        await accounts.close()
    assert (await stores[0].get_user("alice")).balance == 0
    assert {s.total for s in await stores[0].credit_state()} == {0}


async def test_a_drained_replica_gets_more_and_an_idle_one_gives_back_when_asked(stores):
    """A replica that spent its lease leases again; when nothing is free, an idle holder returns its lease."""
    a, b = await replica(stores[0], "a"), await replica(stores[1], "b")
    await a.add_user("alice", 40)
    await b.flush()
    assert a._by_name["alice"].balance == 20 and b._by_name["alice"].balance == 20
    b.start()
    await _wait_listening(stores[1])
    await b.flush()
    await b.flush()  # no charge on b for a whole interval: idle
    try:
        assert sum(a.charge("alice", 1) for _ in range(25)) == 20  # the last 5 ask for a lease: none free
        await a.flush()  # settles 20 spent, finds nothing free: asks the others
        await eventually(lambda: b._by_name["alice"].asked or b._by_name["alice"].balance == 0, "b asked for its lease")
        await b.flush()  # idle, and asked: gives its 20 back
        a._by_name["alice"].short = True  # the next refused charge on a
        await a.flush()
        assert a._by_name["alice"].balance == 20 and b._by_name["alice"].balance == 0
    finally:
        await b.close()
        await a.close()
    assert (await stores[0].get_user("alice")).balance == 20


async def test_a_killed_replica_loses_at_most_its_lease(stores):
    """A replica dies without closing: its lease is forfeited when a replica of that name starts again."""
    a, b = await replica(stores[0], "a"), await replica(stores[1], "b")
    await a.add_user("alice", 50)
    await b.flush()
    for _ in range(5):
        assert a.charge("alice", 1)
    await a.flush()  # 5 spent and settled; 15 still leased to "a"
    # "a" is killed here: no close(), no flush
    restarted = await replica(stores[2], "a")
    assert restarted._by_name["alice"].balance == 10  # the 10 left free; 15 forfeited
    total = (await stores[0].get_user("alice")).balance
    assert total == 50 - 5 - 15
    await restarted.close()
    await b.close()
    assert (await stores[0].get_user("alice")).balance == 30

