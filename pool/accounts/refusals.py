"""Why a request of an authenticated user is refused: the gateway maps each to its answer (429, 402) or
waits (a lease on its way)."""

from __future__ import annotations

__all__ = ["CreditsExhausted", "LeaseMissing", "LimitReached"]


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
