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
the usage increments are added to the store beside the ledger at each flush, so on a shared store
the figures shown are every replica's sum (the others' up to one flush interval late).

A lease miss (credits exist, but not in this process's lease: it gave its lease back when idle, or
another replica holds them) is ``LeaseMissing``: the caller awaits ``wait_lease``, which has a lease
taken in the background and answers within ``credits.lease_wait``; only a user with no credits left
anywhere is refused for want of them.  A user with a lease awaits nothing.

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
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from config.settings import CreditsSettings
from pool.errors import InvalidInputError, NotFoundError
from pool.store import Settlement, Store, UsageRow, UserRecord
from pool.tasks import TaskSet

__all__ = [
    "MAX_AMOUNT",
    "Accounts",
    "CreditsExhausted",
    "LeaseMissing",
    "LimitReached",
    "NewUser",
    "Usage",
    "UserView",
    "add_credits",
    "create_user",
    "debit_credits",
    "generate_password",
    "hash_password",
    "parse_amount",
    "parse_limits",
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


RECALL_POLL = 0.05  # seconds between takes while other replicas give a recalled lease back


async def debit_credits(store: Store, name: str, amount: object, *, wait: float = 2.0) -> tuple[int, int]:
    """Take up to ``amount`` credits off a user without a serving gateway of our own: the unleased
    balance, then (shared store) what the replicas give back when recalled, for up to ``wait``
    seconds.  Returns (debited, stored balance); never below 0, never a credit someone spends."""
    value = parse_amount(amount)
    user = await store.get_user(name)
    taken = await store.debit_credits(user.id, value)
    if taken < value and store.shared:
        taken += await _recalled(store, user.id, value - taken, wait)
    return taken, (await store.get_user(name)).balance


async def _recalled(store: Store, user_id: int, want: int, wait: float) -> int:
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


_LIMITS: dict[str, type] = {"max_connections": int, "max_requests_per_second": float}
MAX_LIMIT = 10**9


def parse_limits(values: dict[str, object]) -> dict[str, int | float | None]:
    """Per-user limits from the CLI or JSON: a positive number (an integer for connections) or None
    (no limit).  Raises InvalidInputError naming the key."""
    out: dict[str, int | float | None] = {}
    for key, value in values.items():
        kind = _LIMITS.get(key)
        if kind is None:
            raise InvalidInputError(f"unknown limit {key!r}: use max_connections or max_requests_per_second")
        if value is None:
            out[key] = None
            continue
        wanted = "a positive integer" if kind is int else "a positive number"
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
            raise InvalidInputError(f"{key} must be {wanted} or null, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise InvalidInputError(f"{key} must be {wanted} or null, got {value!r}")
        if value > MAX_LIMIT:
            raise InvalidInputError(f"{key} must be at most {MAX_LIMIT}, got {value!r}")
        out[key] = kind(value)
    return out


class LimitReached(Exception):
    """A per-user limit refuses this request (429); ``retry_after`` in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class CreditsExhausted(Exception):
    """The user has no credits left anywhere (402)."""


class LeaseMissing(Exception):
    """Credits exist, but not in this process's lease yet: await ``Accounts.wait_lease``, then admit again."""


class Usage:
    """One user's usage since the last flush, bumped on the hot path (plain attribute adds)."""

    __slots__ = ("bytes_down", "bytes_up", "last_seen", "requests", "tunnels")

    def __init__(self) -> None:
        self.requests = self.tunnels = self.bytes_up = self.bytes_down = 0
        self.last_seen: float | None = None

    def add_bytes(self, up: int, down: int) -> None:
        """A request or tunnel of this user ended, having carried these bytes."""
        self.bytes_up += up
        self.bytes_down += down
        self.last_seen = time.time()

    def totals(self) -> tuple[int, int, int, int]:
        return self.requests, self.tunnels, self.bytes_up, self.bytes_down

    def take(self, row: UsageRow) -> None:
        """``row`` is being written: it no longer counts here."""
        self.requests -= row.requests
        self.tunnels -= row.tunnels
        self.bytes_up -= row.bytes_up
        self.bytes_down -= row.bytes_down
        if self.last_seen == row.last_seen:
            self.last_seen = None

    def put_back(self, row: UsageRow) -> None:
        """The write of ``row`` failed: it counts here again."""
        self.requests += row.requests
        self.tunnels += row.tunnels
        self.bytes_up += row.bytes_up
        self.bytes_down += row.bytes_down
        if row.last_seen is not None and (self.last_seen is None or row.last_seen > self.last_seen):
            self.last_seen = row.last_seen


# the in-memory view -------------------------------------------------------------------------
class _Bucket:
    """A token bucket: ``take()`` is False when the budget for slow verifications is spent."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, capacity: float, rate: float) -> None:
        self.capacity, self.rate = capacity, rate
        self.tokens, self.stamp = capacity, time.monotonic()

    def take(self) -> bool:
        if not self.ready():
            return False
        self.tokens -= 1
        return True

    def ready(self) -> bool:
        """Refill, and whether one token is there (``take`` without taking it)."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= 1

    def retry_after(self) -> int:
        """Whole seconds until the next token."""
        return max(1, math.ceil((1 - self.tokens) / self.rate))


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
    enabled: bool = True
    removed: bool = False  # settled and forgotten at the next flush
    recalled: bool = False  # a debit elsewhere wants this lease back, idle or not
    max_connections: int | None = None
    rate: _Bucket | None = None  # max_requests_per_second
    connections: int = 0  # client connections holding one of this user's slots
    usage: Usage = field(default_factory=Usage)  # since the last flush
    base: UsageRow | None = None  # the store's sum, as last read (every replica's flushed usage)

    def set_limits(self, record: UserRecord) -> None:
        self.enabled = record.enabled
        self.max_connections = record.max_connections
        rps = record.max_requests_per_second
        if rps is None:
            self.rate = None
        elif self.rate is None or self.rate.rate != rps:
            self.rate = _Bucket(max(1.0, rps), rps)

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
    enabled: bool = True
    max_connections: int | None = None
    max_requests_per_second: float | None = None
    requests: int = 0
    tunnels: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    last_seen: float | None = None

    def public_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "credits": self.credits,
            "enabled": self.enabled,
            "max_connections": self.max_connections,
            "max_requests_per_second": self.max_requests_per_second,
            "requests": self.requests,
            "tunnels": self.tunnels,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "last_seen": iso_time(self.last_seen),
        }


def iso_time(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


class Accounts:
    """Users and balances in memory, the ledger in the store; see the module docstring."""

    REJECTED_KEEP = 4096  # failed (name, password) pairs refused without hashing again
    CLIENT_BURST, CLIENT_RATE = 5, 0.5  # failed verifications per client address: burst, then per second
    CLIENT_KEEP = 10_000  # client addresses whose failures are remembered
    FLOOD_BURST, FLOOD_RATE = 20, 10.0  # failed verifications, every client together
    SCRYPT_THREADS = 2
    WAITING_POLL = 0.2  # seconds between flushes while a request waits for a lease

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
        self._conns: dict[object, _Account] = {}  # client connection -> the user holding a slot for it
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

    # the hot path (synchronous, in memory) --------------------------------------------------
    def _digest(self, name: str, password: str) -> bytes:
        return hmac.digest(self._key, f"{name}\0{password}".encode(), "sha256")

    def check_cached(self, name: str, password: str) -> str | None:
        """The user, when this password already passed ``verify``; None: not known, ``verify`` it."""
        account = self._by_name.get(name)
        if account is None or account.verified is None or not account.enabled:
            return None
        if hmac.compare_digest(self._digest(name, password), account.verified):
            return account.name
        return None

    async def verify(self, name: str, password: str, client: str = "") -> str | None:
        """The full check, for a cache miss: scrypt in a worker thread, the same cost for unknown
        names and wrong passwords, failures throttled per ``client`` address and in total."""
        digest = self._digest(name, password)
        account = self._by_name.get(name)
        if account is not None and not account.enabled:
            return None  # disabled: refused at once, whatever the password
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
        return account is not None and self._by_name.get(name) is account and account.enabled

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

    def _charge(self, account: _Account, cost: int) -> CreditsExhausted | LeaseMissing | None:
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
        return [self._view(a) for a in sorted(self._by_id.values(), key=lambda a: a.id) if not a.removed]

    def user(self, name: str) -> UserView:
        account = self._by_name.get(name)
        if account is None:
            raise NotFoundError(f"no user named {name!r}")
        return self._view(account)

    @staticmethod
    def _view(a: _Account) -> UserView:
        """Usage: the store's sum (every replica's flushes) plus ours since the last flush."""
        base, u = a.base, a.usage
        seen = max((t for t in (base.last_seen if base else None, u.last_seen) if t is not None), default=None)
        return UserView(
            a.id,
            a.name,
            a.known,
            a.enabled,
            a.max_connections,
            a.rate.rate if a.rate is not None else None,
            u.requests + (base.requests if base else 0),
            u.tunnels + (base.tunnels if base else 0),
            u.bytes_up + (base.bytes_up if base else 0),
            u.bytes_down + (base.bytes_down if base else 0),
            seen,
        )

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
            taken += await _recalled(self.store, account.id, value - taken, self.settings.lease_wait)
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

    def _drop(self, account: _Account) -> None:
        """Refused from now on; the next flush settles it and forgets it."""
        account.removed = True
        account.enabled = False
        if self._by_name.get(account.name) is account:
            del self._by_name[account.name]

    async def _account(self, name: str) -> _Account:
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

    # write-behind ---------------------------------------------------------------------------
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
            taken: list[tuple[_Account, int, int, int]] = []
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
        flushed: list[tuple[_Account, UsageRow, UsageRow | None]] = []
        for account in self._by_id.values():  # no await in this loop: a consistent snapshot
            usage = account.usage
            totals = usage.totals()
            if usage.last_seen is None and not any(totals):
                continue  # nothing since the last flush
            row = UsageRow(account.id, *totals, last_seen=usage.last_seen)
            usage.take(row)
            flushed.append((account, row, account.base))
            account.base = _plus(account.base, row)  # shown the same until the store's sum is read
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
                self._rejected.clear()  # a pair refused before may be the new password
            known.set_limits(record)

    def _remember(self, record: UserRecord, balance: int) -> _Account:
        """A user, with nothing leased yet (``_refresh_credits`` leases) and ``balance`` as its total."""
        account = _Account(record.id, record.name, record.password_hash, 0, total=balance)
        account.set_limits(record)
        self._rejected.clear()  # a pair refused for an unknown name may be this new user's
        # armed only when there is something to cross: a user loaded (or created) below the
        # threshold, or broke, gets no event until a top-up lifts the balance
        account.low_armed = balance >= self.settings.low_balance_threshold
        account.exhausted_armed = balance >= max(self.settings.cost_per_request, 1)
        self._by_name[record.name] = account
        self._by_id[record.id] = account
        return account

    def _rearm(self, account: _Account) -> None:
        if account.known >= self.settings.low_balance_threshold:
            account.low_armed = True
        if account.known >= max(self.settings.cost_per_request, 1):
            account.exhausted_armed = True


def _plus(base: UsageRow | None, row: UsageRow) -> UsageRow:
    if base is None:
        return row
    seen = max(t for t in (base.last_seen, row.last_seen, 0.0) if t is not None) or None
    return UsageRow(
        row.user_id,
        base.requests + row.requests,
        base.tunnels + row.tunnels,
        base.bytes_up + row.bytes_up,
        base.bytes_down + row.bytes_down,
        seen,
    )
