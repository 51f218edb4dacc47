"""Stage 3, optional: can the proxy reach the sites the user cares about?

GETs every ``checker.site_reach_targets`` URL through the proxy at once; passes when at least
``checker.site_reach_min`` of them are reached.  One rule for every protocol: a target is reached
when it answers with a status below 500 (a 403 from a site is an answer: the proxy reached it);
anything else is "not reached", never an error of the check: a refusal, a close or a timeout,
whether the proxy reports it (HTTP 502/503/504, a SOCKS "connection refused by destination host")
or the connection just fails, and a 5xx.  Opts out when the list is empty.
"""

from __future__ import annotations

import asyncio
import ssl

from config import Settings
from config.tls import upstream_tls_context
from plugins import CheckContext, CheckResult, Proxy

from ._through import NETWORK_ERRORS, Through, describe_failure

__all__ = ["SiteReachChecker", "create_plugin"]


class SiteReachChecker:
    name = "site_reach"
    stage = 3
    priority = 10

    def __init__(
        self, targets: list[str], minimum: int, timeout: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self.timeout = timeout
        self.tls = tls  # for https:// proxies
        self.targets = list(targets)
        self.minimum = min(minimum, len(self.targets))

    def should_skip(self, proxy: Proxy) -> bool:
        return False

    async def _reach(self, via: Through, url: str) -> str | None:
        """None when ``url`` answered below 500, else why not."""
        try:
            reply = await via.get(url, timeout=self.timeout, read_body=False)
        except NETWORK_ERRORS as exc:
            return describe_failure(exc, self.timeout)
        return None if reply.status < 500 else f"answered {reply.status}"

    async def check(self, proxy: Proxy, context: CheckContext) -> CheckResult:
        async with Through(proxy, context.http_client, self.tls) as via:
            outcomes = await asyncio.gather(*(self._reach(via, url) for url in self.targets))
        failed = {url: why for url, why in zip(self.targets, outcomes, strict=True) if why is not None}
        reached = len(self.targets) - len(failed)
        detail = f"{reached}/{len(self.targets)} targets reached (need {self.minimum})"
        if failed:
            detail += "; " + "; ".join(f"{url}: {why}" for url, why in failed.items())
        return CheckResult(
            reached >= self.minimum,
            detail,
            metadata={"reached": reached, "failed": sorted(failed)},
        )


def create_plugin(settings: Settings) -> SiteReachChecker | None:
    targets = settings.checker.site_reach_targets
    if not targets:
        return None
    return SiteReachChecker(
        targets,
        settings.checker.site_reach_min,
        settings.checker.timeout,
        upstream_tls_context(settings.checker.upstream_tls_verify),
    )
