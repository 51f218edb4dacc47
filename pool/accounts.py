"""Gateway users and their credits: passwords, an in-memory balance, a write-behind ledger.

The gateway asks three synchronous questions per request and none touches the disk:

- ``check_cached(name, password)``: a user whose password already passed the slow salted hash
  (scrypt) is recognised by a keyed digest compared in constant time; None means "not known yet",
  and the caller awaits ``verify(name, password, client)``, which runs scrypt in a worker thread,
  never on the event loop.  A password change drops the cached digest.  Unknown names are hashed
  against a dummy hash, so they cost what a wrong password costs (no telling names apart by time).
  Failed verifications are rate limited per client address (a guesser only slows itself down,
  never the real user's correct password) and in total (the scrypt flood guard); a (name,
  password) pair that failed is remembered for a while and refused without hashing, known or not.
- ``charge(user, cost)``: balance check and decrement in one synchronous step (no ``await``), so
  under any concurrency the balance never goes below zero and no credit is spent twice.
- ``refund(user, cost)``: gives a charge back (the gateway's own 5xx answers).

Leases: ``charge`` spends from credits this process has *leased* from the store (moved out of the
user's free balance in one conditional update), so any number of replicas on one database never
spend more than a balance together.  With a store of its own (SQLite, ``store.shared`` False) the
process leases every free credit; on a shared store it leases blocks of ``credits.lease_block``,
tops them up in the background when they run low (the first short charge wakes that, it never
waits for it), gives an idle lease back when another replica asks for that user's credits, and
returns what is left at ``close()``.

Durability: spends and refunds are summed in memory and settled (ledger rows out of the lease) at
least every ``credits.flush_interval`` seconds and at ``close()``, so "balance = sum of the ledger"
holds after each flush.  A clean stop loses nothing.  A crash (SIGKILL, power loss) of the only
process gives its lease back at the next start (the spends of the last interval are lost in the
users' favour, as before leases); a crashed replica's lease is forfeited when a replica of that
name starts again: a ``kill -9`` costs a user at most what that replica held, never more than
the balance is spent.

The same flush reads users and top-ups written by someone else (another replica, ``proxy-pool
users credit``); on a shared store a notification brings them in within a second.

Events: ``credits.low_balance`` once when a balance drops below the threshold, ``credits.exhausted``
once when it can no longer pay a request (zero with the default cost 1); both are re-armed only by a
top-up.  Payloads carry the numeric user id, never the name: names and passwords appear in no log
and no metric.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from config.settings import CreditsSettings
from pool.errors import InvalidInputError, NotFoundError
from pool.store import Settlement, Store, UserRecord
from pool.tasks import TaskSet

__all__ = [
    "MAX_AMOUNT",
    "Accounts",
    "NewUser",
    "UserView",
    "add_credits",
    "create_user",
    "generate_password",
    "hash_password",
    "parse_amount",
    "reset_password",
    "validate_name",
    "verify_password",
]

log = logging.getLogger("proxy_pool.accounts")

ROUTING_KEYWORDS = frozenset({"country", "session", "protocol", "anonymity"})
_NAME = re.compile(r"^[A-Za-z0-9_.@+]{1,64}$")
MAX_AMOUNT = 10**12  # far below SQLite's 2**63, far above any sensible budget

# scrypt: 16 MiB of memory per hash (n * r * 128 bytes), the cost the Python docs suggest for logins
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32
_SCRYPT_MAXMEM = 64 * 1024 * 1024


# names, amounts, passwords ------------------------------------------------------------------
def validate_name(name: str) -> str:
    """A user name usable in ``NAME-country-de:PASSWORD``; raises InvalidInputError saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError("user name must not be empty")
    if "-" in name:
        raise InvalidInputError("user name must not contain '-' (it separates routing parameters)")
    if ":" in name:
        raise InvalidInputError("user name must not contain ':' (it separates the password)")
    if name.lower() in ROUTING_KEYWORDS:
        keywords = ", ".join(sorted(ROUTING_KEYWORDS))
        raise InvalidInputError(f"user name must not be a routing keyword ({keywords})")
    if not _NAME.match(name):
        raise InvalidInputError("user name: use 1-64 letters, digits, '_', '.', '@' or '+'")
    return name


