"""Stage 1: is anything listening at the proxy's address?  The cheapest check, so it runs first.

Sets ``context.tcp_latency_ms`` (time to an established connection) for later stages and scoring.
"""

from __future__ import annotations

import asyncio
import time

from config import Settings
from plugins import CheckContext, CheckResult, Proxy

__all__ = ["TcpConnectChecker", "create_plugin"]


class TcpConnectChecker:
    name = "tcp_connect"
    stage = 1
    priority = 0

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def should_skip(self, proxy: Proxy) -> bool:
        return False

    async def check(self, proxy: Proxy, context: CheckContext) -> CheckResult:
        started = time.monotonic()
        try:  # asyncio.timeout, not wait_for: no task of its own per connect (most of a list is refused)
            async with asyncio.timeout(self.timeout):
                _, writer = await asyncio.open_connection(proxy.host, proxy.port)
        except TimeoutError:
            return CheckResult(False, f"connect timed out after {self.timeout:g}s")
        except ConnectionRefusedError:
            return CheckResult(False, "connection refused")
        except OSError as exc:
            return CheckResult(False, f"connect failed: {exc.strerror or exc}")
        latency = (time.monotonic() - started) * 1000
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            pass  # the verdict is in; a slow close changes nothing
        context.tcp_latency_ms = latency
        return CheckResult(True, f"connected in {latency:.0f} ms", latency_ms=latency)


def create_plugin(settings: Settings) -> TcpConnectChecker:
    return TcpConnectChecker(settings.checker.timeout)
