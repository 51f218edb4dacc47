"""Stage 3: CONNECT through the proxy to a TLS endpoint and verify the certificate met there.

Two questions, one tunnel:

- **Can it tunnel?**  A proxy that refuses CONNECT (an HTTP status, a SOCKS rejection, no answer) or
  whose tunnel carries no TLS is a capability, not a death: ``context.tunnels = False``, the check
  passes, and the gateway gives it plain HTTP only.  A working tunnel sets ``tunnels = True``.
- **Is it honest?**  A tunnel that reaches a certificate the endpoint does not have is a man in the
  middle reading TLS traffic: the check fails and the proxy is dead.

Endpoints, first usable wins: ``context.tls_endpoints`` (the pipeline gives proxies on loopback the
checker's own TLS judge, whose self-signed certificate it pins), then the HTTPS form of each judge
(``https://HOST:443`` for ``http://HOST/...``; an ``https://`` judge as written), verified against the
system's CAs.  Like a judge, an endpoint is first reached directly: one that cannot be is skipped
(cached ``endpoint_ttl``), and a failure through the proxy is re-checked directly before it is blamed
on the proxy.  With no usable endpoint the check passes with "not checked" and ``tunnels`` stays
unknown.  Cost: one CONNECT and one TLS handshake per check.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio import Proxy as SocksClient

from config import Settings
from config.tls import upstream_tls_context
from plugins import CheckContext, CheckResult, Proxy, ProxyProtocol, TlsEndpoint

__all__ = ["TlsTunnelChecker", "create_plugin", "https_form"]

_BROKEN_TUNNEL = (ssl.SSLError, ConnectionError, OSError, TimeoutError, asyncio.IncompleteReadError, EOFError)


def https_form(judge: str, system: ssl.SSLContext) -> TlsEndpoint | None:
    """The judge's host over HTTPS (port 443 unless the judge is https:// with its own port)."""
    parts = urlsplit(judge)
    if not parts.hostname:
        return None
    port = (parts.port or 443) if parts.scheme == "https" else 443
    return TlsEndpoint(parts.hostname, port, system, parts.hostname, f"{parts.hostname}:{port}")


@dataclass
class _Seen:
    usable: bool
    at: float


