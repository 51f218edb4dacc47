"""Accounts: the user life cycle, per-user limits and usage, lease misses, debits (SQLite; PostgreSQL replicas
where it matters)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from config.settings import CreditsSettings
from pool.accounts import Accounts, CreditsExhausted, LeaseMissing, LimitReached
from pool.errors import InvalidInputError, NotFoundError
from pool.store import SqliteStore
from pool.store.postgres import PostgresStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(tmp_path / "pool.db")
    yield s
    await s.close()


async def accounts_on(store, **settings: object) -> Accounts:
    return await Accounts.open(store, CreditsSettings(**{"flush_interval": 60.0, **settings}))  # type: ignore[arg-type]


async def test_admit_counts_usage_and_enforces_limits_without_taking_anything_on_refusal(store):
    """A refused request (rate, connections) is neither charged nor counted; one connection holds one slot."""
    accounts = await accounts_on(store)
    await accounts.add_user("alice", 10)
    await accounts.update("alice", max_connections=1, max_requests_per_second=1)
    one, two = object(), object()
    usage = accounts.admit("alice", 1, False, one)
    usage.add_bytes(10, 200)
    with pytest.raises(LimitReached) as refused:
        accounts.admit("alice", 1, True, one)  # the bucket (one a second) is empty
    assert refused.value.retry_after >= 1
    await accounts.update("alice", max_requests_per_second=None)
    accounts.admit("alice", 1, True, one)  # the same connection: the same slot
    with pytest.raises(LimitReached, match="too many connections"):
        accounts.admit("alice", 1, False, two)
    accounts.release(one)
    accounts.admit("alice", 1, False, two)
    view = accounts.user("alice")
    assert (view.credits, view.requests, view.tunnels, view.bytes_up, view.bytes_down) == (7, 2, 1, 10, 200)
    assert view.last_seen is not None
    await accounts.flush()
    assert accounts.user("alice") == view  # flushed: shown the same
    stored = (await store.usage())[view.id]
    assert (stored.requests, stored.tunnels, stored.bytes_up, stored.bytes_down) == (2, 1, 10, 200)
    await accounts.close()


async def test_usage_kept_when_its_write_fails(store, monkeypatch):
    """A failed flush of usage puts it back: the next flush writes it once."""
    accounts = await accounts_on(store)
    await accounts.add_user("bob", 10)
    accounts.admit("bob", 1, False)

    async def broken(rows):
        raise OSError("disk gone")

    real = store.add_usage
    monkeypatch.setattr(store, "add_usage", broken)
    with pytest.raises(OSError):
        await accounts.flush()
    assert not accounts.db_ok and accounts.user("bob").requests == 1
    monkeypatch.setattr(store, "add_usage", real)
    await accounts.flush()
    await accounts.flush()
    assert accounts.db_ok and (await store.usage())[accounts.user("bob").id].requests == 1
    await accounts.close()


async def test_disabled_and_removed_users_are_refused_and_settled(store):
    """Disabled: no cached pass, no verify; removed: gone, its lease and spends settled, its name free."""
    accounts = await accounts_on(store)
    new = await accounts.add_user("carol", 10)
    assert accounts.check_cached("carol", new.password) == "carol"
    await accounts.update("carol", enabled=False)
    assert accounts.check_cached("carol", new.password) is None
    assert await accounts.verify("carol", new.password) is None
    with pytest.raises(LookupError):
        accounts.admit("carol", 1, False)
    await accounts.update("carol", enabled=True)
    assert await accounts.verify("carol", new.password) == "carol"
    accounts.admit("carol", 1, False)
    await accounts.remove("carol")
    assert accounts.users() == [] and accounts.check_cached("carol", new.password) is None
    (state,) = await store.credit_state()
    assert state.free == state.total == 9  # the spend settled, the lease given back
    with pytest.raises(NotFoundError):
        await accounts.update("carol", enabled=False)
    for bad in ({"enabled": "yes"}, {"max_connections": 0}, {"max_requests_per_second": -1.0}, {}):
        with pytest.raises(InvalidInputError):
            await accounts.update("nobody" if not bad else "carol", **bad)
    await accounts.close()


async def test_debit_takes_the_own_lease_first_never_below_zero(store):
    accounts = await accounts_on(store)
    await accounts.add_user("dan", 10)
    assert await accounts.debit("dan", 4) == (4, 6)
    assert accounts.charge("dan", 1)
    assert await accounts.debit("dan", 100) == (5, 0)
    with pytest.raises(CreditsExhausted):
        accounts.admit("dan", 1, False)
    await accounts.flush()
    assert (await store.get_user("dan")).balance == 0
    with pytest.raises(NotFoundError):
        await accounts.debit("nobody", 1)
    with pytest.raises(InvalidInputError):
        await accounts.debit("dan", -1)
    await accounts.close()


async def test_a_top_up_written_elsewhere_is_waited_for_not_refused(store):
    """A top-up by another process (the CLI on the database) is not leased yet: the request waits for the
    background lease instead of a 402."""
    accounts = await accounts_on(store)
    await accounts.add_user("erin", 0)
    accounts.start()
    try:
        with pytest.raises(CreditsExhausted):
            accounts.admit("erin", 1, False)
        user = await store.get_user("erin")
        await store.append_ledger([(user.id, 3, "credit")])
        await accounts.flush()  # the sync sees the top-up (a notification would do it on PostgreSQL)
        accounts._by_name["erin"].balance = 0  # as if the lease were given back: the credits are free
        await store.settle_credits(accounts.replica, [])
        await store.settle_stale_leases(None, forfeit=False)
        with pytest.raises(LeaseMissing):
            accounts.admit("erin", 1, False)
        await asyncio.wait_for(accounts.wait_lease("erin", 30), 30)
        accounts.admit("erin", 1, False)
        assert accounts.balance("erin") == 2
    finally:
        await accounts.close()


async def test_a_lease_wait_ends_when_the_database_is_gone(store, monkeypatch):
    """The flush fails: the wait ends at once with ``db_ok`` False (the gateway answers 503)."""
    accounts = await accounts_on(store)
    await accounts.add_user("fay", 5)
    accounts.start()
    try:
        accounts._by_name["fay"].balance = 0  # a lease missing, credits known to exist

        async def gone(*_args, **_kwargs):
            raise OSError("database unreachable")

        monkeypatch.setattr(store, "users_since", gone)
        await asyncio.wait_for(accounts.wait_lease("fay", 30), 10)
        assert not accounts.db_ok
        with pytest.raises(LeaseMissing):
            accounts.admit("fay", 1, False)
    finally:
        monkeypatch.undo()
        await accounts.close()


async def test_postgres_a_replica_without_a_lease_gets_one_while_it_waits(pg_url: str):
    """Two replicas, one holds every credit and is idle: the other's request waits and is then served."""
    stores = [await PostgresStore.open(pg_url) for _ in range(2)]
    a = await Accounts.open(stores[0], CreditsSettings(lease_block=10, flush_interval=0.2), replica="a")
    b = await Accounts.open(stores[1], CreditsSettings(lease_block=10, flush_interval=0.2), replica="b")
    try:
        await a.add_user("gil", 10)
        await b.flush()
        assert (a._by_name["gil"].balance, b._by_name["gil"].balance) == (10, 0)
        a.start()
        b.start()
        with pytest.raises(LeaseMissing):
            b.admit("gil", 1, False)
        await asyncio.wait_for(b.wait_lease("gil", 20), 25)
        b.admit("gil", 1, False)
        assert b.balance("gil") == 9
    finally:
        for accounts in (a, b):
            await accounts.close()
        for s in stores:
            await s.close()
