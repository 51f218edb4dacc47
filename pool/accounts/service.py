"""``Accounts``: gateway users and their credits in memory, for the gateway's synchronous questions.

The gateway asks three synchronous questions per request and none touches the disk:

- ``check_cached(name, password)``: a user whose password already passed the slow salted hash is
  recognised by a keyed digest compared in constant time; None means "not known yet", and the caller
  awaits ``verify(name, password, client)`` (``verifier.py``: scrypt in a worker thread, throttled).
  A password change drops the cached digest.
- ``charge(user, cost)`` / ``admit(...)``: balance check and decrement in one synchronous step (no
  ``await``), so under any concurrency the balance never goes below zero and no credit is spent twice.
- ``refund(user, cost)``: gives a charge back (the gateway's own 5xx answers).

Leases: ``charge`` spends from credits this process has *leased* from the store (moved out of the
user's free balance in one conditional update), so any number of replicas on one database never
spend more than a balance together; the first short charge wakes the write-behind loop
(``ledger.py``) to lease more, it never waits for it.  A lease miss (credits exist, but not in this
process's lease) is ``LeaseMissing``: the caller awaits ``wait_lease``, which answers within
``credits.lease_wait``; only a user with no credits left anywhere is refused for want of them.

Durability: a clean stop loses nothing.  A crash (SIGKILL, power loss) of the only process gives its
lease back at the next start (the spends of the last interval are lost in the users' favour); a
crashed replica's lease is forfeited when a replica of that name starts again: a ``kill -9`` costs a
user at most what that replica held, never more than the balance is spent.

The life cycle: a disabled or removed user fails ``check_cached`` and ``verify`` at once (407 on every
listener); a removed user's unsettled charges and lease are settled at the next flush, then it is
forgotten.  A debit (``debit``) takes from this process's own lease first (in memory, at once), then
from the unleased balance in the database, then, on a shared store, recalls the other replicas'
leases of that user and takes what they give back within ``credits.lease_wait``: every credit it
takes is one nobody else can spend, so spent plus debited never exceeds what there was, and a debit
never goes below 0 (it takes less than asked when the rest is being spent meanwhile; it says so).

Per-user limits and usage: ``admit`` checks ``max_connections`` (client connections at once, on
this process) and ``max_requests_per_second`` (a token bucket, on this process), charges, and counts
the request in the user's in-memory usage (requests, tunnels, bytes, last seen), all synchronously;
on a shared store the figures shown are every replica's sum (the others' up to one flush interval late).

Events: ``credits.low_balance`` once when a balance drops below the threshold, ``credits.exhausted``
once when it can no longer pay a request (zero with the default cost 1); both are re-armed only by a
top-up.  Each worker or replica that sees one emits it; the notifiers get it once per pool (the
event bus claims its occasion, ``pool/events.py``).  Payloads carry the numeric user id, never the
name: names and passwords appear in no log and no metric.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from config.settings import CreditsSettings
from pool.accounts.account import Account
from pool.accounts.inputs import parse_amount, parse_limits
from pool.accounts.ledger import WriteBehind
from pool.accounts.operations import NewUser, create_user, recalled, reset_password
from pool.accounts.refusals import CreditsExhausted, LeaseMissing, LimitReached
from pool.accounts.usage import Usage
from pool.accounts.verifier import Verifier
from pool.accounts.view import UserView, user_view
from pool.errors import InvalidInputError, NotFoundError
from pool.store import Settlement, Store
from pool.tasks import TaskSet

__all__ = ["Accounts"]

log = logging.getLogger("proxy_pool.accounts")


class Accounts(WriteBehind):
    """Users and balances in memory, the ledger in the store; see the module docstring."""

    def __init__(
        self,
        store: Store,
        settings: CreditsSettings,
        *,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        on_spent: Callable[[int], None] | None = None,
        replica: str = "local",
    ) -> None:
        self.store = store
        self.replica = replica
        self.shared = bool(getattr(store, "shared", False))
        self.settings = settings
        self.on_event = on_event
        self.on_spent = on_spent
        self._by_name: dict[str, Account] = {}
        self._by_id: dict[int, Account] = {}
        self.verifier = Verifier()
        self._digest = self.verifier.digest  # bound once: check_cached is on the hot path
        self._user_rev = 0
        self._wake = asyncio.Event()  # a lease is wanted, or another process changed users or credits
        self._unreported = 0  # spent minus refunded, not yet given to on_spent
        self._lock = asyncio.Lock()
        self._tasks = TaskSet()
        self._conns: dict[object, Account] = {}  # client connection -> the user holding a slot for it
        self._waiting = 0  # requests awaiting a lease (``wait_lease``): the flush loop looks more often
        self._refreshed = asyncio.Event()  # set (and replaced) after every flush, failed or not
        self.db_ok = True  # the last flush reached the store

    # lifecycle ------------------------------------------------------------------------------
    @classmethod
    async def open(cls, store: Store, settings: CreditsSettings, **kwargs: Any) -> Accounts:
        accounts = cls(store, settings, **kwargs)
        await accounts.load()
        return accounts

    async def load(self) -> None:
        """Settle what a crashed run left leased, rebuild every balance from the ledger, lease."""
        if self.shared:
            lost = await self.store.settle_stale_leases(self.replica, forfeit=True)
            if lost:
                log.warning("replica %s had %d credits leased when it stopped uncleanly: forfeited", self.replica, lost)
        else:
            await self.store.settle_stale_leases(None, forfeit=False)
        users, _ = await self.store.ledger_state()
        usage = await self.store.usage()
        self._by_name.clear()
        self._by_id.clear()
        for record in users:
            self._remember(record, record.balance).base = usage.get(record.id)
        self._user_rev = max((u.rev for u in users), default=0)
        await self._refresh_credits()

    def start(self) -> None:
        self._tasks.spawn(self._flush_loop(), name="accounts-flush")
        self.store.subscribe(self._heard)

    def _heard(self, kind: str, ids: list[int]) -> None:
        """Another process changed users or credits (or wants some of a user's): look now."""
        if kind in ("wanted", "recall"):
            for user_id in ids:
                account = self._by_id.get(user_id)
                if account is not None:
                    account.asked = True
                    account.recalled = account.recalled or kind == "recall"
        elif kind not in ("users", "credits", "resync"):
            return
        self._wake.set()

    async def close(self) -> None:
        """Stop the loop, write what is pending and give the leases back: a clean stop loses nothing."""
        await self._tasks.close()
        self.verifier.close()
        try:
            await self.flush(give_back=True)
        except Exception as exc:  # noqa: BLE001  (shutdown goes on; say what is lost)
            pending = sum(a.spent - a.refunded for a in self._by_id.values())
            log.error("final credit flush failed, %d spent credits not recorded: %s", pending, exc)

    # the hot path (synchronous, in memory) --------------------------------------------------
    def check_cached(self, name: str, password: str) -> str | None:
        """The user, when this password already passed ``verify``; None: not known, ``verify`` it."""
        account = self._by_name.get(name)
        if account is None or account.verified is None or not account.enabled:
            return None
        if hmac.compare_digest(self._digest(name, password), account.verified):
            return account.name
        return None

    async def verify(self, name: str, password: str, client: str = "") -> str | None:
        """The full check, for a cache miss (see ``Verifier.verify``): the user, or None."""
        return await self.verifier.verify(self._by_name.get(name), name, password, client, self._still)

    def _still(self, account: Account | None, name: str) -> bool:
        """The account verified against is still the one of that name (not removed, not replaced)."""
        return account is not None and self._by_name.get(name) is account and account.enabled

    def admit(self, user: str, cost: int, tunnel: bool, conn: object | None = None) -> Usage:
        """One request of ``user`` (authenticated): per-user limits, the charge, the usage count, in one
        synchronous step.  ``conn`` names the client connection (the connection limit; ``release``
        frees its slot).  Raises ``LimitReached`` (429), ``CreditsExhausted`` (402), ``LeaseMissing``
        (await ``wait_lease``, then admit again) or ``LookupError`` (removed or disabled meanwhile: 407);
        nothing is taken or counted then."""
        account = self._by_name.get(user)
        if account is None or not account.enabled:
            raise LookupError(user)
        new_conn = conn is not None and self._conns.get(conn) is not account
        limit = account.max_connections
        if new_conn and limit is not None and account.connections >= limit:
            raise LimitReached(f"too many connections for this user (max {limit})", 1)
        rate = account.rate
        if rate is not None and not rate.ready():
            raise LimitReached(f"too many requests for this user (max {rate.rate:g} per second)", rate.retry_after())
        if cost:
            verdict = self._charge(account, cost)
            if verdict is not None:
                raise verdict
        if rate is not None:
            rate.tokens -= 1
        if new_conn:
            self.release(conn)
            account.connections += 1
            self._conns[conn] = account
        usage = account.usage
        if tunnel:
            usage.tunnels += 1
        else:
            usage.requests += 1
        usage.last_seen = time.time()
        return usage

    def release(self, conn: object) -> None:
        """A client connection ended: the connection slot it held for its user is free."""
        account = self._conns.pop(conn, None)
        if account is not None:
            account.connections -= 1

    def charge(self, user: str, cost: int) -> bool:
        account = self._by_name.get(user)
        if account is None:
            return False
        return self._charge(account, cost) is None

    def _charge(self, account: Account, cost: int) -> CreditsExhausted | LeaseMissing | None:
        """Take ``cost`` from the lease; None when paid, else why not."""
        account.charges += 1
        if account.balance < cost:
            if account.known < max(cost, 1):
                self._exhausted(account)
                return CreditsExhausted()
            account.short = True
            self._want_lease(account)  # credits exist, just not here yet: lease, never wait here
            return LeaseMissing()
        account.balance -= cost
        account.spent += cost
        after = account.known
        threshold = self.settings.low_balance_threshold
        if account.low_armed and after < threshold <= after + cost:
            account.low_armed = False
            self._emit("credits.low_balance", user_id=account.id, balance=after, threshold=threshold)
        if after < max(cost, 1):
            self._exhausted(account)
        elif account.balance < self._refill_at():
            self._want_lease(account)
        return None

    async def wait_lease(self, user: str, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until this process holds a lease to charge ``user`` from,
        or knows there are no credits left; the flush loop takes the lease meanwhile.  The caller admits
        again: a second ``LeaseMissing`` means the credits stayed with other replicas (or ``db_ok`` is
        False: the store was unreachable)."""
        account = self._by_name.get(user)
        cost = max(self.settings.cost_per_request, 1)
        deadline = time.monotonic() + timeout
        self._waiting += 1
        try:
            while account is not None and account.enabled and account.balance < cost <= account.known:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                account.short = True  # the others are asked for theirs if none is free
                self._want_lease(account)
                refreshed = self._refreshed
                try:
                    async with asyncio.timeout(remaining):
                        await refreshed.wait()
                except TimeoutError:
                    return
                if not self.db_ok:
                    return
        finally:
            self._waiting -= 1


    def _want_lease(self, account: Account) -> None:
        account.yielded = False
        self._wake.set()

    def refund(self, user: str, cost: int) -> None:
        account = self._by_name.get(user)
        if account is None or cost <= 0:
            return
        account.balance += cost
        account.refunded += cost

    def _exhausted(self, account: Account) -> None:
        if account.exhausted_armed:
            account.exhausted_armed = False
            self._emit("credits.exhausted", user_id=account.id)

    def _emit(self, type_: str, **payload: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(type_, payload)
            except Exception:  # a broken observer must not fail a charge
                log.exception("credit event %s could not be emitted", type_)

    # reading --------------------------------------------------------------------------------
    def balance(self, name: str) -> int:
        account = self._by_name.get(name)
        if account is None:
            raise NotFoundError(f"no user named {name!r}")
        return account.known

    def users(self) -> list[UserView]:
        return [user_view(a) for a in sorted(self._by_id.values(), key=lambda a: a.id) if not a.removed]

    def user(self, name: str) -> UserView:
        account = self._by_name.get(name)
        if account is None:
            raise NotFoundError(f"no user named {name!r}")
        return user_view(account)


    def __len__(self) -> int:
        return len(self._by_id)

    # changes (admin API) --------------------------------------------------------------------
    async def add_user(self, name: str, credits: int = 0) -> NewUser:
        new = await create_user(self.store, name, credits)
        async with self._lock:
            await self._sync()
        account = self._by_name.get(name)
        if account is not None and account.password_hash == new.record.password_hash:
            account.verified = self._digest(name, new.password)  # we know it: no scrypt on first use
        return new

    async def credit(self, name: str, amount: object) -> int:
        """A top-up: written to the ledger first, then applied; returns the new balance."""
        value = parse_amount(amount)
        account = self._by_name.get(name)
        if account is None:
            record = await self.store.get_user(name)  # NotFoundError, or a user added elsewhere
            user_id = record.id
        else:
            user_id = account.id
        async with self._lock:
            await self.store.append_ledger([(user_id, value, "credit")])
            await self._sync()
        return self.balance(name)

    async def debit(self, name: str, amount: object) -> tuple[int, int]:
        """Take credits off (see the module docstring: own lease, unleased, recalled leases), never below
        0; returns (debited, new balance).  Written as ``spend`` rows at once."""
        value = parse_amount(amount)
        account = await self._account(name)
        account.yielded = True  # no new lease of this user here while the debit takes; a charge asks again
        async with self._lock:
            own = min(value, account.balance)
            account.balance -= own  # before any await: no request spends these meanwhile
            try:
                if own:
                    await self.store.settle_credits(self.replica, [Settlement(account.id, spent=own)])
            except BaseException:
                account.balance += own
                raise
            account.total -= own
            free = await self.store.debit_credits(account.id, value - own) if own < value else 0
            account.total -= free
        taken = own + free
        if taken < value and self.shared:
            taken += await recalled(self.store, account.id, value - taken, self.settings.lease_wait)
        async with self._lock:
            await self._sync()
        if account.known < max(self.settings.cost_per_request, 1):
            self._exhausted(account)
        return taken, account.known

    async def update(self, name: str, *, enabled: object = None, **limits: object) -> UserView:
        """Enable/disable and set per-user limits (None lifts one); in force here at once, elsewhere
        at the next sync (a notification away on a shared store)."""
        changes: dict[str, Any] = dict(parse_limits(limits))
        if enabled is not None:
            if not isinstance(enabled, bool):
                raise InvalidInputError(f"enabled must be true or false, got {enabled!r}")
            changes["enabled"] = enabled
        if not changes:
            raise InvalidInputError("nothing to change: give enabled, max_connections or max_requests_per_second")
        record = await self.store.update_user(name, **changes)
        account = self._by_id.get(record.id)
        if account is not None:
            account.set_limits(record)
        async with self._lock:
            await self._sync()
        return self.user(name)

    async def remove(self, name: str) -> None:
        """Remove a user: refused here at once, its name free again; its charges are settled and its
        lease given back at once, its ledger kept for the books."""
        record = await self.store.remove_user(name)
        account = self._by_id.get(record.id)
        if account is not None:
            self._drop(account)
        await self.flush()


    async def _account(self, name: str) -> Account:
        account = self._by_name.get(name)
        if account is None:
            await self.store.get_user(name)  # NotFoundError, or a user added elsewhere: sync it in
            async with self._lock:
                await self._sync()
            account = self._by_name.get(name)
            if account is None:
                raise NotFoundError(f"no user named {name!r}")
        return account

    async def set_password(self, name: str) -> str:
        """A new generated password (shown once); the old one stops working at once."""
        password = await reset_password(self.store, name)
        record = await self.store.get_user(name)
        async with self._lock:
            await self._sync()
        account = self._by_name.get(name)
        if account is not None and account.password_hash == record.password_hash:
            account.verified = self._digest(name, password)
        return password