class TlsTunnelChecker:
    name = "tls_tunnel"
    stage = 3
    priority = 20
    endpoint_ttl = 30.0  # a direct "endpoint works" is trusted this long
    reprobe_after = 5.0  # after a failure through a proxy, re-verify an endpoint last seen longer ago
    retry_after = 60.0  # an endpoint that could not be reached directly is left alone this long

    def __init__(self, timeout: float, judges: list[str], proxy_tls: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self._judges = list(judges)
        self._proxy_tls = proxy_tls or ssl.create_default_context()  # TLS to an https:// proxy itself
        self._system = ssl.create_default_context()
        self._seen: dict[tuple[str, int, str], _Seen] = {}
        self._locks: dict[tuple[str, int, str], asyncio.Lock] = {}
        self._locks_loop: asyncio.AbstractEventLoop | None = None

    def should_skip(self, proxy: Proxy) -> bool:
        return False

    def endpoints(self, context: CheckContext) -> list[TlsEndpoint]:
        out = list(context.tls_endpoints)
        for judge in context.judges or self._judges:
            endpoint = https_form(judge, self._system)
            if endpoint is not None and all((e.host, e.port) != (endpoint.host, endpoint.port) for e in out):
                out.append(endpoint)
        return out

    def _lock(self, key: tuple[str, int, str]) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if loop is not self._locks_loop:
            self._locks, self._locks_loop = {}, loop
        return self._locks.setdefault(key, asyncio.Lock())

    async def endpoint_works(self, endpoint: TlsEndpoint, timeout: float, max_age: float) -> bool:
        """True when a direct TLS handshake with ``endpoint`` verified in the last ``max_age`` seconds."""
        key = (endpoint.host, endpoint.port, endpoint.server_hostname)
        async with self._lock(key):
            seen = self._seen.get(key)
            now = time.monotonic()
            if seen is not None and seen.usable and now - seen.at < max_age:
                return True
            if seen is not None and not seen.usable and now - seen.at < self.retry_after:
                return False
            try:
                async with asyncio.timeout(max(timeout, 0.001)):
                    _, writer = await asyncio.open_connection(
                        endpoint.host, endpoint.port, ssl=endpoint.ssl, server_hostname=endpoint.server_hostname
                    )
                writer.close()
                usable = True
            except (*_BROKEN_TUNNEL, ValueError):
                usable = False
            self._seen[key] = _Seen(usable, time.monotonic())
            return usable

    async def check(self, proxy: Proxy, context: CheckContext) -> CheckResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        for endpoint in self.endpoints(context):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if not await self.endpoint_works(endpoint, remaining / 2, self.endpoint_ttl):
                continue
            result = await self._through(proxy, endpoint, deadline)
            if result is None:
                continue  # the endpoint failed, not the proxy
            context.tunnels = result.metadata.get("tunnels")
            return result
        return CheckResult(True, "not checked: no TLS endpoint could be reached directly", metadata={"tunnels": None})

    async def _through(self, proxy: Proxy, endpoint: TlsEndpoint, deadline: float) -> CheckResult | None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            transport, keep = await self._tunnel(proxy, endpoint, deadline)
        except _Refused as exc:
            return _no_tunnel(f"CONNECT to {endpoint.label} refused: {exc}")
        except (ProxyTimeoutError, TimeoutError):
            return _no_tunnel(f"CONNECT to {endpoint.label} not answered in time")
        except ProxyConnectionError as exc:
            return CheckResult(False, f"cannot connect to proxy: {exc}", metadata={"tunnels": None})
        except ProxyError as exc:
            return _no_tunnel(f"CONNECT to {endpoint.label} refused: {exc}")
        except (*_BROKEN_TUNNEL, ValueError) as exc:
            return _no_tunnel(f"CONNECT to {endpoint.label} failed: {_reason(exc)}")
        try:
            async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                tls = await loop.start_tls(
                    transport, transport.get_protocol(), endpoint.ssl, server_hostname=endpoint.server_hostname
                )
        except ssl.SSLCertVerificationError as exc:
            transport.close()
            return CheckResult(
                False,
                f"man in the middle: CONNECT to {endpoint.label} met a certificate that is not the endpoint's "
                f"({exc.verify_message or exc.reason})",
                metadata={"tunnels": None, "endpoint": endpoint.label},
            )
        except _BROKEN_TUNNEL as exc:
            transport.close()
            left = deadline - loop.time()
            if left > 0 and not await self.endpoint_works(endpoint, left, self.reprobe_after):
                return None
            return _no_tunnel(f"CONNECT to {endpoint.label} accepted, but no TLS came through ({_reason(exc)})")
        verified = tls is not None and tls.get_extra_info("peercert") is not None
        if tls is not None:
            tls.close()
        transport.close()
        del keep
        if not verified:
            return _no_tunnel(f"CONNECT to {endpoint.label} accepted, but the TLS handshake did not complete")
        return CheckResult(
            True,
            f"tunnels: TLS to {endpoint.label} verified",
            latency_ms=(time.monotonic() - started) * 1000,
            metadata={"tunnels": True, "endpoint": endpoint.label},
        )

    async def _tunnel(
        self, proxy: Proxy, endpoint: TlsEndpoint, deadline: float
    ) -> tuple[asyncio.Transport, object]:
        """An open tunnel to the endpoint through the proxy (SOCKS: python-socks; HTTP(S): CONNECT), and
        an object to hold while it is used (a StreamWriter closes its transport when collected)."""
        loop = asyncio.get_running_loop()
        up = proxy.upstream
        if up.protocol.is_socks:
            client = SocksClient(
                ProxyType.SOCKS5 if up.protocol is ProxyProtocol.SOCKS5 else ProxyType.SOCKS4,
                up.host,
                up.port,
                username=up.username if up.has_credentials else None,
                password=(up.password or "") if up.has_credentials else None,
                rdns=True,
            )
            sock = await client.connect(endpoint.host, endpoint.port, timeout=max(deadline - loop.time(), 0.001))
            try:
                transport, protocol = await loop.create_connection(asyncio.Protocol, sock=sock)
            except BaseException:
                sock.close()
                raise
            return transport, protocol
        async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
            to_proxy = self._proxy_tls if up.protocol is ProxyProtocol.HTTPS else None
            reader, writer = await asyncio.open_connection(
                up.host, up.port, ssl=to_proxy, server_hostname=up.host if to_proxy else None
            )
            try:
                target = f"[{endpoint.host}]:{endpoint.port}" if ":" in endpoint.host else f"{endpoint.host}:{endpoint.port}"
                auth = ""
                if up.has_credentials:
                    token = base64.b64encode(f"{up.username or ''}:{up.password or ''}".encode()).decode("ascii")
                    auth = f"Proxy-Authorization: Basic {token}\r\n"
                writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = status_line.split(" ", 2)
                if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                    raise _Refused(f"not an HTTP answer: {status_line[:60]!r}")
                if parts[1] != "200":
                    raise _Refused(" ".join(parts[1:]).strip())
            except BaseException:
                writer.close()
                raise
        return writer.transport, writer  # type: ignore[return-value]


class _Refused(Exception):
    """The proxy answered CONNECT with something other than 200."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the proxy closed the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _no_tunnel(why: str) -> CheckResult:
    return CheckResult(True, f"plain HTTP only: {why}", metadata={"tunnels": False})


def create_plugin(settings: Settings) -> TlsTunnelChecker:
    return TlsTunnelChecker(
        settings.checker.timeout,
        list(settings.checker.judges),
        upstream_tls_context(settings.checker.upstream_tls_verify),
    )
