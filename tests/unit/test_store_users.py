"""The user life cycle in the store, on SQLite and PostgreSQL: enable/limits, soft removal, debits out of
the unleased balance, usage increments."""

from __future__ import annotations

import pytest

from pool.errors import InvalidInputError, NotFoundError
from pool.store import UsageRow
from tests.unit.test_store import store  # noqa: F401  (the fixture over both stores)


async def test_update_user_sets_state_and_limits_and_bumps_rev(store):  # noqa: F811
    """enabled and the limits are stored, None lifts a limit, and the change shows in users_since."""
    user = await store.add_user("alice", "h", 5)
    assert (user.enabled, user.max_connections, user.max_requests_per_second) == (True, None, None)
    changed = await store.update_user("alice", enabled=False, max_connections=3, max_requests_per_second=0.5)
    assert (changed.enabled, changed.max_connections, changed.max_requests_per_second) == (False, 3, 0.5)
    assert changed.rev > user.rev
    assert [u.name for u in await store.users_since(user.rev)] == ["alice"]
    lifted = await store.update_user("alice", max_connections=None, enabled=True)
    assert (lifted.enabled, lifted.max_connections, lifted.max_requests_per_second) == (True, None, 0.5)
    with pytest.raises(NotFoundError):
        await store.update_user("nobody", enabled=False)
    with pytest.raises(InvalidInputError):
        await store.update_user("alice", balance=10**6)
    with pytest.raises(InvalidInputError):
        await store.update_user("alice")
    assert (await store.get_user("alice")).balance == 5


async def test_removal_frees_the_name_keeps_the_ledger_and_tells_gateways(store):  # noqa: F811
    """A removed user is gone from get/list, seen as removed by users_since, its name free again."""
    user = await store.add_user("bob", "h", 7)
    await store.remove_user("bob")
    with pytest.raises(NotFoundError):
        await store.get_user("bob")
    with pytest.raises(NotFoundError):
        await store.remove_user("bob")
    with pytest.raises(NotFoundError):
        await store.set_password("bob", "h2")
    assert await store.list_users() == []
    (gone,) = [u for u in await store.users_since(user.rev) if u.id == user.id]
    assert gone.removed and not gone.enabled
    assert [e.delta for e in await store.ledger_since(0, user_id=user.id)] == [7]
    users, _ = await store.ledger_state()
    assert users == []
    again = await store.add_user("bob", "h3", 1)
    assert again.id != user.id and again.balance == 1


async def test_a_debit_takes_only_unleased_credits_never_below_zero(store):  # noqa: F811
    """10 credits, 6 leased: a debit of 7 takes the 4 free ones (a spend row), the lease is untouched."""
    user = await store.add_user("carol", "h", 10)
    assert await store.lease_credits("a", user.id, 6) == 6
    assert await store.debit_credits(user.id, 7) == 4
    assert await store.debit_credits(user.id, 1) == 0
    assert await store.debit_credits(user.id, 0) == 0
    (state,) = await store.credit_state()
    assert (state.free, state.total) == (0, 6)
    assert (await store.get_user("carol")).balance == 6
    assert sorted(e.delta for e in await store.ledger_since(0, user_id=user.id)) == [-4, 10]


async def test_usage_increments_add_up_and_last_seen_keeps_the_latest(store):  # noqa: F811
    """Two replicas' increments sum; last_seen is the latest; a removed user's row is ignored."""
    alice = await store.add_user("alice", "h", 0)
    assert await store.usage() == {}
    await store.add_usage([UsageRow(alice.id, 3, 1, 100, 2000, 1000.0)])
    await store.add_usage([UsageRow(alice.id, 2, 0, 50, 10, 900.0), UsageRow(alice.id, 0, 0, 5, 0, None)])
    assert (await store.usage())[alice.id] == UsageRow(alice.id, 5, 1, 155, 2010, 1000.0)
    await store.add_usage([])
    await store.add_usage([UsageRow(9999, 1, 1, 1, 1, 1.0)])  # no such user: nothing written
    assert set(await store.usage()) == {alice.id}

