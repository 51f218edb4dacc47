"""pool.accounts: names, amounts, password hashing, the in-memory balance and its ledger."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.settings import CreditsSettings
from pool.accounts import (
    Accounts,
    add_credits,
    create_user,
    generate_password,
    hash_password,
    parse_amount,
    validate_name,
    verify_password,
)
from pool.accounts.verifier import Verifier
from pool.errors import DuplicateError, InvalidInputError, NotFoundError
from pool.store import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(tmp_path / "pool.db")
    yield s
    await s.close()


class Recorder:
    """Collects credit events and metric increments the way the app wiring passes them on."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.spent: list[int] = []

    def event(self, type_: str, payload: dict[str, Any]) -> None:
        self.events.append((type_, payload))

    def types(self) -> list[str]:
        return [t for t, _ in self.events]


async def open_accounts(store: SqliteStore, rec: Recorder | None = None, **settings: Any) -> Accounts:
    rec = rec or Recorder()
    return await Accounts.open(
        store, CreditsSettings(**settings), on_event=rec.event, on_spent=rec.spent.append
    )


async def ledger_sum(store: SqliteStore, user_id: int) -> int:
    return sum(e.delta for e in await store.ledger_since(0, user_id=user_id))


# names and amounts ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["alice", "Bob_2", "ops.team", "a@b", "x+y", "a" * 64])
def test_valid_names_pass(name):
    """Names made of the allowed characters are accepted unchanged."""
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("al-ice", "'-'"),
        ("al:ice", "':'"),
        ("country", "routing keyword"),
        ("Session", "routing keyword"),
        ("", "empty"),
        ("a b", "letters"),
        ("a" * 65, "letters"),
    ],
)
def test_bad_names_are_refused_saying_why(name, why):
    """A name the routing syntax cannot carry is refused with the reason."""
    with pytest.raises(InvalidInputError, match=why):
        validate_name(name)


@given(st.text(max_size=10), st.sampled_from("-:"), st.text(max_size=10))
def test_no_name_with_a_separator_is_ever_accepted(head, sep, tail):
    """Property: any name containing '-' or ':' is refused."""
    with pytest.raises(InvalidInputError):
        validate_name(head + sep + tail)


@given(st.integers(min_value=1, max_value=10**12))
def test_positive_integer_strings_parse(n):
    """Property: the decimal text of a positive integer parses back to it."""
    assert parse_amount(str(n)) == n
    assert parse_amount(n) == n


@pytest.mark.parametrize(
    "value", ["0", "-5", "1.5", "abc", "", "1e3", 0, -1, 2.0, True, None, "10000000000001"]
)
def test_bad_amounts_are_refused(value):
    """Zero, negatives, non-integers, booleans and absurd amounts are refused."""
    with pytest.raises(InvalidInputError):
        parse_amount(value)


# passwords --------------------------------------------------------------------------------
def test_password_hash_is_salted_scrypt_and_verifies():
    """The stored string names its scheme and costs, differs per salt, and verifies only the right password."""
    password = generate_password()
    first, second = hash_password(password), hash_password(password)
    assert first.startswith("scrypt$n=16384,r=8,p=1$")
    assert first != second
    assert password not in first
    assert verify_password(password, first) and verify_password(password, second)
    assert not verify_password(password + "x", first)
    assert not verify_password(password, "md5$nonsense")


def test_generated_passwords_fit_basic_auth():
    """Generated passwords are long, random and carry no ':'."""
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(len(p) >= 32 and ":" not in p for p in passwords)


# users in the store -----------------------------------------------------------------------
async def test_create_user_writes_hash_and_first_credit(store):
    """A new user gets a hashed password and one credit row; the password is never stored."""
    new = await create_user(store, "alice", 25)
    assert new.record.balance == 25
    assert new.password not in new.record.password_hash
    [row] = await store.ledger_since(0)
    assert (row.user_id, row.delta, row.kind) == (new.record.id, 25, "credit")


async def test_duplicate_and_bad_input_change_nothing(store):
    """A duplicate name, a bad name or a bad amount raises and writes nothing."""
    await create_user(store, "alice", 5)
    with pytest.raises(DuplicateError):
        await create_user(store, "alice", 5)
    with pytest.raises(InvalidInputError):
        await create_user(store, "bad-name", 5)
    with pytest.raises(InvalidInputError):
        await create_user(store, "bob", -1)
    with pytest.raises(InvalidInputError):
        await add_credits(store, "alice", "-3")
    with pytest.raises(NotFoundError):
        await add_credits(store, "nobody", 3)
    assert [u.name for u in await store.list_users()] == ["alice"]
    assert [e.delta for e in await store.ledger_since(0)] == [5]


async def test_ledger_rejects_rows_of_the_wrong_sign(store):
    """The schema itself refuses a negative credit or a positive spend."""
    user = (await create_user(store, "alice", 5)).record
    with pytest.raises(InvalidInputError):
        await store.append_ledger([(user.id, -5, "credit")])
    with pytest.raises(InvalidInputError):
        await store.append_ledger([(user.id, 5, "spend")])
    assert await ledger_sum(store, user.id) == 5


