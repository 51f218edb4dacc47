"""One way to send an aiohttp request through any kind of upstream proxy.

HTTP proxies go through the shared session with aiohttp's ``proxy=`` (absolute-form requests,
credentials as ``proxy_auth``); ``https://`` proxies (TLS to the proxy itself) the same way over a
session of their own whose connector holds the ``checker.upstream_tls_verify`` context (aiohttp uses one
context for the proxy and the target); SOCKS4/5 proxies get a session of their own over an
aiohttp-socks connector.  ``tunnel=True`` sends a plain-HTTP request to an HTTP(S) proxy the other way
the gateway uses it: inside a CONNECT tunnel to the target (aiohttp-socks's HTTP proxy type), which
is how ``http://`` targets go when the upstream tunnels; ``tunnel_refused`` tells a proxy that will not
open one (the gateway then falls back to the absolute form).  Own sessions are closed on exit.  Used by ``http_anonymity`` and ``site_reach``; the leading
underscore keeps plugin discovery away from it.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp_socks import ProxyConnectionError as SocksConnectionError
from aiohttp_socks import ProxyConnector
from aiohttp_socks import ProxyError as SocksProxyError
from aiohttp_socks import ProxyTimeoutError as SocksTimeoutError
from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType

from config.tls import tls_failure
from plugins import Proxy, ProxyProtocol

__all__ = ["NETWORK_ERRORS", "Reply", "Through", "describe_failure", "tunnel_refused"]

# What a request through a proxy raises when the network, the proxy or the target misbehaves.
NETWORK_ERRORS: tuple[type[Exception], ...] = (
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ProxyError,
    ProxyConnectionError,
    ProxyTimeoutError,
    SocksProxyError,  # aiohttp-socks re-raises python-socks errors as classes of its own
    SocksConnectionError,
    SocksTimeoutError,
    ssl.SSLError,
    OSError,
    ValueError,  # aiohttp raises it for a malformed answer in a few places
)

MAX_BODY = 256 * 1024


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    elapsed_ms: float


class Through:
    """``async with Through(proxy, shared) as via: await via.get(url, timeout=5)``."""

    def __init__(
        self, proxy: Proxy, shared: aiohttp.ClientSession, tls: ssl.SSLContext | None = None, *, tunnel: bool = False
    ) -> None:
        self._proxy = proxy
        self._shared = shared
        self._tls = tls
        self._tunnel = tunnel and not proxy.protocol.is_socks  # a SOCKS proxy is always a tunnel
        self._own: aiohttp.ClientSession | None = None

    @property
    def tunnel(self) -> bool:
        """Plain HTTP goes inside a CONNECT tunnel (an HTTP(S) proxy asked with ``tunnel=True``)."""
        return self._tunnel

    async def __aenter__(self) -> Self:
        if self._proxy.protocol.is_socks:
            connector: aiohttp.BaseConnector = ProxyConnector.from_url(self._proxy.url, limit=0)
            self._own = aiohttp.ClientSession(connector=connector, trust_env=False)
        elif self._tunnel:
            up = self._proxy.upstream
            connector = ProxyConnector(
                up.host,
                up.port,
                ProxyType.HTTP,
                username=up.username,
                password=up.password,
                rdns=True,
                proxy_ssl=(self._tls or ssl.create_default_context()) if up.protocol is ProxyProtocol.HTTPS else None,
                limit=0,
                force_close=True,
            )
            self._own = aiohttp.ClientSession(connector=connector, trust_env=False)
        elif self._proxy.protocol is ProxyProtocol.HTTPS:
            tls = self._tls or ssl.create_default_context()
            connector = aiohttp.TCPConnector(limit=0, force_close=True, ssl=tls)
            self._own = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._own is not None:
            await self._own.close()
            self._own = None

    async def get(
        self, url: str, *, timeout: float, read_body: bool = True, headers: dict[str, str] | None = None
    ) -> Reply:
        """GET ``url`` through the proxy; raises one of NETWORK_ERRORS on failure."""
        session = self._own or self._shared
        headers = {**(headers or {}), "Connection": "close"}  # one request per check: hold no idle sockets
        kwargs: dict[str, object] = {}
        if not self._proxy.protocol.is_socks and not self._tunnel:
            up = self._proxy.upstream
            kwargs["proxy"] = f"{'https' if up.protocol is ProxyProtocol.HTTPS else 'http'}://{up.netloc}"
            if up.username is not None:
                # aiohttp sends proxy_headers only on CONNECT; a plain request carries them itself
                credentials = _basic(up.username, up.password or "")
                if url.startswith("https://"):
                    kwargs["proxy_headers"] = {"Proxy-Authorization": credentials}
                else:
                    headers["Proxy-Authorization"] = credentials
        started = time.monotonic()
        async with session.get(
            url,
            timeout=aiohttp.ClientTimeout(total=max(timeout, 0.001)),
            headers=headers,
            allow_redirects=False,
            **kwargs,  # type: ignore[arg-type]
        ) as resp:
            body = b""
            if read_body:
                body = await _read_capped(resp, MAX_BODY)
            return Reply(resp.status, body, (time.monotonic() - started) * 1000)


def tunnel_refused(exc: BaseException) -> bool:
    """True when the proxy answered the CONNECT with a refusal (a status other than 200)."""
    return isinstance(exc, (ProxyError, SocksProxyError))


def _basic(user: str, password: str) -> str:
    """A ``Basic`` credentials value (aiohttp 3.14 deprecates ``proxy_auth=BasicAuth``)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16384):
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


def describe_failure(exc: BaseException, timeout: float) -> str:
    """A short reason naming the cause, never the proxy's credentials."""
    if isinstance(exc, (asyncio.TimeoutError, ProxyTimeoutError, SocksTimeoutError, aiohttp.ServerTimeoutError)):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, aiohttp.ClientSSLError) and isinstance(exc.os_error, ssl.SSLError):
        return f"TLS failed: {tls_failure(exc.os_error)}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {tls_failure(exc)}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"proxy answered {exc.status} {exc.message}".strip()
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"cannot connect to proxy: {_os_reason(exc.os_error)}"
    if isinstance(exc, (ProxyConnectionError, SocksConnectionError)):
        return f"cannot connect to proxy: {exc}"
    if isinstance(exc, (ProxyError, SocksProxyError)):
        return f"proxy refused: {exc}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "proxy closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {_os_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad answer: {exc.message}"
    if isinstance(exc, OSError):
        return _os_reason(exc)
    return f"{type(exc).__name__}: {exc}"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return exc.strerror or str(exc) or type(exc).__name__
