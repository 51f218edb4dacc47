"""Stage 3: does the proxy hand back a page exactly as the site sent it?

A page of known content is fetched through the proxy each way the gateway uses it (the absolute form,
and plain HTTP inside a CONNECT tunnel when an HTTP(S) proxy opens one) and compared byte for byte
with the copy the checker knows; either leg altering it fails the check.  A proxy that appends a
script, an advertisement or a tracking pixel alters content: the check fails and the proxy is dead.

Pages, first usable wins: ``/judge/page`` of every proxy-pool judge in ``context.judges`` (a judge
URL ending in ``/judge``; its content is ``plugins.JUDGE_PAGE``), then ``checker.integrity_pages``
(static pages, e.g. ``http://httpbin.org/html``, whose content is learned by a direct fetch).  Like
a judge, a page is first fetched directly (cached ``page_ttl``): one that does not answer, or whose
judge page is not the known one, is skipped, and a failure through the proxy is re-checked directly
before it is blamed on the proxy.  A 200 with other bytes is an alteration.  The project's own judge
page refuses no exit, so any other status for it through the proxy fails the check (a proxy that
will not fetch it has not shown it is honest); for a configured static page a 403 or 503 through
the proxy is the site refusing that exit (httpbin rate-limits), and the next page is tried.  With
no usable page the check passes with "not checked".  Cost:
one request through the proxy per check, two for an HTTP(S) proxy that opens tunnels.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from config import Settings
from config.tls import upstream_tls_context
from plugins import JUDGE_PAGE, CheckContext, CheckResult, Proxy

from ._through import MAX_BODY, NETWORK_ERRORS, Through, describe_failure, tunnel_refused

__all__ = ["ContentIntegrityChecker", "create_plugin", "judge_pages"]


def judge_pages(judges: list[str]) -> list[str]:
    """``http://h:8898/judge`` -> ``http://h:8898/judge/page`` for every proxy-pool judge (http only)."""
    out = []
    for judge in judges:
        parts = urlsplit(judge)
        if parts.scheme == "http" and parts.path.rstrip("/").endswith("/judge"):
            out.append(f"http://{parts.netloc}{parts.path.rstrip('/')}/page")
    return out


@dataclass
class _Known:
    body: bytes | None  # None: the page could not be fetched directly
    at: float