# authentication ---------------------------------------------------------------------------
async def test_authenticate_pays_scrypt_once(store):
    """100 logins with the right password cost one slow verification; wrong ones are refused."""
    new = await create_user(store, "alice", 5)
    accounts = await open_accounts(store)
    assert accounts.check_cached("alice", new.password) is None  # not verified yet
    assert await accounts.verify("alice", new.password) == "alice"
    for _ in range(100):
        assert accounts.check_cached("alice", new.password) == "alice"
        assert await accounts.verify("alice", new.password) == "alice"
    assert accounts.verifier.slow_verifications == 1
    assert await accounts.verify("alice", "wrong") is None
    assert await accounts.verify("alice", "wrong") is None  # remembered: no second hash
    assert accounts.check_cached("alice", "wrong") is None
    assert accounts.verifier.slow_verifications == 2
    assert await accounts.verify("nobody", new.password) is None
    assert await accounts.verify("ALICE", new.password) is None
    assert accounts.verifier.slow_verifications == 4  # unknown names are hashed too (against a dummy)


async def test_wrong_password_storm_is_throttled(store):
    """Many different wrong passwords from one address stop costing a hash after a small burst."""
    await create_user(store, "alice", 5)
    accounts = await open_accounts(store)
    for i in range(50):
        assert await accounts.verify("alice", f"guess{i}", client="127.0.0.2") is None
    assert accounts.verifier.slow_verifications <= 6


async def test_flood_guard_caps_hashes_from_many_addresses(store):
    """200 wrong guesses at once from 200 addresses cost at most the global burst of hashes."""
    await create_user(store, "alice", 5)
    accounts = await open_accounts(store)
    guesses = [accounts.verify("alice", f"guess{i}", client=f"10.0.{i}.1") for i in range(200)]
    assert await asyncio.gather(*guesses) == [None] * 200
    assert accounts.verifier.slow_verifications <= Verifier.FLOOD_BURST + 1


async def test_guesses_from_one_address_do_not_lock_out_another(store):
    """An address that used up its failure budget does not stop the real user's first correct login."""
    new = await create_user(store, "alice", 5)
    accounts = await open_accounts(store)
    for i in range(20):
        assert await accounts.verify("alice", f"guess{i}", client="127.0.0.2") is None
    assert await accounts.verify("alice", new.password, client="127.0.0.1") == "alice"


async def test_concurrent_first_logins_share_one_hash(store):
    """Ten requests with the same uncached password at once cost one scrypt run, and all pass."""
    new = await create_user(store, "alice", 5)
    accounts = await open_accounts(store)
    results = await asyncio.gather(*(accounts.verify("alice", new.password) for _ in range(10)))
    assert results == ["alice"] * 10
    assert accounts.verifier.slow_verifications == 1


async def test_password_change_invalidates_the_cache(store):
    """After a password change the old password fails at once and the new one works."""
    new = await create_user(store, "alice", 5)
    accounts = await open_accounts(store)
    assert await accounts.verify("alice", new.password) == "alice"
    fresh = await accounts.set_password("alice")
    assert await accounts.verify("alice", new.password) is None
    assert accounts.check_cached("alice", fresh) == "alice"


async def test_password_changed_by_another_process_is_picked_up(store, tmp_path):
    """A password changed through another connection stops working after the next flush."""
    new = await create_user(store, "alice", 5)
    accounts = await open_accounts(store)
    assert await accounts.verify("alice", new.password) == "alice"
    other = await SqliteStore.open(tmp_path / "pool.db")
    try:
        await other.set_password("alice", hash_password("elsewhere"))
    finally:
        await other.close()
    await accounts.flush()
    assert accounts.check_cached("alice", new.password) is None
    assert await accounts.verify("alice", new.password) is None
    assert await accounts.verify("alice", "elsewhere") == "alice"


# charging ---------------------------------------------------------------------------------
async def test_charge_never_goes_below_zero(store):
    """Charges succeed while the balance covers the cost, then refuse; the balance stops at 0."""
    await create_user(store, "alice", 20)
    accounts = await open_accounts(store)
    results = [accounts.charge("alice", 1) for _ in range(40)]
    assert results.count(True) == 20 and results[:20] == [True] * 20
    assert accounts.balance("alice") == 0
    await create_user(store, "bob", 5)
    await accounts.flush()
    assert [accounts.charge("bob", 2) for _ in range(4)] == [True, True, False, False]
    assert accounts.balance("bob") == 1
    assert not accounts.charge("nobody", 1)


