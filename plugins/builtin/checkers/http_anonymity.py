"""Stage 2: fetch a judge through the proxy and grade what the judge saw.

Judges come from ``context.judges`` (else ``checker.judges``) and are taken in turn across calls.
Before a judge is used it is called directly (no proxy); that call proves the judge is up and tells
the host's own address, which a transparent proxy would leak.  The verdict is cached
(``judge_ttl``), so a batch of checks costs one direct call per judge.

Whose fault is a failure?  When the request through the proxy fails, the judge is re-verified
(unless it was verified moments ago): a judge that still answers directly means the proxy failed;
a judge that does not is marked unhealthy for ``judge_retry_after`` and the next one is tried.  The
blame follows what the judge itself answers, never the clock: requests through the proxy end a
quarter of ``timeout`` before the check's deadline, so that re-verification always has that
quarter of its own (a proxy that ate the whole budget once left it nothing, and the judge that
could not answer in no time was blamed, or was not asked at all).
When no judge is healthy the check is *skipped* (no verdict), so a judge outage never kills proxies.

Every request carries a fresh token (``_judge``); an answer through the proxy without it is not the
judge's and fails the check.  An HTTP(S) proxy is asked both ways the gateway will use it: in the
absolute form and, when it opens CONNECT tunnels, with plain HTTP inside a tunnel; it is graded by
the worse of the two (a proxy honest only where a checker looks is not honest).  With two or more judges, a second one is asked as well and must see
the same exit address (a proxy that makes answers up cannot keep two judges' stories straight).

Fills ``context.exit_ip``, ``anonymity_level``, ``headers_forwarded``, ``http_latency_ms`` and,
when unset, ``real_ip``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import ssl
import time
from collections.abc import Collection
from dataclasses import dataclass

import aiohttp

from config import Settings
from config.tls import upstream_tls_context
from plugins import AnonymityLevel, CheckContext, CheckResult, Proxy

from ._judge import (
    TOKEN_HEADER,
    JudgeFormatError,
    JudgeReply,
    echoes_token,
    grade,
    new_token,
    parse_judge_reply,
    reported_addresses,
    with_token,
)
from ._through import NETWORK_ERRORS, Through, describe_failure, tunnel_refused

__all__ = ["HttpAnonymityChecker", "JudgeHealth", "create_plugin"]

log = logging.getLogger("proxy_pool.checkers.http_anonymity")

# A judge call that went wrong, through a proxy or not: the network, or an answer of neither format.
_JUDGE_ERRORS: tuple[type[Exception], ...] = (*NETWORK_ERRORS, JudgeFormatError)


@dataclass
class _JudgeState:
    healthy: bool
    at: float  # monotonic time of the last direct call
    origin: list[str]  # our own address(es) as this judge saw them
    reason: str = ""


class JudgeHealth:
    """What the last direct call to each judge showed; clock is ``time.monotonic``."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self._state: dict[str, _JudgeState] = {}

    def is_down(self, judge: str) -> bool:
        state = self._state.get(judge)
        return state is not None and not state.healthy and time.monotonic() - state.at < self.retry_after

    def verified_within(self, judge: str, seconds: float) -> bool:
        state = self._state.get(judge)
        return state is not None and state.healthy and time.monotonic() - state.at < seconds

    def mark_up(self, judge: str, reply: JudgeReply) -> None:
        previous = self._state.get(judge)
        if previous is not None and not previous.healthy:
            log.info("judge %s answers again", judge)
        self._state[judge] = _JudgeState(True, time.monotonic(), list(reply.origin))

    def mark_down(self, judge: str, reason: str) -> None:
        previous = self._state.get(judge)
        if previous is None or previous.healthy:
            log.warning("judge %s is unhealthy (%s); skipped for %gs", judge, reason, self.retry_after)
        origin = previous.origin if previous else []
        self._state[judge] = _JudgeState(False, time.monotonic(), origin, reason)

    def own_addresses(self) -> set[str]:
        """Every address any judge reported for our direct calls."""
        return {ip for state in self._state.values() for ip in state.origin}

    def origin_seen_by(self, judge: str) -> str | None:
        state = self._state.get(judge)
        return state.origin[-1] if state and state.origin else None


