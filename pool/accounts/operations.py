"""User operations on the store alone, for the CLI (no serving gateway of its own) and for ``Accounts``
(which wraps them and then syncs its in-memory view)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pool.accounts.inputs import parse_amount, validate_name
from pool.accounts.passwords import generate_password, hash_password
from pool.store import Store, UserRecord

__all__ = ["RECALL_POLL", "NewUser", "add_credits", "create_user", "debit_credits", "recalled", "reset_password"]


@dataclass(frozen=True)
class NewUser:
    record: UserRecord
    password: str  # shown once, never stored


async def create_user(store: Store, name: str, credits: int = 0) -> NewUser:
    validate_name(name)
    credits = parse_amount(credits, what="credits", allow_zero=True)
    password = generate_password()
    # scrypt releases the GIL: hashing in a thread keeps a serving gateway's loop free
    record = await store.add_user(name, await asyncio.to_thread(hash_password, password), credits)
    return NewUser(record, password)


async def reset_password(store: Store, name: str) -> str:
    """Store a new generated password for ``name`` and return it (the only place it is ever shown)."""
    password = generate_password()
    await store.set_password(name, await asyncio.to_thread(hash_password, password))
    return password


async def add_credits(store: Store, name: str, amount: object) -> int:
    """Write a top-up to the ledger; returns the stored balance."""
    value = parse_amount(amount)
    user = await store.get_user(name)
    await store.append_ledger([(user.id, value, "credit")])
    return (await store.get_user(name)).balance


RECALL_POLL = 0.05  # seconds between takes while other replicas give a recalled lease back


async def debit_credits(store: Store, name: str, amount: object, *, wait: float = 2.0) -> tuple[int, int]:
    """Take up to ``amount`` credits off a user without a serving gateway of our own: the unleased
    balance, then (shared store) what the replicas give back when recalled, for up to ``wait``
    seconds.  Returns (debited, stored balance); never below 0, never a credit someone spends."""
    value = parse_amount(amount)
    user = await store.get_user(name)
    taken = await store.debit_credits(user.id, value)
    if taken < value and store.shared:
        taken += await recalled(store, user.id, value - taken, wait)
    return taken, (await store.get_user(name)).balance


async def recalled(store: Store, user_id: int, want: int, wait: float) -> int:
    """Recall the replicas' leases of one user and take what comes back, for up to ``wait`` seconds."""
    leased = {c.user_id: c.total - c.free for c in await store.credit_state()}.get(user_id, 0)
    if leased <= 0:
        return 0
    await store.ask_credits([user_id], recall=True)
    taken = 0
    deadline = time.monotonic() + wait
    while taken < want and time.monotonic() < deadline:
        await asyncio.sleep(RECALL_POLL)
        taken += await store.debit_credits(user_id, want - taken)
    return taken
