"""Gateway users, their credit ledger and their usage counters.

``rev`` grows with every user insert and change, so a running gateway picks up users changed by
another process (``users_since``) without trusting clocks; users and ledger rows are written under
``Lock.ACCOUNTS``, so their ids and ``rev`` values commit in order (a reader following "rows after
the last one I saw" misses none).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pool.errors import DuplicateError, InvalidInputError, NotFoundError
from pool.store.backend import Lock, StoreBackend, Tx
from pool.store.records import (
    ALL_ROWS,
    LEDGER_COLUMNS,
    USER_CHANGES,
    USER_SELECT,
    LedgerEntry,
    UsageRow,
    UserRecord,
    dt,
    user_row,
)

__all__ = ["UsersMixin", "take_free"]

_NEXT_REV = "(SELECT COALESCE(MAX(rev), 0) + 1 FROM users)"


async def take_free(tx: Tx, user_id: int, want: int, for_update: str) -> int:
    """Take up to ``want`` of the user's unleased balance, under the row's lock; how many were taken."""
    balance = await tx.fetchval(f"SELECT balance FROM users WHERE id = ?{for_update}", user_id)
    taken = min(int(balance), want) if balance is not None else 0
    if taken > 0:
        await tx.execute("UPDATE users SET balance = balance - ? WHERE id = ?", taken, user_id)
    return taken


class UsersMixin(StoreBackend):
    """Users, ledger and usage, for either database."""

    async def add_user(self, name: str, password_hash: str, credits: int) -> UserRecord:
        """The user and, when ``credits`` > 0, its first ledger row, in one transaction."""
        now = datetime.now(UTC).timestamp()
        try:
            async with self._write(Lock.ACCOUNTS) as tx:
                user_id = await tx.fetchval(
                    "INSERT INTO users (name, password_hash, created_at, password_changed_at, rev, balance) "
                    f"VALUES (?, ?, ?, ?, {_NEXT_REV}, ?) RETURNING id",
                    name, password_hash, now, now, max(credits, 0),
                )
                if credits > 0:
                    await tx.execute(
                        "INSERT INTO credit_ledger (user_id, delta, kind, at) VALUES (?, ?, 'credit', ?)",
                        user_id, credits, now,
                    )
                await tx.notify("users", [user_id])
        except self.DUPLICATE:
            raise DuplicateError(f"user {name!r} already exists") from None
        return await self.get_user(name)

    async def last_top_up(self, user_id: int) -> int:
        """The id of the user's latest top-up (``credit`` ledger row), 0 if none: what tells one
        occasion of a credit event from the next (``pool/events.py``)."""
        async with self._read() as tx:
            found = await tx.fetchval(
                "SELECT MAX(id) FROM credit_ledger WHERE user_id = ? AND kind = 'credit'", user_id
            )
        return int(found or 0)

    async def get_user(self, name: str) -> UserRecord:
        async with self._read() as tx:
            row = await tx.fetchrow(f"{USER_SELECT} WHERE u.name = ? AND u.removed_at IS NULL", ALL_ROWS, name)
        if row is None:
            raise NotFoundError(f"no user named {name!r}")
        return user_row(row)

    async def list_users(self) -> list[UserRecord]:
        async with self._read() as tx:
            rows = await tx.fetch(f"{USER_SELECT} WHERE u.removed_at IS NULL ORDER BY u.id", ALL_ROWS)
        return [user_row(r) for r in rows]

    async def set_password(self, name: str, password_hash: str) -> UserRecord:
        now = datetime.now(UTC).timestamp()
        await self._change_user(name, "password_hash = ?, password_changed_at = ?", "name = ?", password_hash, now, name)
        return await self.get_user(name)

    async def users_since(self, rev: int, ledger_upto: int | None = None) -> list[UserRecord]:
        """Users added or changed after ``rev``, oldest change first; balances summed up to a row id."""
        bound = ALL_ROWS if ledger_upto is None else ledger_upto
        async with self._read() as tx:
            rows = await tx.fetch(f"{USER_SELECT} WHERE u.rev > ? ORDER BY u.rev", bound, rev)
        return [user_row(r) for r in rows]

    async def update_user(self, name: str, **changes: Any) -> UserRecord:
        """Set ``enabled`` / per-user limits (None lifts a limit); bumps ``rev`` so gateways pick it up."""
        unknown = set(changes) - USER_CHANGES
        if unknown or not changes:
            raise InvalidInputError(f"unknown user field(s): {', '.join(sorted(unknown)) or '(none given)'}")
        sets = ", ".join(f"{column} = ?" for column in changes)
        await self._change_user(name, sets, "name = ?", *changes.values(), name)
        return await self.get_user(name)

    async def remove_user(self, name: str) -> UserRecord:
        """Soft removal: the row (and its ledger, for the books) stays under a name no user can have
        (``~ID~NAME``), so the name is free again and ``rev`` tells gateways to drop the user."""
        record = await self.get_user(name)
        now = datetime.now(UTC).timestamp()
        await self._change_user(
            name, "removed_at = ?, enabled = FALSE, name = '~' || id || '~' || name", "id = ?", now, record.id
        )
        return record

    async def _change_user(self, name: str, sets: str, where: str, *args: Any) -> None:
        """Change the live user ``where`` says (``name`` for the error) and bump its ``rev``, so every
        gateway picks the change up; announced to the other replicas."""
        async with self._write(Lock.ACCOUNTS) as tx:
            user_id = await tx.fetchval(
                f"UPDATE users SET {sets}, rev = {_NEXT_REV} WHERE {where} AND removed_at IS NULL RETURNING id", *args
            )
            if user_id is None:
                raise NotFoundError(f"no user named {name!r}")
            await tx.notify("users", [user_id])

    # the ledger -----------------------------------------------------------------------------
    async def append_ledger(self, entries: Sequence[tuple[int, int, str]]) -> list[int]:
        """Insert ``(user_id, delta, kind)`` rows in one transaction; returns their ids."""
        if not entries:
            return []
        now = datetime.now(UTC).timestamp()
        try:
            async with self._write(Lock.ACCOUNTS) as tx:
                ids = await tx.insert_ids(
                    "credit_ledger", LEDGER_COLUMNS, [(user_id, delta, kind, now) for user_id, delta, kind in entries]
                )
                await tx.executemany(  # top-ups (and debits) change the unleased credits
                    "UPDATE users SET balance = balance + ? WHERE id = ?", [(d, u) for u, d, _ in entries]
                )
                await tx.notify("credits", sorted({u for u, _, _ in entries}))
        except self.REJECTED as exc:
            raise InvalidInputError(f"ledger row rejected: {exc}") from None
        return ids

    async def ledger_since(self, after_id: int, user_id: int | None = None) -> list[LedgerEntry]:
        """Ledger rows after ``after_id`` (all of one user's with ``user_id``), oldest first."""
        where, args = "id > ?", [after_id]
        if user_id is not None:
            where += " AND user_id = ?"
            args.append(user_id)
        async with self._read() as tx:
            rows = await tx.fetch(f"SELECT id, user_id, delta, kind, at FROM credit_ledger WHERE {where} ORDER BY id", *args)
        return [LedgerEntry(r[0], r[1], r[2], r[3], dt(r[4]) or datetime.now(UTC)) for r in rows]

    async def ledger_state(self) -> tuple[list[UserRecord], int]:
        """Every user with the balance rebuilt from the ledger up to the returned last row id."""
        async with self._snapshot() as tx:
            last = int(await tx.fetchval("SELECT COALESCE(MAX(id), 0) FROM credit_ledger"))
            rows = await tx.fetch(f"{USER_SELECT} WHERE u.removed_at IS NULL ORDER BY u.id", last)
        return [user_row(r) for r in rows], last

    async def debit_credits(self, user_id: int, want: int) -> int:
        """Take up to ``want`` of the user's unleased credits (a ``spend`` row); returns how many."""
        if want <= 0:
            return 0
        now = datetime.now(UTC).timestamp()
        async with self._write(Lock.ACCOUNTS) as tx:
            taken = await take_free(tx, user_id, want, self.FOR_UPDATE)
            if taken > 0:
                await tx.execute(
                    "INSERT INTO credit_ledger (user_id, delta, kind, at) VALUES (?, ?, 'spend', ?)",
                    user_id, -taken, now,
                )
                await tx.notify("credits", [user_id])
        return taken

    # usage ----------------------------------------------------------------------------------
    async def add_usage(self, rows: Sequence[UsageRow]) -> None:
        """Add increments to the usage counters (one transaction); ``last_seen`` keeps the latest."""
        if not rows:
            return
        async with self._write() as tx:
            await tx.executemany(
                "INSERT INTO user_usage (user_id, requests, tunnels, bytes_up, bytes_down, last_seen) "
                "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM users WHERE id = ?) "
                "ON CONFLICT (user_id) DO UPDATE SET requests = user_usage.requests + excluded.requests, "
                "tunnels = user_usage.tunnels + excluded.tunnels, bytes_up = user_usage.bytes_up + excluded.bytes_up, "
                f"bytes_down = user_usage.bytes_down + excluded.bytes_down, last_seen = {self.LATEST_SEEN}",
                [(r.user_id, r.requests, r.tunnels, r.bytes_up, r.bytes_down, r.last_seen, r.user_id) for r in rows],
            )

    async def usage(self) -> dict[int, UsageRow]:
        async with self._read() as tx:
            rows = await tx.fetch("SELECT user_id, requests, tunnels, bytes_up, bytes_down, last_seen FROM user_usage")
        return {int(r[0]): UsageRow(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), r[5] or None) for r in rows}
