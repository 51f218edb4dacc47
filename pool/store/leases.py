"""Credit leases: replicas charge from blocks of credits moved out of a user's free balance
(``SUM(ledger) = users.balance + SUM(credit_leases)``), settle spends and refunds out of them, and
give them back; a crashed replica's lease is forfeited or returned when it starts again."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pool.errors import InvalidInputError
from pool.store.backend import Lock, StoreBackend
from pool.store.records import LEDGER_COLUMNS, CreditState, Settlement
from pool.store.users import take_free

__all__ = ["LeasesMixin"]



class LeasesMixin(StoreBackend):
    """The replicas' half of the credits, for either database (one replica on SQLite)."""

    async def lease_credits(self, replica: str, user_id: int, want: int) -> int:
        """Move up to ``want`` unleased credits into ``replica``'s lease; returns how many moved (the
        row lock makes the take exact under any concurrency)."""
        if want <= 0:
            return 0
        async with self._write(Lock.ROW) as tx:
            taken = await take_free(tx, user_id, want, self.FOR_UPDATE)
            if taken > 0:
                await tx.execute(
                    "INSERT INTO credit_leases (replica, user_id, amount) VALUES (?, ?, ?) "
                    "ON CONFLICT (replica, user_id) DO UPDATE SET amount = credit_leases.amount + excluded.amount",
                    replica, user_id, taken,
                )
        return taken

    async def ask_credits(self, user_ids: Sequence[int], *, recall: bool = False) -> None:
        """Tell the other replicas these users' requests are refused here for want of a lease
        (``recall``: a debit wants those users' leases back, idle or not)."""
        if user_ids:
            await self._announce("recall" if recall else "wanted", sorted(user_ids))

    async def settle_credits(self, replica: str, rows: Sequence[Settlement]) -> list[int]:
        """Spends and refunds as ledger rows, out of the lease; ``returned`` goes back to the user."""
        rows = [r for r in rows if r.spent or r.refunded or r.returned]
        if not rows:
            return []
        now = datetime.now(UTC).timestamp()
        ledger = [(r.user_id, -r.spent, "spend", now) for r in rows if r.spent] + [
            (r.user_id, r.refunded, "refund", now) for r in rows if r.refunded
        ]
        returned = [(r.returned, r.user_id) for r in rows if r.returned]
        try:
            async with self._write(Lock.ACCOUNTS) as tx:
                ids = await tx.insert_ids("credit_ledger", LEDGER_COLUMNS, ledger) if ledger else []
                await tx.executemany(
                    "UPDATE credit_leases SET amount = amount - ? WHERE replica = ? AND user_id = ?",
                    [(r.spent - r.refunded + r.returned, replica, r.user_id) for r in rows],
                )
                if returned:
                    await tx.executemany("UPDATE users SET balance = balance + ? WHERE id = ?", returned)
                    await tx.notify("credits", sorted({u for _, u in returned}))
                await tx.execute("DELETE FROM credit_leases WHERE replica = ? AND amount = 0", replica)
        except self.REJECTED as exc:
            raise InvalidInputError(f"settlement rejected: {exc}") from None
        return sorted(ids)

    async def settle_stale_leases(self, replica: str | None, *, forfeit: bool) -> int:
        """Leases left by a replica that died (``None``: by anyone): spent (forfeit) or given back."""
        where, args = ("", ()) if replica is None else (" WHERE replica = ?", (replica,))
        async with self._write(Lock.ACCOUNTS) as tx:
            leases = [(int(r[0]), int(r[1])) for r in await tx.fetch(
                f"DELETE FROM credit_leases{where} RETURNING user_id, amount", *args
            )]
            now = datetime.now(UTC).timestamp()
            for user_id, amount in leases:
                if amount <= 0:
                    continue
                if forfeit:
                    await tx.execute(
                        "INSERT INTO credit_ledger (user_id, delta, kind, at) VALUES (?, ?, 'spend', ?)",
                        user_id, -amount, now,
                    )
                else:
                    await tx.execute("UPDATE users SET balance = balance + ? WHERE id = ?", amount, user_id)
            if leases and not forfeit:
                await tx.notify("credits", sorted({u for u, _ in leases}))
        return sum(a for _, a in leases)

    async def credit_state(self) -> list[CreditState]:
        async with self._read() as tx:
            rows = await tx.fetch(
                "SELECT u.id, u.balance, u.balance + COALESCE((SELECT SUM(amount) FROM credit_leases l "
                "WHERE l.user_id = u.id), 0) FROM users u ORDER BY u.id"
            )
        return [CreditState(int(r[0]), int(r[1]), int(r[2])) for r in rows]