async def test_flush_batches_spends_and_keeps_the_invariant(store):
    """Spends and refunds become one row per kind per flush; balance equals the ledger sum."""
    rec = Recorder()
    user = (await create_user(store, "alice", 100)).record
    accounts = await open_accounts(store, rec)
    for _ in range(30):
        assert accounts.charge("alice", 1)
    accounts.refund("alice", 1)
    accounts.refund("alice", 1)
    await accounts.flush()
    kinds = [(e.kind, e.delta) for e in await store.ledger_since(0, user_id=user.id)]
    assert kinds == [("credit", 100), ("spend", -30), ("refund", 2)]
    assert accounts.balance("alice") == await ledger_sum(store, user.id) == 72
    assert rec.spent == [28]
    await accounts.flush()  # nothing pending: no empty rows
    assert len(await store.ledger_since(0)) == 3


async def test_refunds_in_a_later_flush_are_netted_in_the_metric(store):
    """A refund flushed after its charge lowers the next metric increment, never the total below zero."""
    rec = Recorder()
    await create_user(store, "alice", 10)
    accounts = await open_accounts(store, rec)
    accounts.charge("alice", 1)
    await accounts.flush()
    accounts.refund("alice", 1)
    await accounts.flush()
    accounts.charge("alice", 1)
    accounts.charge("alice", 1)
    await accounts.flush()
    assert rec.spent == [1, 1]


async def test_restart_rebuilds_balance_from_the_ledger(store, tmp_path):
    """close() writes what is pending; a new Accounts on a new connection has the same balances."""
    await create_user(store, "alice", 50)
    await create_user(store, "bob", 7)
    accounts = await open_accounts(store)
    accounts.start()
    for _ in range(13):
        accounts.charge("alice", 1)
    accounts.charge("bob", 7)
    await accounts.close()
    reopened = await SqliteStore.open(tmp_path / "pool.db")
    try:
        again = await open_accounts(reopened)
        assert again.balance("alice") == 37
        assert again.balance("bob") == 0
        assert {u.name: u.balance for u in await reopened.list_users()} == {"alice": 37, "bob": 0}
    finally:
        await reopened.close()


async def test_credit_and_user_written_elsewhere_are_picked_up(store, tmp_path):
    """`users add` / `users credit` from another process reach the running view at the next flush."""
    await create_user(store, "alice", 5)
    accounts = await open_accounts(store)
    accounts.charge("alice", 2)
    other = await SqliteStore.open(tmp_path / "pool.db")
    try:
        assert await add_credits(other, "alice", "10") == 15  # the spend is not flushed yet
        bob = await create_user(other, "bob", 4)
    finally:
        await other.close()
    await accounts.flush()
    assert accounts.balance("alice") == 13
    assert accounts.balance("bob") == 4
    assert await accounts.verify("bob", bob.password) == "bob"
    assert accounts.balance("alice") == await ledger_sum(store, 1)


async def test_concurrent_charges_during_a_flush_are_not_lost(store):
    """Charges made while a flush is writing land in the next flush; the invariant holds."""
    user = (await create_user(store, "alice", 1000)).record
    accounts = await open_accounts(store)

    async def spender() -> None:
        for _ in range(200):
            accounts.charge("alice", 1)
            await asyncio.sleep(0)

    async def flusher() -> None:
        for _ in range(20):
            await accounts.flush()

    await asyncio.gather(spender(), flusher(), spender())
    await accounts.flush()
    assert accounts.balance("alice") == 600
    assert await ledger_sum(store, user.id) == 600


# events -----------------------------------------------------------------------------------
async def test_low_balance_and_exhausted_fire_once_until_a_top_up(store):
    """low_balance fires on the downward crossing, exhausted at zero; both only again after a top-up."""
    rec = Recorder()
    user = (await create_user(store, "alice", 5)).record
    accounts = await open_accounts(store, rec, low_balance_threshold=3)
    for _ in range(5):
        assert accounts.charge("alice", 1)
    assert rec.events == [
        ("credits.low_balance", {"user_id": user.id, "balance": 2, "threshold": 3}),
        ("credits.exhausted", {"user_id": user.id}),
    ]
    assert not accounts.charge("alice", 1)
    accounts.refund("alice", 1)  # a refund is not a top-up
    assert accounts.charge("alice", 1)
    assert not accounts.charge("alice", 1)
    assert len(rec.events) == 2
    await accounts.credit("alice", 4)
    for _ in range(4):
        accounts.charge("alice", 1)
    assert rec.types() == ["credits.low_balance", "credits.exhausted"] * 2


async def test_no_event_for_a_user_that_starts_below_the_threshold(store):
    """A user created with few credits crosses nothing: only exhausted fires when it runs out."""
    rec = Recorder()
    await create_user(store, "alice", 2)
    await create_user(store, "broke", 0)
    accounts = await open_accounts(store, rec, low_balance_threshold=10)
    accounts.charge("alice", 1)
    assert rec.events == []
    accounts.charge("alice", 1)
    assert not accounts.charge("broke", 1)
    assert rec.types() == ["credits.exhausted"]


async def test_event_payloads_never_carry_names(store):
    """Credit events identify the user by numeric id only."""
    rec = Recorder()
    await create_user(store, "zelda", 1)
    accounts = await open_accounts(store, rec, low_balance_threshold=1)
    accounts.charge("zelda", 1)
    assert rec.events and "zelda" not in repr(rec.events)
