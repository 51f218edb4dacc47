"""Stage 1, ``https://`` proxies only: does the proxy speak TLS, with a certificate we trust?

A TLS proxy is reached over TLS for everything after this, so a port that answers the ClientHello with
plain HTTP (a proxy written ``https://`` by mistake), or one whose certificate fails
``checker.upstream_tls_verify``, fails here with a detail saying which.  Other protocols are skipped.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from config import Settings
from config.tls import handshake_failure, upstream_tls_context
from plugins import CheckContext, CheckResult, Proxy, ProxyProtocol

__all__ = ["TlsHandshakeChecker", "create_plugin"]


class TlsHandshakeChecker:
    name = "tls_handshake"
    stage = 1
    priority = 5

    def __init__(self, timeout: float, context: ssl.SSLContext) -> None:
        self.timeout = timeout
        self.context = context

    def should_skip(self, proxy: Proxy) -> bool:
        return proxy.protocol is not ProxyProtocol.HTTPS

    async def check(self, proxy: Proxy, context: CheckContext) -> CheckResult:
        started = time.monotonic()
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(proxy.host, proxy.port, ssl=self.context, server_hostname=proxy.host),
                self.timeout,
            )
        except TimeoutError:
            return CheckResult(
                False, f"TLS handshake with the proxy timed out after {self.timeout:g}s (it may not speak TLS)"
            )
        except ConnectionRefusedError:
            return CheckResult(False, "connection refused")
        except OSError as exc:  # ssl.SSLError included
            why = handshake_failure(exc) or exc.strerror or str(exc) or type(exc).__name__
            return CheckResult(False, f"TLS handshake with the proxy failed: {why}")
        latency = (time.monotonic() - started) * 1000
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (OSError, TimeoutError, ssl.SSLError):
            pass  # the verdict is in
        return CheckResult(True, f"{version} handshake with the proxy in {latency:.0f} ms", latency_ms=latency)


def create_plugin(settings: Settings) -> TlsHandshakeChecker:
    return TlsHandshakeChecker(settings.checker.timeout, upstream_tls_context(settings.checker.upstream_tls_verify))
