"""The last step of a request, account: metrics, the access log line, and passive health.

Every request ends here once, whatever served it or refused it: ``request_done`` counts it (and logs
it when ``log.access_log`` is on), ``report`` tells the selector how an upstream did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.proxy.upstream import UpstreamError
from pool.models import Proxy
from pool.selector import Selector

__all__ = ["Accounting"]

access_log = logging.getLogger("proxy_pool.access")


class Accounting:
    def __init__(self, selector: Selector, metrics: object | None, access: bool) -> None:
        self.selector = selector
        self.metrics = metrics
        self.access = access
        self.on_bytes: Callable[[str, int], None] | None = getattr(metrics, "bytes", None)
        self._request_done: Callable[[str, str, float], None] | None = getattr(metrics, "request_done", None)
        # the hot path calls the metrics' own methods, bound once (one Python call per request, not two):
        # count(method, outcome, seconds, protocol=None) is request_done without the access log's details
        # (when it is off); bytes(direction, n) counts relayed bytes (the metrics ignore n == 0)
        self.count: Callable[..., None] = self._request_done or _ignore
        self.bytes: Callable[[str, int], None] = self.on_bytes or _ignore

    def request_done(
        self,
        method: str,
        outcome: str,
        seconds: float,
        *,
        peer: str = "?",
        user: str | None = None,
        host: str = "-",
        status: int = 0,
        upstream: Proxy | None = None,
        sent: int = 0,
        received: int = 0,
        protocol: str | None = None,
    ) -> None:
        """One request finished: counted, and logged with who, what, where and how much.
        ``protocol``: a SOCKS client's (``socks5``, ``socks4``); HTTP clients leave it to the method."""
        if self._request_done is not None:
            if protocol is None:
                self._request_done(method, outcome, seconds)
            else:
                self._request_done(method, outcome, seconds, protocol)  # type: ignore[call-arg]
        if self.access:
            access_log.info(
                "%s %s %s %s %s %s upstream=%s up=%d down=%d %.1fms",
                peer,
                user or "-",
                method if protocol is None else f"{protocol.upper()}-{method}",
                host or "-",
                status or "-",
                outcome,
                upstream.id if upstream is not None else "direct" if outcome == "ok" else "-",
                sent,
                received,
                seconds * 1000,
            )

    def report(self, proxy: Proxy | None, ok: bool, exc: UpstreamError | None = None) -> None:
        """Passive health: the upstream's own failure, or (``exc.target``) one about that target;
        metrics count every failure.  A failure for want of local resources (``LocalShortage``) is no
        verdict on the upstream.  An upstream that refused a CONNECT (``exc.refuses_tunnel``) is not
        failing: it gets no tunnel again until its next check."""
        local = exc is not None and exc.reason == "local_resources"  # our own shortage: nobody's fault
        if proxy is not None and not local:
            if exc is not None and getattr(exc, "refuses_tunnel", False):
                self.selector.refused_tunnel(proxy)
            else:
                self.selector.report(proxy, ok, target=None if exc is None else exc.target)
        if exc is not None:
            self.failure(exc.reason)

    def hedged(self, won: bool) -> None:
        """A hedge was sent (``won=False``), or carried the answer (``won=True``)."""
        if self.metrics is not None:
            self.metrics.hedge(won)  # type: ignore[attr-defined]

    def failure(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.upstream_failure(reason)  # type: ignore[attr-defined]


def _ignore(*args: object) -> None:
    """No metrics: nothing to count."""
