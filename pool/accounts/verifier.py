"""Password checks at the gateway's door: scrypt off the event loop, throttled, and never a timing oracle.

A pair that passed is recognised afterwards by a keyed digest (``digest``; the key never leaves this
process), compared in constant time.  Unknown names are hashed against a dummy hash, so they cost what
a wrong password costs.  Failed verifications are rate limited per client address (a guesser only
slows itself down, never the real user's correct password) and in total (the scrypt flood guard); a
(name, password) pair that failed is remembered for a while and refused without hashing.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pool.accounts.account import Account, Bucket
from pool.accounts.passwords import hash_password, verify_password

__all__ = ["Verifier"]


class Verifier:
    """The slow check and its guards, for one process's ``Accounts``."""

    REJECTED_KEEP = 4096  # failed (name, password) pairs refused without hashing again
    CLIENT_BURST, CLIENT_RATE = 5, 0.5  # failed verifications per client address: burst, then per second
    CLIENT_KEEP = 10_000  # client addresses whose failures are remembered
    FLOOD_BURST, FLOOD_RATE = 20, 10.0  # failed verifications, every client together
    SCRYPT_THREADS = 2

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)  # keys the cached digests; never leaves this process
        self.flood_guard = Bucket(self.FLOOD_BURST, self.FLOOD_RATE)  # the scrypt flood guard
        self._client_budgets: OrderedDict[str, Bucket] = OrderedDict()
        self._rejected: OrderedDict[bytes, None] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}  # one scrypt per pair at a time
        self._hasher: ThreadPoolExecutor | None = None
        self._dummy_hash = ""  # what an unknown name is checked against (made on first use)
        self.slow_verifications = 0  # scrypt runs on the request path (tests, stats)

    def digest(self, name: str, password: str) -> bytes:
        return hmac.digest(self._key, f"{name}\0{password}".encode(), "sha256")

    def forget_rejected(self) -> None:
        """A pair refused before may be good now (a new user, a new password)."""
        self._rejected.clear()

    def close(self) -> None:
        if self._hasher is not None:
            self._hasher.shutdown(wait=False, cancel_futures=True)
            self._hasher = None

    async def verify(
        self, account: Account | None, name: str, password: str, client: str, still: Callable[[Account, str], bool]
    ) -> str | None:
        """The full check of ``name``'s ``account`` (None: unknown), for a cache miss: scrypt in a worker
        thread, the same cost for unknown names and wrong passwords, failures throttled per ``client``
        address and in total; ``still`` says the account hashed against is still that name's."""
        digest = self.digest(name, password)
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
            ok = ok and account is not None and account.password_hash == stored and still(account, name)
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

    def _client_budget(self, client: str) -> Bucket:
        budget = self._client_budgets.get(client)
        if budget is None:
            budget = self._client_budgets[client] = Bucket(self.CLIENT_BURST, self.CLIENT_RATE)
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
