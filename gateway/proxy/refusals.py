"""Our own answers: a status, a one-line reason, and the outcome label metrics count it under.

Every step of a request may end in one of these; the client connection writes it and accounting counts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.proxy import http1
from gateway.proxy.errors import GatewayError
from gateway.proxy.upstream import UpstreamError, UpstreamTimeout
from pool.accounts import Usage
from pool.models import Proxy
from pool.selector import Route

__all__ = ["AUTH_REALM", "Admission", "Attempts", "KEEP_AFTER", "NeedsLease", "NeedsVerification", "Refusal"]

# after a 407 the connection closes: an unauthenticated client holds no slot (issue 12, item 5)
KEEP_AFTER = frozenset({402, 403, 429, 503})
AUTH_REALM = [("Proxy-Authenticate", 'Basic realm="proxy-pool"')]


class Refusal(GatewayError):
    """An answer of our own: a status and a one-line reason."""

    def __init__(self, status: int, message: str, outcome: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome
        self.headers = headers or []
        self.cause: UpstreamError | None = None  # the last upstream failure behind a 502/504 (SOCKS reply codes)

    def keeps(self, head: http1.RequestHead) -> bool:
        """Whether the client connection survives this answer: only when no unread body follows."""
        return (
            self.status in KEEP_AFTER
            and head.keep_alive
            and not head.is_connect
            and http1.request_body_framing(head) is http1.Framing.NONE
        )


class NeedsVerification(GatewayError):
    """Credentials not in the accounts' cache: the slow check (a thread) must be awaited first, which
    the synchronous admission cannot do; the client connection awaits it in a task, then goes on."""

    def __init__(self, name: str, password: str) -> None:
        super().__init__("credentials need the slow check")
        self.name = name
        self.password = password

    def __repr__(self) -> str:  # never the password
        return "NeedsVerification()"


class NeedsLease(NeedsVerification):
    """The user has credits, but this gateway holds no lease of them yet: awaited like a verification
    (``Admitter.admit_slow`` waits, bounded, for the lease taken in the background), then admitted again."""

    def __init__(self, user: str) -> None:
        super().__init__(user, "")
        self.user = user

    def __repr__(self) -> str:
        return "NeedsLease()"


@dataclass(slots=True)
class Attempts:
    """Why each upstream failed, for the 502 body and the 504 decision."""

    reasons: list[str] = field(default_factory=list)
    timeouts: int = 0
    last: UpstreamError | None = None

    def failed(self, proxy: Proxy | None, exc: UpstreamError) -> None:
        label = f"upstream #{proxy.id}" if proxy else "direct"
        self.reasons.append(f"{label}: {exc.message}")
        self.last = exc
        if isinstance(exc, UpstreamTimeout):
            self.timeouts += 1

    def refusal(self) -> Refusal:
        if self.reasons and self.timeouts == len(self.reasons):
            refusal = Refusal(504, f"upstream timed out ({len(self.reasons)} attempts)", "timeout")
        else:
            summary = "; ".join(self.reasons[-5:])
            refusal = Refusal(502, f"all {len(self.reasons)} attempts failed: {summary}", "upstream_error")
        refusal.cause = self.last
        return refusal


@dataclass(frozen=True, slots=True)
class Admission:
    """A request let in: who sent it (None without auth), where it may go, what it was charged."""

    user: str | None
    route: Route
    cost: int
    usage: Usage | None = None  # the user's usage counters (pool.accounts), given the bytes relayed
    direct: bool = False  # a gateway rule sends it through no upstream

    def done(self, sent: int, received: int) -> None:
        """The request (or tunnel) ended having relayed these bytes: the user's usage counts them."""
        if self.usage is not None:
            self.usage.add_bytes(sent, received)