class HttpAnonymityChecker:
    name = "http_anonymity"
    stage = 2
    priority = 0
    judge_ttl = 30.0  # a direct "judge is up" verdict is trusted this long
    reprobe_after = 5.0  # after a failure through a proxy, re-verify a judge last seen longer ago
    judge_retry_after = 60.0  # an unhealthy judge is left alone this long
    judge_share = 0.25  # of ``timeout``, kept for re-verifying the judge after a failure through the proxy

    def __init__(self, timeout: float, judges: list[str], tls: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self.tls = tls  # for https:// proxies
        self._judges = list(judges)
        self._turn = itertools.count()
        self.health = JudgeHealth(self.judge_retry_after)
        self._locks: dict[str, asyncio.Lock] = {}
        self._locks_loop: asyncio.AbstractEventLoop | None = None

    def should_skip(self, proxy: Proxy) -> bool:
        return False

    def _lock(self, judge: str) -> asyncio.Lock:
        """One lock per judge and event loop, so concurrent checks share one direct call."""
        loop = asyncio.get_running_loop()
        if loop is not self._locks_loop:
            self._locks, self._locks_loop = {}, loop
        return self._locks.setdefault(judge, asyncio.Lock())

    async def judge_is_up(
        self, judge: str, client: aiohttp.ClientSession, timeout: float, max_age: float
    ) -> bool:
        """True when ``judge`` answered a direct call in the last ``max_age`` seconds (calling it if needed).

        The direct call carries a token too: a judge that does not echo it could never vouch for a
        proxy, so it counts as down (no proxy is failed for it)."""
        async with self._lock(judge):
            if self.health.verified_within(judge, max_age):
                return True
            if self.health.is_down(judge):
                return False
            token = new_token()
            try:
                async with client.get(
                    with_token(judge, token),
                    headers={TOKEN_HEADER: token},
                    timeout=aiohttp.ClientTimeout(total=max(timeout, 0.001)),
                    allow_redirects=False,
                ) as resp:
                    if resp.status != 200:
                        raise JudgeFormatError(f"answered {resp.status}")
                    reply = parse_judge_reply(await resp.content.read(256 * 1024))
                if not echoes_token(reply, token):
                    raise JudgeFormatError("does not echo the check token")
            except _JUDGE_ERRORS as exc:
                reason = str(exc) if isinstance(exc, JudgeFormatError) else describe_failure(exc, timeout)
                self.health.mark_down(judge, reason)
                return False
            self.health.mark_up(judge, reply)
            return True

    def _order(self, judges: list[str]) -> list[str]:
        start = next(self._turn) % len(judges)
        return judges[start:] + judges[:start]

    async def check(self, proxy: Proxy, context: CheckContext) -> CheckResult:
        judges = context.judges or self._judges
        if not judges:
            return CheckResult(False, "no judge configured", skipped=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        client = context.http_client
        first: tuple[str, JudgeReply, float] | None = None
        replies: list[JudgeReply] = []  # every answer the proxy carried: graded by the worst
        tunnels: bool | None = None
        async with (
            Through(proxy, client, self.tls) as via,
            Through(proxy, client, self.tls, tunnel=True) as inside,
        ):
            for judge in self._order(judges):
                remaining = deadline - self.timeout * self.judge_share - loop.time()  # the proxy's share
                if remaining <= 0:
                    break
                if self.health.is_down(judge):
                    continue
                if not await self.judge_is_up(judge, client, remaining / 2, self.judge_ttl):
                    continue
                answer = await self._ask(via, judge, client, deadline)
                if answer is None:
                    continue  # the judge, not the proxy: try the next one
                if isinstance(answer, CheckResult):
                    return answer
                if first is None and not proxy.protocol.is_socks:
                    # the gateway sends http:// targets inside a CONNECT tunnel when the proxy opens one:
                    # a proxy honest only in the absolute form (what a checker sends) must not pass
                    tunnelled = await self._ask(inside, judge, client, deadline)
                    if tunnelled is None:
                        continue
                    if isinstance(tunnelled, CheckResult):
                        return tunnelled
                    if tunnelled is not _REFUSED:
                        tunnels = True
                        replies.append(tunnelled[0])
                    else:
                        tunnels = False
                replies.append(answer[0])
                if first is None:
                    first = (judge, *answer)
                    if len(judges) > 1:
                        continue  # a second judge must see the same exit address
                    break
                own = self._own(first[0], context)
                disagreement = _disagreement(first[0], first[1], judge, answer[0], own)
                if disagreement is not None:
                    return disagreement
                return self._graded(first[0], replies, first[2], context, tunnels, agreed_by=judge)
        if first is not None:  # no second judge could answer: one is all we have
            return self._graded(first[0], replies, first[2], context, tunnels)
        return CheckResult(False, "no healthy judge", skipped=True)

    async def _ask(
        self, via: Through, judge: str, client: aiohttp.ClientSession, deadline: float
    ) -> tuple[JudgeReply, float] | CheckResult | _Refused | None:
        """One tokened request through the proxy: the reply, a failed check, ``_REFUSED`` (a tunnel the
        proxy will not open), or None (the judge's fault)."""
        loop = asyncio.get_running_loop()
        token = new_token()
        how = "through a CONNECT tunnel of the proxy" if via.tunnel else "through proxy"
        try:
            reply = await via.get(
                with_token(judge, token),
                timeout=deadline - self.timeout * self.judge_share - loop.time(),
                headers={TOKEN_HEADER: token},
            )
            if reply.status != 200:
                raise JudgeFormatError(f"answered {reply.status}")
            parsed = parse_judge_reply(reply.body)
        except _JUDGE_ERRORS as exc:
            if via.tunnel and tunnel_refused(exc):
                return _REFUSED  # the gateway falls back to the absolute form for this proxy
            reason = str(exc) if isinstance(exc, JudgeFormatError) else describe_failure(exc, self.timeout)
            budget = max(deadline - loop.time(), self.timeout * self.judge_share)  # never the proxy's leftover
            if self.health.is_down(judge) or not await self.judge_is_up(judge, client, budget, self.reprobe_after):
                return None
            return CheckResult(False, f"{judge} {how}: {reason}", metadata={"judge": judge})
        if not echoes_token(parsed, token):
            return CheckResult(
                False,
                f"{judge} {how}: the answer does not echo the check token (not the judge's own answer)",
                metadata={"judge": judge},
            )
        return parsed, reply.elapsed_ms

    def _own(self, judge: str, context: CheckContext) -> set[str]:
        """The checker's own addresses: every judge's view of our direct calls, and ``real_ip``."""
        if context.real_ip is None:
            context.real_ip = self.health.origin_seen_by(judge)
        real = self.health.own_addresses()
        if context.real_ip is not None:
            real.add(context.real_ip)
        return real

    def _graded(
        self,
        judge: str,
        replies: list[JudgeReply],
        elapsed_ms: float,
        context: CheckContext,
        tunnels: bool | None,
        agreed_by: str | None = None,
    ) -> CheckResult:
        """The worst of every answer the proxy carried (absolute form, CONNECT tunnel, second judge)."""
        real = self._own(judge, context)
        verdicts = [grade(reply, real) for reply in replies]
        level = min((v.level for v in verdicts), key=_RANK.__getitem__)
        exit_ip = next((v.exit_ip for v in verdicts if v.exit_ip not in real), verdicts[0].exit_ip)
        signs = list(dict.fromkeys(sign for v in verdicts for sign in v.signs))
        context.exit_ip = exit_ip
        context.anonymity_level = level
        context.headers_forwarded = signs
        context.http_latency_ms = elapsed_ms
        detail = f"{level} via {judge}, exit {exit_ip}"
        if signs:
            detail += f", reveals {', '.join(signs)}"
        if tunnels and len({v.level for v in verdicts}) > 1:
            detail += " (the worst of the absolute form and a CONNECT tunnel)"
        return CheckResult(
            True,
            detail,
            latency_ms=elapsed_ms,
            metadata={
                "judge": judge,
                "exit_ip": exit_ip,
                "anonymity": level.value,
                "headers_forwarded": signs,
                "agreed_by": agreed_by,
                "tunnel_checked": tunnels,
            },
        )


class _Refused:
    """The proxy refused to open a CONNECT tunnel (``_ask``)."""


_REFUSED = _Refused()
_RANK = {AnonymityLevel.TRANSPARENT: 0, AnonymityLevel.ANONYMOUS: 1, AnonymityLevel.ELITE: 2}


def _disagreement(
    judge_a: str, reply_a: JudgeReply, judge_b: str, reply_b: JudgeReply, real: Collection[str] = ()
) -> CheckResult | None:
    """A failed check when two judges saw different exit addresses of one family and one reach. Not
    a lie: a dual-stack proxy reaching one judge over IPv4 and the other over IPv6, or a local proxy
    that our own judge sees at its loopback or LAN address and a public judge at the site's public
    one.  Nor an address that is one of the checker's own (a judge that reports a forwarding header
    as its peer shows the client a transparent proxy forwarded: the transparent sign, not an exit)
    or that the other judge saw in a forwarding header."""
    a = ipaddress.ip_address(grade(reply_a, real).exit_ip)
    b = ipaddress.ip_address(grade(reply_b, real).exit_ip)
    if a == b or a.version != b.version or a.is_global != b.is_global:
        return None
    if {str(a), str(b)} & set(real):
        return None  # one judge reported a forwarded address of ours: the transparent sign
    if str(a) in reported_addresses(reply_b) or str(b) in reported_addresses(reply_a):
        return None
    return CheckResult(
        False,
        f"exit address disagrees: {judge_a} saw {a}, {judge_b} saw {b}",
        metadata={"judge": judge_a, "exit_ips": [str(a), str(b)]},
    )


def create_plugin(settings: Settings) -> HttpAnonymityChecker:
    return HttpAnonymityChecker(
        settings.checker.timeout, list(settings.checker.judges), upstream_tls_context(settings.checker.upstream_tls_verify)
    )
