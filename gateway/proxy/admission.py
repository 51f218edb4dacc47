"""Step 3 of a request, admit: is the target allowed, who is asking, and can they pay.

Runs once per request before anything is dialed, for HTTP requests and CONNECT alike.  A no is a
``Refusal`` carrying its status; a yes is an ``Admission`` the later steps carry along (the route to
pick by, and the charge to refund when the failure is our own).
"""

from __future__ import annotations

import ipaddress

from config import Settings
from gateway.proxy import http1
from gateway.proxy.errors import BadRequest
from gateway.proxy.loops import OwnAddresses
from gateway.proxy.refusals import AUTH_REALM, Admission, NeedsVerification, Refusal
from gateway.proxy.routing import Credentials, RouteError, parse_proxy_authorization, route_for
from gateway.proxy.targets import canonical_host
from pool.selector import Route

__all__ = ["ANY_ROUTE", "Accounts", "Admitter"]

ANY_ROUTE = Route()
_ANYONE_ANYWHERE = Admission(None, ANY_ROUTE, 0)  # the admission of every request without auth or routing


class Accounts:  # the shape the gateway needs from pool.accounts (structural)
    def check_cached(self, username: str, password: str) -> str | None: ...
    async def verify(self, username: str, password: str, client: str = "") -> str | None: ...
    def charge(self, user: str, cost: int) -> bool: ...
    def refund(self, user: str, cost: int) -> None: ...


class Admitter:
    """Target checks, authentication and the charge, from the settings (no I/O)."""

    def __init__(self, settings: Settings, accounts: Accounts | None, own: OwnAddresses) -> None:
        self.settings = settings
        self.gw = settings.gateway
        self.accounts = accounts if self.gw.auth == "users" else None
        self.own = own
        self._allowed_ports = None if self.gw.allowed_connect_ports == "*" else frozenset(self.gw.allowed_connect_ports)
        self.direct_allow = [ipaddress.ip_network(n, strict=False) for n in self.gw.direct_allow]

    def admit(
        self, head: http1.RequestHead, verified: str | None = None, credentials: Credentials | None = None
    ) -> Admission:
        """Check the target, authenticate, and charge: once per request, before any dialing.

        Raises ``NeedsVerification`` for credentials the accounts have not verified yet: then
        ``admit_slow`` does the slow check without blocking the loop.  ``credentials``: a SOCKS
        client's (its head is the CONNECT an HTTP client would have sent, ``gateway.proxy.socksproto``)."""
        self._check_target(head)
        user, route = self._authorize(head, verified, credentials)
        if user is None and route is ANY_ROUTE:
            return _ANYONE_ANYWHERE
        cost = self.settings.credits.cost_per_request if user is not None else 0
        if user is not None and cost and not self.accounts.charge(user, cost):  # type: ignore[union-attr]
            raise Refusal(402, "credits exhausted: ask the operator for a top-up", "payment_required")
        return Admission(user, route, cost)

    async def admit_slow(self, head: http1.RequestHead, peer: str) -> Admission:
        """``admit``, awaiting the slow password check (a worker thread) on a cache miss; failures are
        throttled per client address (``peer`` is ``host:port``)."""
        try:
            return self.admit(head)
        except NeedsVerification as need:
            assert self.accounts is not None
            user = await self.accounts.verify(need.name, need.password, client=peer.rpartition(":")[0])
        if user is None:
            raise Refusal(407, "proxy authentication failed", "auth_required", AUTH_REALM)
        return self.admit(head, verified=user)

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
        if head.is_connect and self._allowed_ports is not None and head.port not in self._allowed_ports:
            raise Refusal(403, f"CONNECT to port {head.port} is not allowed", "forbidden")
        if head.port in self.own.ports and self.own.loops(head.host, head.port):
            raise Refusal(403, "request loops back to the gateway itself", "forbidden")

    def _authorize(
        self, head: http1.RequestHead, verified: str | None = None, credentials: Credentials | None = None
    ) -> tuple[str | None, Route]:
        if head.proxy_authorization is None and credentials is None and not head.pool_params and self.gw.auth == "none":
            return None, ANY_ROUTE  # the common case: nothing asked, nothing to check
        creds = credentials or parse_proxy_authorization(head.proxy_authorization)
        if self.gw.auth == "users":
            if creds is None:
                raise Refusal(407, "proxy authentication required", "auth_required", AUTH_REALM)
            assert self.accounts is not None
            # who first (407 for strangers, whatever they ask), then what they ask (400 naming the part)
            name = creds.username.split("-", 1)[0]
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
