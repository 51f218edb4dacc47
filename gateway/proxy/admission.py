"""Step 3 of a request, admit: is the target allowed, who is asking, within their limits, and can they pay.

Runs once per request before anything is dialed, for HTTP requests and CONNECT alike.  A no is a
``Refusal`` carrying its status; a yes is an ``Admission`` the later steps carry along (the route to
pick by, and the charge to refund when the failure is our own).  A user over a per-user limit gets 429
with ``Retry-After``; one whose credits are leased to other replicas is awaited like a password check
(``NeedsLease``, bounded by ``credits.lease_wait``), so only a user with no credits left gets 402.
"""

from __future__ import annotations

import ipaddress

from config import Settings
from config.settings import port_ranges
from gateway.proxy import http1
from gateway.proxy.errors import BadRequest
from gateway.proxy.loops import OwnAddresses
from gateway.proxy.refusals import AUTH_REALM, Admission, NeedsLease, NeedsVerification, Refusal
from gateway.proxy.routing import Credentials, RouteError, parse_proxy_authorization, route_for, user_name
from gateway.proxy.rules import HostRules
from gateway.proxy.targets import canonical_host
from pool.accounts import CreditsExhausted, LeaseMissing, LimitReached, Usage
from pool.selector import Route

__all__ = ["ANY_ROUTE", "Accounts", "Admitter"]

ANY_ROUTE = Route()
_ANYONE_ANYWHERE = Admission(None, ANY_ROUTE, 0)  # the admission of every request without auth or routing


class Accounts:  # the shape the gateway needs from pool.accounts (structural)
    db_ok: bool

    def check_cached(self, username: str, password: str) -> str | None: ...
    async def verify(self, username: str, password: str, client: str = "") -> str | None: ...
    def admit(self, user: str, cost: int, tunnel: bool, conn: object | None = None) -> Usage: ...
    async def wait_lease(self, user: str, timeout: float) -> None: ...
    def release(self, conn: object) -> None: ...
    def charge(self, user: str, cost: int) -> bool: ...
    def refund(self, user: str, cost: int) -> None: ...