def parse_amount(value: object, *, what: str = "amount", allow_zero: bool = False) -> int:
    """An integer credit amount from a CLI string or a JSON value; raises InvalidInputError."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,20}", text):
            raise InvalidInputError(f"{what} must be an integer, got {value!r}")
        number = int(text)
    elif isinstance(value, int):
        number = value
    else:
        raise InvalidInputError(f"{what} must be an integer, got {value!r}")
    if number < 0 or (number == 0 and not allow_zero):
        wanted = "zero or more" if allow_zero else "positive"
        raise InvalidInputError(f"{what} must be {wanted}, got {number}")
    if number > MAX_AMOUNT:
        raise InvalidInputError(f"{what} must be at most {MAX_AMOUNT}, got {number}")
    return number


def generate_password() -> str:
    """192 random bits, URL-safe: no ':' so it fits in ``user:password``."""
    return secrets.token_urlsafe(24)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str) -> str:
    """``scrypt$n=16384,r=8,p=1$<salt>$<hash>`` (base64): self-describing, costs can change later."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=SCRYPT_LEN,
        maxmem=_SCRYPT_MAXMEM,
    )
    return f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Recompute the hash with the stored salt and costs; constant-time comparison."""
    try:
        scheme, params, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        costs = dict(part.split("=", 1) for part in params.split(","))
        n, r, p = int(costs["n"]), int(costs["r"]), int(costs["p"])
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
    except (ValueError, KeyError):
        return False
    maxmem = max(_SCRYPT_MAXMEM, 256 * n * r)
    actual = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=maxmem)
    return hmac.compare_digest(actual, expected)


# storage-level operations (the CLI uses these directly; Accounts wraps them) ----------------
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


# the in-memory view -------------------------------------------------------------------------
class _Bucket:
    """A token bucket: ``take()`` is False when the budget for slow verifications is spent."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, capacity: float, rate: float) -> None:
        self.capacity, self.rate = capacity, rate
        self.tokens, self.stamp = capacity, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(slots=True, eq=False)
class _Account:
    id: int
    name: str
    password_hash: str
    balance: int  # leased here and not yet charged: what charge() spends from
    total: int = 0  # the user's credits as the store last said (ledger sum, every replica's lease)
    spent: int = 0  # charged since the last flush
    refunded: int = 0  # refunded since the last flush
    verified: bytes | None = None  # keyed digest of the (name, password) that passed scrypt
    low_armed: bool = True
    exhausted_armed: bool = True
    charges: int = 0  # charge attempts, to tell an idle lease from a busy one
    seen_charges: int = 0  # ``charges`` at the last flush
    idle_flushes: int = 0  # flushes in a row with no charge attempt in between
    asked: bool = False  # another replica wants this user's credits
    yielded: bool = False  # gave the lease away: lease again only when a charge here asks
    short: bool = False  # a charge was refused for want of a lease while credits exist elsewhere

    @property
    def known(self) -> int:
        """The balance as far as this process knows: the store's total less what it charged since."""
        return self.total - self.spent + self.refunded

    def forget_password(self, password_hash: str) -> None:
        self.password_hash = password_hash
        self.verified = None


@dataclass(frozen=True)
class UserView:
    """What the admin API and the CLI show about a user (no hash, no password)."""

    id: int
    name: str
    credits: int

    def public_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "credits": self.credits}


