"""One user's in-memory state (its lease, unsettled charges, limits, cached password digest) and the
token bucket its request rate (and the scrypt flood guard) is limited by."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from pool.accounts.usage import Usage
from pool.store import UsageRow, UserRecord

__all__ = ["Account", "Bucket"]


class Bucket:
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
class Account:
    """One user as this process holds it: its lease, what it charged since the last flush, its limits."""

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
    rate: Bucket | None = None  # max_requests_per_second
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
            self.rate = Bucket(max(1.0, rps), rps)

    @property
    def known(self) -> int:
        """The balance as far as this process knows: the store's total less what it charged since."""
        return self.total - self.spent + self.refunded

    def forget_password(self, password_hash: str) -> None:
        self.password_hash = password_hash
        self.verified = None
