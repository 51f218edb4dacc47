"""Stage 1, SOCKS4/5 only: a full handshake asking the proxy to connect to a real target.

A port that accepts TCP is not yet a SOCKS proxy; this proves it speaks the protocol, accepts our
credentials and can reach out.  The target is ``checker.tcp_target`` (``host:port``), else the
host and port of the first judge.  HTTP proxies are skipped.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError
from python_socks.async_.asyncio import Proxy as SocksClient

from config import Settings, parse_host_port
from plugins import CheckContext, CheckResult, Proxy

__all__ = ["SocksHandshakeChecker", "create_plugin", "target_from_url"]


def target_from_url(url: str) -> tuple[str, int]:
    """``http://judge:8080/get`` -> ``("judge", 8080)``; default ports 80/443."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


class SocksHandshakeChecker:
    name = "socks_handshake"
    stage = 1
    priority = 10

    def __init__(self, timeout: float, target: tuple[str, int] | None, judges: list[str]) -> None:
        self.timeout = timeout
        self._target = target
        self._judges = judges

    def should_skip(self, proxy: Proxy) -> bool:
        return not proxy.protocol.is_socks

    def _target_for(self, context: CheckContext) -> tuple[str, int] | None:
        if self._target is not None:
            return self._target
        for url in context.judges or self._judges:
            try:
                return target_from_url(url)
            except ValueError:
                continue
        return None

    async def check(self, proxy: Proxy, context: CheckContext) -> CheckResult:
        target = self._target_for(context)
        if target is None:
            return CheckResult(False, "no handshake target: set checker.tcp_target or a judge", skipped=True)
        host, port = target
        started = time.monotonic()
        try:
            sock = await SocksClient.from_url(proxy.url).connect(host, port, timeout=self.timeout)
        except ProxyTimeoutError:
            return CheckResult(False, f"handshake timed out after {self.timeout:g}s")
        except ProxyConnectionError as exc:
            return CheckResult(False, f"cannot connect to proxy: {_reason(exc)}")
        except ProxyError as exc:
            return CheckResult(False, f"{proxy.protocol} handshake to {host}:{port} refused: {exc}")
        except OSError as exc:  # e.g. the proxy closed mid-handshake
            return CheckResult(False, f"handshake failed: {_reason(exc)}")
        latency = (time.monotonic() - started) * 1000
        sock.close()
        return CheckResult(
            True,
            f"{proxy.protocol} handshake to {host}:{port} in {latency:.0f} ms",
            latency_ms=latency,
            metadata={"target": f"{host}:{port}"},
        )


def _reason(exc: OSError) -> str:
    cause = exc.__cause__
    if isinstance(cause, ConnectionRefusedError) or isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


def create_plugin(settings: Settings) -> SocksHandshakeChecker:
    target = parse_host_port(settings.checker.tcp_target) if settings.checker.tcp_target else None
    return SocksHandshakeChecker(settings.checker.timeout, target, list(settings.checker.judges))