class Accounts:
    """Users and balances in memory, the ledger in the store; see the module docstring."""

    REJECTED_KEEP = 4096  # failed (name, password) pairs refused without hashing again
    CLIENT_BURST, CLIENT_RATE = 5, 0.5  # failed verifications per client address: burst, then per second
    CLIENT_KEEP = 10_000  # client addresses whose failures are remembered
    FLOOD_BURST, FLOOD_RATE = 20, 10.0  # failed verifications, every client together
    SCRYPT_THREADS = 2

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
        self._by_name: dict[str, _Account] = {}
        self._by_id: dict[int, _Account] = {}
        self._key = secrets.token_bytes(32)  # keys the cached digests; never leaves this process
        self.flood_guard = _Bucket(self.FLOOD_BURST, self.FLOOD_RATE)  # the scrypt flood guard
        self._client_budgets: OrderedDict[str, _Bucket] = OrderedDict()
        self._rejected: OrderedDict[bytes, None] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}  # one scrypt per pair at a time
        self._hasher: ThreadPoolExecutor | None = None
        self._dummy_hash = ""  # what an unknown name is checked against (made on first use)
        self._user_rev = 0
        self._wake = asyncio.Event()  # a lease is wanted, or another process changed users or credits
        self._unreported = 0  # spent minus refunded, not yet given to on_spent
        self._lock = asyncio.Lock()
        self._tasks = TaskSet()
        self.slow_verifications = 0  # scrypt runs on the request path (tests, stats)

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
        self._by_name.clear()
        self._by_id.clear()
        for record in users:
            self._remember(record, record.balance)
        self._user_rev = max((u.rev for u in users), default=0)
        await self._refresh_credits()

    def start(self) -> None:
        self._tasks.spawn(self._flush_loop(), name="accounts-flush")
        self.store.subscribe(self._heard)

    def _heard(self, kind: str, ids: list[int]) -> None:
        """Another process changed users or credits (or wants some of a user's): look now."""
        if kind == "wanted":
            for user_id in ids:
                account = self._by_id.get(user_id)
                if account is not None:
                    account.asked = True
        elif kind not in ("users", "credits", "resync"):
            return
        self._wake.set()

    async def close(self) -> None:
        """Stop the loop, write what is pending and give the leases back: a clean stop loses nothing."""
        await self._tasks.close()
        if self._hasher is not None:
            self._hasher.shutdown(wait=False, cancel_futures=True)
            self._hasher = None
        try:
            await self.flush(give_back=True)
        except Exception as exc:  # noqa: BLE001  (shutdown goes on; say what is lost)
            pending = sum(a.spent - a.refunded for a in self._by_id.values())
            log.error("final credit flush failed, %d spent credits not recorded: %s", pending, exc)

    async def _flush_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.settings.flush_interval):  # no helper task, unlike wait_for
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

    # the hot path (synchronous, in memory) --------------------------------------------------
    def _digest(self, name: str, password: str) -> bytes:
        return hmac.digest(self._key, f"{name}\0{password}".encode(), "sha256")

    def check_cached(self, name: str, password: str) -> str | None:
        """The user, when this password already passed ``verify``; None: not known, ``verify`` it."""
        account = self._by_name.get(name)
        if account is None or account.verified is None:
            return None
        if hmac.compare_digest(self._digest(name, password), account.verified):
            return account.name
        return None

    async def verify(self, name: str, password: str, client: str = "") -> str | None:
        """The full check, for a cache miss: scrypt in a worker thread, the same cost for unknown
        names and wrong passwords, failures throttled per ``client`` address and in total."""
        digest = self._digest(name, password)
        account = self._by_name.get(name)
        if account is not None and account.verified is not None and hmac.compare_digest(digest, account.verified):
            return account.name
        if digest in self._rejected:
            self._rejected.move_to_end(digest)
            return None
        running = self._in_flight.get(digest)
        if running is not None:  # the same pair is being hashed: share that answer
            return name if await asyncio.shield(running) else None
        budget = self._client_budget(client)
        if not budget.take():
            return None  # this address guessed wrong too often lately: refuse without hashing
        if not self.flood_guard.take():
            budget.tokens += 1
            return None  # everyone together: the flood guard
        stored = account.password_hash if account is not None else await self._dummy()
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._in_flight[digest] = future
        try:
            self.slow_verifications += 1
            ok = await asyncio.get_running_loop().run_in_executor(self._executor(), verify_password, password, stored)
            ok = ok and account is not None and account.password_hash == stored and self._still(account, name)
            future.set_result(ok)
        except BaseException:
            if not future.done():
                future.set_result(False)  # whoever shares this check gets a refusal, not our exception
            raise
        finally:
            self._in_flight.pop(digest, None)
        if ok:
            assert account is not None
            account.verified = digest
            budget.tokens += 1  # a success does not use up the failure budgets
            self.flood_guard.tokens += 1
            return account.name
        self._rejected[digest] = None
        while len(self._rejected) > self.REJECTED_KEEP:
            self._rejected.popitem(last=False)
        return None

    def _still(self, account: _Account | None, name: str) -> bool:
        """The account verified against is still the one of that name (not removed, not replaced)."""
        return account is not None and self._by_name.get(name) is account

    def _client_budget(self, client: str) -> _Bucket:
        budget = self._client_budgets.get(client)
        if budget is None:
            budget = self._client_budgets[client] = _Bucket(self.CLIENT_BURST, self.CLIENT_RATE)
            while len(self._client_budgets) > self.CLIENT_KEEP:
                self._client_budgets.popitem(last=False)
        else:
            self._client_budgets.move_to_end(client)
        return budget

    def _executor(self) -> ThreadPoolExecutor:
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(self.SCRYPT_THREADS, thread_name_prefix="scrypt")
        return self._hasher

    async def _dummy(self) -> str:
        if not self._dummy_hash:
            self._dummy_hash = await asyncio.get_running_loop().run_in_executor(
                self._executor(), hash_password, secrets.token_urlsafe(24)
            )
        return self._dummy_hash

    def charge(self, user: str, cost: int) -> bool:
        account = self._by_name.get(user)
        if account is None:
            return False
        account.charges += 1
        if account.balance < cost:
            if account.known < max(cost, 1):
                self._exhausted(account)
            else:
                account.short = True
                self._want_lease(account)  # credits exist, just not here yet: lease, never wait
            return False
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
        return True

    def _refill_at(self) -> int:
        return self.settings.lease_block // 2 if self.shared else 1

    def _want_lease(self, account: _Account) -> None:
        account.yielded = False
        self._wake.set()

    def refund(self, user: str, cost: int) -> None:
        account = self._by_name.get(user)
        if account is None or cost <= 0:
            return
        account.balance += cost
        account.refunded += cost

    def _exhausted(self, account: _Account) -> None:
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
        return [UserView(a.id, a.name, a.known) for a in sorted(self._by_id.values(), key=lambda a: a.id)]

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

    # write-behind ---------------------------------------------------------------------------
    async def flush(self, *, give_back: bool = False) -> None:
        """Settle charges and refunds (and leases given back), then read others' changes and lease."""
        async with self._lock:
            rows: list[Settlement] = []
            taken: list[tuple[_Account, int, int, int]] = []
            for account in self._by_id.values():  # no await in this loop: nothing slips between
                account.idle_flushes = account.idle_flushes + 1 if account.charges == account.seen_charges else 0
                account.seen_charges = account.charges
                # idle for a whole flush interval at least: a burst that is still authenticating keeps its lease
                idle = account.idle_flushes >= 2
                returned = 0
                if account.balance and (give_back or (account.asked and idle and self.shared)):
                    returned, account.balance = account.balance, 0
                    account.yielded = not give_back
                account.asked = False
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
            if not give_back:
                await self._sync()

    async def _sync(self) -> None:
        """Apply users and credits written by anyone else, then top the leases up."""
        await self._sync_users()
        await self._refresh_credits()

    async def _refresh_credits(self) -> None:
        block = self.settings.lease_block
        starving: list[int] = []
        for state in await self.store.credit_state():
            account = self._by_id.get(state.user_id)
            if account is None:
                continue
            before = account.known
            account.total = state.total  # our unsettled charges are still inside our lease there
            if account.known > before:
                self._rearm(account)
            short, account.short = account.short, False
            if state.free <= 0 or account.yielded:
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
            if known is None:
                self._remember(record, record.balance)
            elif known.password_hash != record.password_hash:
                known.forget_password(record.password_hash)
                self._rejected.clear()  # a pair refused before may be the new password

    def _remember(self, record: UserRecord, balance: int) -> None:
        """A user, with nothing leased yet (``_refresh_credits`` leases) and ``balance`` as its total."""
        account = _Account(record.id, record.name, record.password_hash, 0, total=balance)
        self._rejected.clear()  # a pair refused for an unknown name may be this new user's
        # armed only when there is something to cross: a user loaded (or created) below the
        # threshold, or broke, gets no event until a top-up lifts the balance
        account.low_armed = balance >= self.settings.low_balance_threshold
        account.exhausted_armed = balance >= max(self.settings.cost_per_request, 1)
        self._by_name[record.name] = account
        self._by_id[record.id] = account

    def _rearm(self, account: _Account) -> None:
        if account.known >= self.settings.low_balance_threshold:
            account.low_armed = True
        if account.known >= max(self.settings.cost_per_request, 1):
            account.exhausted_armed = True