class ContentIntegrityChecker:
    name = "content_integrity"
    stage = 3
    priority = 5
    page_ttl = 300.0  # a directly fetched copy is trusted this long
    reprobe_after = 5.0
    retry_after = 60.0  # a page that could not be fetched directly is left alone this long

    def __init__(self, timeout: float, pages: list[str], proxy_tls: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self.pages = list(pages)
        self._tls = proxy_tls
        self._known: dict[str, _Known] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._locks_loop: asyncio.AbstractEventLoop | None = None

    def should_skip(self, proxy: Proxy) -> bool:
        return False

    def _lock(self, page: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if loop is not self._locks_loop:
            self._locks, self._locks_loop = {}, loop
        return self._locks.setdefault(page, asyncio.Lock())

    async def reference(
        self, page: str, expected: bytes | None, client: aiohttp.ClientSession, timeout: float, max_age: float
    ) -> bytes | None:
        """The page as fetched directly (None when it cannot be, or is not ``expected``)."""
        async with self._lock(page):
            known = self._known.get(page)
            now = time.monotonic()
            if known is not None and known.body is not None and now - known.at < max_age:
                return known.body
            if known is not None and known.body is None and now - known.at < self.retry_after:
                return None
            body: bytes | None = None
            try:
                async with client.get(
                    page, timeout=aiohttp.ClientTimeout(total=max(timeout, 0.001)), allow_redirects=False
                ) as resp:
                    if resp.status == 200:
                        body = await resp.content.read(MAX_BODY)
            except NETWORK_ERRORS:
                body = None
            if body is not None and expected is not None and body != expected:
                body = None  # an old proxy-pool without the judge page, or not a proxy-pool at all
            self._known[page] = _Known(body, time.monotonic())
            return body

    async def check(self, proxy: Proxy, context: CheckContext) -> CheckResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        client = context.http_client
        own = judge_pages(context.judges)
        candidates = [(p, JUDGE_PAGE) for p in own] + [(p, None) for p in self.pages if p not in own]
        refused: list[str] = []
        async with (
            Through(proxy, client, self._tls) as via,
            Through(proxy, client, self._tls, tunnel=True) as inside,
        ):
            for page, expected in candidates:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                known = await self.reference(page, expected, client, remaining / 2, self.page_ttl)
                if known is None:
                    continue
                outcome: CheckResult | str | None = None
                for leg in (via, inside) if inside.tunnel else (via,):
                    fetched = await self._fetch(leg, page, known, expected is not None, client, deadline)
                    if isinstance(fetched, _NoTunnel):
                        break  # the gateway uses the absolute form for this proxy: already checked
                    outcome = fetched
                    if not (isinstance(outcome, CheckResult) and outcome.passed):
                        break  # altered, refused or unreachable: the other leg has nothing to add
                if outcome is None:
                    continue  # the page's fault, not the proxy's
                if isinstance(outcome, str):
                    refused.append(outcome)
                    continue
                return outcome
        if refused:
            return CheckResult(True, f"not checked: {'; '.join(refused)} through the proxy")
        return CheckResult(True, "not checked: no page of known content could be fetched directly")

    async def _fetch(
        self,
        via: Through,
        page: str,
        known: bytes,
        ours: bool,
        client: aiohttp.ClientSession,
        deadline: float,
    ) -> CheckResult | str | _NoTunnel | None:
        """The page through one leg (absolute form, or plain HTTP in a CONNECT tunnel): a verdict, a
        refusal to note (a status from a site that may rate-limit the exit), ``_NO_TUNNEL`` (the proxy
        opens no CONNECT tunnel), or None (the page's fault)."""
        loop = asyncio.get_running_loop()
        how = " inside a CONNECT tunnel" if via.tunnel else ""
        try:
            reply = await via.get(page, timeout=deadline - loop.time())
        except NETWORK_ERRORS as exc:
            if via.tunnel and tunnel_refused(exc):
                return _NO_TUNNEL
            left = deadline - loop.time()
            expected = JUDGE_PAGE if ours else None
            if left > 0 and await self.reference(page, expected, client, left, self.reprobe_after) is None:
                return None
            return CheckResult(False, f"{page} through proxy{how}: {describe_failure(exc, self.timeout)}")
        if reply.status != 200:
            if ours:  # our judge page refuses no exit: a proxy that will not fetch it has not shown it is honest
                return CheckResult(
                    False, f"refuses the judge page: {page} answered {reply.status} through the proxy{how}"
                )
            # a site refusing this exit (a rate limit, a ban), or the proxy: no content to judge
            return f"{page} answered {reply.status}"
        if reply.body == known:
            return CheckResult(
                True,
                f"content intact: {page} ({len(known)} bytes)",
                latency_ms=reply.elapsed_ms,
                metadata={"page": page, "sha256": hashlib.sha256(known).hexdigest()},
            )
        got = hashlib.sha256(reply.body).hexdigest()
        return CheckResult(
            False,
            f"alters content{how}: {page} came back with {len(reply.body)} bytes "
            f"(sha256 {got[:16]}), not the {len(known)} bytes sent "
            f"(sha256 {hashlib.sha256(known).hexdigest()[:16]})",
            metadata={"page": page, "sha256": got},
        )


class _NoTunnel:
    """The proxy opens no CONNECT tunnel (``_fetch``)."""


_NO_TUNNEL = _NoTunnel()


def create_plugin(settings: Settings) -> ContentIntegrityChecker:
    return ContentIntegrityChecker(
        settings.checker.timeout,
        list(settings.checker.integrity_pages),
        upstream_tls_context(settings.checker.upstream_tls_verify),
    )
