"""A contrib checker: keep only proxies that answered the judge within 2 seconds.

Copy this file into the contrib directory (``[plugins] contrib_dir``, default ``plugins/contrib/``;
``/app/plugins-contrib`` in the Docker image) and restart: ``proxy-pool plugins`` lists a checker
named ``max_latency`` at stage 3.

- Stage 3 runs after ``http_anonymity`` (stage 2) has measured ``context.http_latency_ms``, so this
  checker costs nothing: it reads a figure and gives a verdict.
- ``CheckResult(False, ...)`` makes the proxy dead with that detail; ``skipped=True`` gives no verdict
  (the proxy keeps its status), which is right when there is nothing to judge by.
- An exception here would be this plugin's bug, never a verdict on the proxy: the pipeline logs it
  once and counts it in ``proxy_pool_plugin_errors_total``.
"""

from __future__ import annotations

from config import Settings
from plugins import CheckContext, CheckResult, Proxy

__all__ = ["MaxLatencyChecker", "create_plugin"]

LIMIT_MS = 2000.0


class MaxLatencyChecker:
    """Matches the ``ProxyChecker`` protocol by shape; it inherits nothing."""

    name = "max_latency"
    stage = 3
    priority = 50  # within a stage, lower runs first; every checker of a stage runs together anyway
    timeout = 1.0

    def __init__(self, limit_ms: float = LIMIT_MS) -> None:
        self.limit_ms = limit_ms

    def should_skip(self, proxy: Proxy) -> bool:
        return False

    async def check(self, proxy: Proxy, context: CheckContext) -> CheckResult:
        latency = context.http_latency_ms
        if latency is None:
            return CheckResult(True, "no judge latency measured: not judged", skipped=True)
        if latency > self.limit_ms:
            return CheckResult(
                False, f"too slow: {latency:.0f} ms to the judge (limit {self.limit_ms:.0f} ms)"
            )
        return CheckResult(True, f"{latency:.0f} ms to the judge", latency_ms=latency)


def create_plugin(settings: Settings) -> MaxLatencyChecker:
    """Called once at start-up with the validated settings; return None to stay off."""
    return MaxLatencyChecker(min(LIMIT_MS, settings.checker.timeout * 1000))