class Admitter:
    """Target checks, authentication and the charge, from the settings (no I/O)."""

    def __init__(self, settings: Settings, accounts: Accounts | None, own: OwnAddresses) -> None:
        self.settings = settings
        self.gw = settings.gateway
        self.accounts = accounts if self.gw.auth == "users" else None
        self._open = self.gw.auth == "none"  # no credentials asked for
        self.own = own
        self._connect_ports = _PortRule(self.gw.allowed_connect_ports, "CONNECT")
        self._http_ports = _PortRule(self.gw.allowed_http_ports, "plain HTTP")
        self.direct_allow = [ipaddress.ip_network(n, strict=False) for n in self.gw.direct_allow]
        self.rules = HostRules(self.gw.rules)

    def admit(
        self,
        head: http1.RequestHead,
        verified: str | None = None,
        credentials: Credentials | None = None,
        conn: object | None = None,
    ) -> Admission:
        """Check the target, authenticate, per-user limits, and charge: once per request, before any dialing.

        Raises ``NeedsVerification`` for credentials the accounts have not verified yet (or its
        ``NeedsLease`` for credits not leased here yet): then ``admit_slow`` awaits without blocking
        the loop.  ``credentials``: a SOCKS client's (its head is the CONNECT an HTTP client would
        have sent, ``gateway.proxy.socksproto``).  ``conn``: the client connection, for the per-user
        connection limit (``release`` frees its slot when it ends)."""
        self._check_target(head)
        if self.rules:
            rule = self.rules.rule_for(head.host)
            if rule is not None:
                if rule.action == "refuse":
                    raise HostRules.refuse(head.host)
                return HostRules.apply(rule, self._admit(head, verified, credentials, conn))
        return self._admit(head, verified, credentials, conn)

    def _admit(
        self,
        head: http1.RequestHead,
        verified: str | None,
        credentials: Credentials | None,
        conn: object | None,
    ) -> Admission:
        if head.proxy_authorization is None and credentials is None and not head.pool_params and self._open:
            return _ANYONE_ANYWHERE  # the common case: nothing asked, nothing to check
        user, route = self._authorize(head, verified, credentials)
        if user is None:
            return _ANYONE_ANYWHERE if route is ANY_ROUTE else Admission(None, route, 0)
        cost = self.settings.credits.cost_per_request
        try:
            usage = self.accounts.admit(user, cost, head.is_connect, conn)  # type: ignore[union-attr]
        except LimitReached as exc:
            raise Refusal(429, exc.message, "rate_limited", [("Retry-After", str(exc.retry_after))]) from None
        except CreditsExhausted:
            raise Refusal(402, "credits exhausted: ask the operator for a top-up", "payment_required") from None
        except LeaseMissing:
            raise NeedsLease(user) from None
        except LookupError:  # disabled or removed since its password was checked
            raise Refusal(407, "proxy authentication failed", "auth_required", AUTH_REALM) from None
        return Admission(user, route, cost, usage)

    async def admit_slow(
        self,
        head: http1.RequestHead,
        peer: str,
        verified: str | None = None,
        credentials: Credentials | None = None,
        conn: object | None = None,
    ) -> Admission:
        """``admit``, awaiting what it cannot decide at once: the slow password check (a worker thread)
        on a cache miss, failures throttled per client address (``peer`` is ``host:port``); a lease of
        the user's credits, taken in the background (at most ``credits.lease_wait``)."""
        try:
            return self.admit(head, verified, credentials, conn)
        except NeedsLease as need:
            user: str | None = need.user
        except NeedsVerification as need:
            assert self.accounts is not None
            user = await self.accounts.verify(need.name, need.password, client=peer.rpartition(":")[0])
            if user is None:
                raise Refusal(407, "proxy authentication failed", "auth_required", AUTH_REALM) from None
            try:
                return self.admit(head, user, credentials, conn)
            except NeedsLease:
                pass
        assert self.accounts is not None and user is not None
        await self.accounts.wait_lease(user, self.settings.credits.lease_wait)
        try:
            return self.admit(head, user, credentials, conn)
        except NeedsLease:
            if not self.accounts.db_ok:
                raise Refusal(
                    503, "credits database unreachable: try again shortly", "credits_unavailable"
                ) from None
            raise Refusal(
                402, "credits exhausted on this gateway (the rest are in use on other gateways)", "payment_required"
            ) from None

    def release(self, conn: object) -> None:
        """A client connection ended: the per-user connection slot it held is free."""
        if self.accounts is not None:
            self.accounts.release(conn)

    def undo(self, admission: Admission, conn: object) -> None:
        """The client left while its request was being admitted (a password check, a lease wait): its
        charge goes back, and the connection slot the admission took for it is free again."""
        if admission.user is not None and admission.cost:
            self.accounts.refund(admission.user, admission.cost)  # type: ignore[union-attr]
        self.release(conn)

    def refund(self, admission: Admission) -> None:
        """Its charge back (an intercepted CONNECT: the requests inside it are charged one by one)."""
        if admission.user is not None and admission.cost and self.accounts is not None:
            self.accounts.refund(admission.user, admission.cost)

    def refund_own_failure(self, admission: Admission, refusal: Refusal) -> None:
        """Our own 5xx (no proxy, every attempt failed) costs the user nothing, when so configured."""
        if (
            admission.user is not None
            and admission.cost
            and refusal.status >= 500
            and self.settings.credits.refund_gateway_failures
        ):
            self.accounts.refund(admission.user, admission.cost)  # type: ignore[union-attr]

    def direct_allowed(self, address: str) -> bool:
        """The ``fallback = "direct"`` rule: never to loopback, link-local or private targets unless allowed."""
        ip = ipaddress.ip_address(address)
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            return any(ip in net for net in self.direct_allow)
        return True

    def _check_target(self, head: http1.RequestHead) -> None:
        """The target in its canonical form (what the upstream is sent, too), then the port and loop rules."""
        try:
            host = canonical_host(head.host)
        except BadRequest as exc:
            raise Refusal(400, exc.message, "bad_request") from None
        if host != head.host:
            head.host, head.origin_form = host, None  # the client's spelling goes nowhere
        rule = self._connect_ports if head.is_connect else self._http_ports
        if rule.ports is not None and head.port not in rule.ports:  # the set settles the common ports
            rule.check(head.port)
        if head.port in self.own.ports and self.own.loops(head.host, head.port):
            raise Refusal(403, "request loops back to the gateway itself", "forbidden")

    def _authorize(
        self, head: http1.RequestHead, verified: str | None = None, credentials: Credentials | None = None
    ) -> tuple[str | None, Route]:
        creds = credentials or parse_proxy_authorization(head.proxy_authorization)
        if self.gw.auth == "users":
            if creds is None:
                raise Refusal(407, "proxy authentication required", "auth_required", AUTH_REALM)
            assert self.accounts is not None
            # who first (407 for strangers, whatever they ask), then what they ask (400 naming the part)
            name = user_name(creds.username)
            user = verified if verified == name else self.accounts.check_cached(name, creds.password)
            if user is None:
                raise NeedsVerification(name, creds.password)
            try:
                _, route = route_for(creds.username, head.pool_params, with_name=True)
            except RouteError as exc:
                raise Refusal(400, exc.message, "bad_request") from None
            return user, route
        try:
            _, route = route_for(creds.username if creds else None, head.pool_params, with_name=False)
        except RouteError as exc:
            raise Refusal(400, exc.message, "bad_request") from None
        return None, route


class _PortRule:
    """The one port rule, for CONNECT (and SOCKS: ``allowed_connect_ports``) and for plain HTTP
    (``allowed_http_ports``): a port outside the list gets 403 before anything is dialed, so an upstream
    never carries HTTP lines to a mail or database server's port."""

    __slots__ = ("_ranges", "_what", "ports")

    def __init__(self, allowed: list[int] | list[int | str] | str, what: str) -> None:
        self._what = what
        ranges = None if allowed == "*" else port_ranges(list(allowed))
        # single ports in a set (the common lists; None: every port), wide ranges compared
        self.ports = None if ranges is None else frozenset(low for low, high in ranges if low == high)
        self._ranges = () if ranges is None else tuple(r for r in ranges if r[0] != r[1])

    def check(self, port: int) -> None:
        if self.ports is None or port in self.ports:
            return
        for low, high in self._ranges:
            if low <= port <= high:
                return
        raise Refusal(403, f"{self._what} to port {port} is not allowed", "forbidden")
