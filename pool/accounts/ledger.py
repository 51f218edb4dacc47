"""The write-behind ledger: how the in-memory balances meet the store.

Spends and refunds are summed in memory and settled (ledger rows out of the lease) at least every
``credits.flush_interval`` seconds and at ``close()``, so "balance = sum of the ledger" holds after each
flush; usage increments are added beside them.  The same flush reads users and top-ups written by
someone else and tops the leases up: with a store of its own the process leases every free credit; on
a shared store blocks of ``credits.lease_block``, given back when idle and another replica asks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from config.settings import CreditsSettings
from pool.accounts.account import Account
from pool.accounts.usage import plus
from pool.accounts.verifier import Verifier
from pool.store import Settlement, Store, UsageRow, UserRecord

__all__ = ["WriteBehind"]

log = logging.getLogger("proxy_pool.accounts")


class WriteBehind:
    """The flush loop and what it does, mixed into ``Accounts`` (which sets this state up)."""

    WAITING_POLL = 0.2  # seconds between flushes while a request waits for a lease

    store: Store
    settings: CreditsSettings
    replica: str
    shared: bool
    on_spent: Callable[[int], None] | None
    verifier: Verifier
    db_ok: bool  # the last flush reached the store
    _by_name: dict[str, Account]
    _by_id: dict[int, Account]
    _lock: asyncio.Lock
    _wake: asyncio.Event  # a lease is wanted, or another process changed users or credits
    _refreshed: asyncio.Event  # set (and replaced) after every flush, failed or not
    _waiting: int  # requests awaiting a lease: the flush loop looks more often
    _unreported: int  # spent minus refunded, not yet given to on_spent
    _user_rev: int

    async def _flush_loop(self) -> None:
        while True:
            interval = self.settings.flush_interval
            if self._waiting:  # a request waits for a lease: look again soon
                interval = min(interval, self.WAITING_POLL)
            try:
                async with asyncio.timeout(interval):  # no helper task, unlike wait_for
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                # shielded: a stop during a write lets it finish, then close() flushes the rest
                await asyncio.shield(self.flush())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (the next round retries: everything is still pending)
                log.error("credit ledger flush failed: %s: %s", type(exc).__name__, exc)

    def _refill_at(self) -> int:
        return self.settings.lease_block // 2 if self.shared else 1

    def _drop(self, account: Account) -> None:
        """Refused from now on; the next flush settles it and forgets it."""
        account.removed = True
        account.enabled = False
        if self._by_name.get(account.name) is account:
            del self._by_name[account.name]

    async def flush(self, *, give_back: bool = False) -> None:
        """Settle charges and refunds (and leases given back), then read others' changes and lease."""
        try:
            await self._flush(give_back)
        except BaseException:
            self.db_ok = False
            raise
        else:
            self.db_ok = True
        finally:  # whoever waits for a lease looks again
            self._refreshed.set()
            self._refreshed = asyncio.Event()

    async def _flush(self, give_back: bool) -> None:
        async with self._lock:
            rows: list[Settlement] = []
            taken: list[tuple[Account, int, int, int]] = []
            for account in self._by_id.values():  # no await in this loop: nothing slips between
                account.idle_flushes = account.idle_flushes + 1 if account.charges == account.seen_charges else 0
                account.seen_charges = account.charges
                # idle for a whole flush interval at least: a burst that is still authenticating keeps its lease
                idle = account.idle_flushes >= 2
                returned = 0
                wanted = account.recalled or (account.asked and idle)
                if account.balance and (give_back or account.removed or (wanted and self.shared)):
                    returned, account.balance = account.balance, 0
                    account.yielded = not give_back
                account.asked = account.recalled = False
                if account.spent or account.refunded or returned:
                    taken.append((account, account.spent, account.refunded, returned))
                    rows.append(Settlement(account.id, account.spent, account.refunded, returned))
                    account.total -= account.spent - account.refunded
                    account.spent = account.refunded = 0
            try:
                await self.store.settle_credits(self.replica, rows)
            except BaseException:
                for account, spent, refunded, returned in taken:  # kept for the next round
                    account.spent += spent
                    account.refunded += refunded
                    account.total += spent - refunded
                    account.balance += returned
                raise
            self._unreported += sum(s - r for _, s, r, _ in taken)
            if self._unreported > 0 and self.on_spent is not None:
                self.on_spent(self._unreported)
                self._unreported = 0
            await self._flush_usage()
            for account in [a for a in self._by_id.values() if a.removed]:  # settled: forgotten
                del self._by_id[account.id]
            if not give_back:
                await self._sync()

    async def _flush_usage(self) -> None:
        """Usage since the last flush, added to the store's counters; on failure kept for the next one.

        The same ``Usage`` object stays the account's (requests in flight hold it for their bytes):
        what is written is subtracted from it, not swapped out."""
        flushed: list[tuple[Account, UsageRow, UsageRow | None]] = []
        for account in self._by_id.values():  # no await in this loop: a consistent snapshot
            usage = account.usage
            totals = usage.totals()
            if usage.last_seen is None and not any(totals):
                continue  # nothing since the last flush
            row = UsageRow(account.id, *totals, last_seen=usage.last_seen)
            usage.take(row)
            flushed.append((account, row, account.base))
            account.base = plus(account.base, row)  # shown the same until the store's sum is read
        if not flushed:
            return
        try:
            await self.store.add_usage([row for _, row, _ in flushed])
        except BaseException:
            for account, row, base in flushed:  # counted again at the next flush
                account.usage.put_back(row)
                account.base = base
            raise

    async def _sync(self) -> None:
        """Apply users and credits written by anyone else, then top the leases up."""
        await self._sync_users()
        await self._refresh_credits()
        for user_id, row in (await self.store.usage()).items():  # every replica's flushed usage
            account = self._by_id.get(user_id)
            if account is not None:
                account.base = row

    async def _refresh_credits(self) -> None:
        block = self.settings.lease_block
        starving: list[int] = []
        for state in await self.store.credit_state():
            account = self._by_id.get(state.user_id)
            if account is None or account.removed:
                continue
            before = account.known
            account.total = state.total  # our unsettled charges are still inside our lease there
            if account.known > before:
                self._rearm(account)
            short, account.short = account.short, False
            if state.free <= 0 or account.yielded or not account.enabled:
                if short and self.shared and state.total > state.free:
                    starving.append(account.id)  # every credit sits in some replica's lease
                continue
            if self.shared:
                if account.balance >= self._refill_at():
                    continue
                want = block - account.balance
            else:
                want = state.free  # the only process: everything free is ours
            got = await self.store.lease_credits(self.replica, account.id, want)
            account.balance += got
            if got and account.known >= max(self.settings.cost_per_request, 1):
                account.exhausted_armed = True
            if short and got < want and self.shared:
                starving.append(account.id)
        if starving:
            await self.store.ask_credits(starving)  # idle holders give theirs back

    async def _sync_users(self) -> None:
        for record in await self.store.users_since(self._user_rev):
            self._user_rev = max(self._user_rev, record.rev)
            known = self._by_id.get(record.id)
            if record.removed:
                if known is not None:
                    self._drop(known)
                continue
            if known is None:
                self._remember(record, record.balance)
                continue
            if known.password_hash != record.password_hash:
                known.forget_password(record.password_hash)
                self.verifier.forget_rejected()  # a pair refused before may be the new password
            known.set_limits(record)

    def _remember(self, record: UserRecord, balance: int) -> Account:
        """A user, with nothing leased yet (``_refresh_credits`` leases) and ``balance`` as its total."""
        account = Account(record.id, record.name, record.password_hash, 0, total=balance)
        account.set_limits(record)
        self.verifier.forget_rejected()  # a pair refused for an unknown name may be this new user's
        # armed only when there is something to cross: a user loaded (or created) below the
        # threshold, or broke, gets no event until a top-up lifts the balance
        account.low_armed = balance >= self.settings.low_balance_threshold
        account.exhausted_armed = balance >= max(self.settings.cost_per_request, 1)
        self._by_name[record.name] = account
        self._by_id[record.id] = account
        return account

    def _rearm(self, account: Account) -> None:
        if account.known >= self.settings.low_balance_threshold:
            account.low_armed = True
        if account.known >= max(self.settings.cost_per_request, 1):
            account.exhausted_armed = True
