"""Dialing an upstream proxy: one way in per protocol, errors mapped per phase.

* tunnels (CONNECT from the client, or plain HTTP through a SOCKS upstream): python-socks does the
  SOCKS4/SOCKS5/HTTP-CONNECT handshake and hands over a connected socket;
* plain HTTP through an HTTP upstream: a TCP connection to the proxy that carries absolute-form
  requests, kept alive in a small pool per upstream.

An ``https://`` upstream is spoken to over TLS (``tls``: ``config.tls.upstream_tls_context``) before
anything else, for both; a TLS failure is an ``UpstreamConnectError`` with reason ``tls``.

The socket is closed when a handshake fails (glider's dialers do the same).  Errors leave as
``UpstreamError`` subclasses with a ``reason`` for metrics and passive health, and never mention
credentials.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio import Proxy as SocksProxy

from config.tls import handshake_failure
from gateway.proxy import http1
from gateway.proxy.errors import GatewayError
from pool.models import ProxyProtocol, UpstreamURL

__all__ = [
    "ConnectionPool",
    "PooledConnection",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamRefused",
    "UpstreamTimeout",
    "open_forward",
    "open_tunnel",
    "proxy_authorization",
    "tls_for",
    "tls_open_error",
]

STREAM_LIMIT = 1 << 17


class UpstreamError(GatewayError):
    """An upstream could not carry the request.  ``reason`` is a bounded label.

    ``target`` ("host:port") is set when the failure concerns that target, not the upstream: the
    upstream took the request, then said the target is unreachable (CONNECT 502/503/504, SOCKS
    "host unreachable"), closed the CONNECT or the request without answering, or cut the answer
    short.  Then ``blames_upstream`` is False and passive health counts it against the target
    (``Selector.report(proxy, False, target=...)``): one dead web site must not bench every proxy.
    """

    reason = "error"
    status = 502
    blames_upstream = True

    def __init__(self, message: str, reason: str | None = None, *, target: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.target = target
        if target is not None:
            self.blames_upstream = False

    def __str__(self) -> str:
        return self.message


class UpstreamTimeout(UpstreamError, TimeoutError):
    reason = "timeout"
    status = 504


class UpstreamConnectError(UpstreamError, OSError):
    reason = "refused"


class UpstreamRefused(UpstreamError):
    """The upstream answered, but said no (CONNECT 407/5xx, SOCKS rejection).

    ``refuses_tunnel``: an HTTP upstream answered CONNECT with a 4xx other than 407: it does not carry
    tunnels (it may serve plain HTTP well), so it is failed over without blame and marked as such."""

    TARGET_HTTP = frozenset({502, 503, 504})
    TARGET_SOCKS = frozenset({3, 4, 5, 6})  # network/host unreachable, connection refused, TTL expired

    def __init__(
        self, message: str, reason: str = "socks_error", status_code: int | None = None, *, target: str | None = None
    ) -> None:
        codes = self.TARGET_HTTP if reason == "http_status" else self.TARGET_SOCKS
        super().__init__(message, reason, target=target if status_code in codes else None)
        self.status_code = status_code
        self.refuses_tunnel = (
            reason == "http_status" and status_code is not None and 400 <= status_code < 500 and status_code != 407
        )
        if self.refuses_tunnel:
            self.blames_upstream = False  # a capability, not a failure: marked, never benched


_SOCKS_TYPES = {
    ProxyProtocol.SOCKS4: ProxyType.SOCKS4,
    ProxyProtocol.SOCKS5: ProxyType.SOCKS5,
    ProxyProtocol.HTTP: ProxyType.HTTP,
    ProxyProtocol.HTTPS: ProxyType.HTTP,
}


def proxy_authorization(up: UpstreamURL) -> list[tuple[str, str]]:
    """The header an HTTP upstream wants for its credentials, if it has any."""
    if not up.has_credentials:
        return []
    token = base64.b64encode(f"{up.username}:{up.password or ''}".encode()).decode("ascii")
    return [("Proxy-Authorization", f"Basic {token}")]


def tls_for(up: UpstreamURL, tls: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The context to wrap the connection to ``up`` in: only ``https://`` upstreams speak TLS."""
    if up.protocol is not ProxyProtocol.HTTPS:
        return None
    return tls if tls is not None else ssl.create_default_context()


async def open_tunnel(
    up: UpstreamURL, host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A byte stream to ``host:port`` through ``up`` (CONNECT or SOCKS handshake done)."""
    context = tls_for(up, tls)
    if context is not None:
        return await _tls_tunnel(up, host, port, timeout, context)
    proxy = SocksProxy(
        _SOCKS_TYPES[up.protocol],
        up.host,
        up.port,
        username=up.username if up.has_credentials else None,
        password=(up.password or "") if up.has_credentials else None,
        rdns=True,
    )
    target = f"{host}:{port}"
    try:
        sock = await proxy.connect(host, port, timeout=timeout)
    except ProxyTimeoutError:
        raise UpstreamTimeout(f"{up.protocol} upstream timed out") from None
    except ProxyConnectionError as exc:
        raise UpstreamConnectError(f"{up.protocol} upstream unreachable: {_os_reason(exc)}", _errno_reason(exc)) from None
    except ProxyError as exc:
        code = getattr(exc, "error_code", None)
        if up.protocol in (ProxyProtocol.HTTP, ProxyProtocol.HTTPS):
            if code is None and "Invalid proxy response" in str(exc):  # python-socks: the reply was empty
                raise UpstreamError("upstream closed the connection during CONNECT", "reset", target=target) from None
            raise UpstreamRefused(
                f"upstream answered CONNECT with {code or 'an error'}",
                "http_status",
                code if isinstance(code, int) else None,
                target=target,
            ) from None
        raise UpstreamRefused(
            f"{up.protocol} upstream refused: {exc}", "socks_error", code if isinstance(code, int) else None, target=target
        ) from None
    except TimeoutError:
        raise UpstreamTimeout(f"{up.protocol} upstream timed out") from None
    except OSError as exc:
        raise UpstreamConnectError(f"{up.protocol} upstream failed: {_os_reason(exc)}", _errno_reason(exc)) from None
    try:
        return await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)
    except BaseException:
        sock.close()
        raise


async def _tls_tunnel(
    up: UpstreamURL, host: str, port: int, timeout: float, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """CONNECT through an ``https://`` upstream: TLS to the proxy, then the CONNECT inside it."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _open_tls(up, context)
            try:
                writer.write(http1.connect_request_head(host, port, extra=proxy_authorization(up)))
                raw = await http1.read_response_head(reader, 1 << 16)
                status = 0 if raw is None else http1.parse_response_head(raw).status
            except BaseException:
                writer.close()
                raise
    except UpstreamError:
        raise
    except TimeoutError:
        raise UpstreamTimeout("https upstream timed out") from None
    except http1.BadResponse:
        raise UpstreamError("https upstream sent a malformed answer to CONNECT", "protocol_error") from None
    except OSError as exc:
        raise UpstreamConnectError(f"https upstream failed: {_os_reason(exc)}", _errno_reason(exc)) from None
    if status == 200 and not reader._buffer:  # noqa: SLF001  (a clean tunnel: the proxy said nothing more)
        return reader, writer
    writer.close()
    if status == 0:
        raise UpstreamError("upstream closed the connection during CONNECT", "reset")
    raise UpstreamRefused(f"upstream answered CONNECT with {status}", "http_status", status)


async def _open_tls(up: UpstreamURL, context: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to the proxy; a failed handshake leaves as ``UpstreamConnectError(reason="tls")``."""
    try:
        return await asyncio.open_connection(
            up.host, up.port, limit=STREAM_LIMIT, ssl=context, server_hostname=up.host
        )
    except OSError as exc:
        failed = tls_open_error(exc)
        if failed is None:
            raise
        raise failed from None


def tls_open_error(exc: BaseException) -> UpstreamConnectError | None:
    """The error for a TLS connection to a proxy that failed in its handshake (None: not that)."""
    why = handshake_failure(exc)
    return None if why is None else UpstreamConnectError(f"TLS to the https upstream failed: {why}", "tls")


async def open_forward(
    up: UpstreamURL, timeout: float, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP (for ``https://``: TLS) connection to an HTTP upstream, for absolute-form requests."""
    context = tls_for(up, tls)
    try:
        async with asyncio.timeout(timeout):
            if context is not None:
                reader, writer = await _open_tls(up, context)
            else:
                reader, writer = await asyncio.open_connection(up.host, up.port, limit=STREAM_LIMIT)
    except UpstreamError:
        raise
    except TimeoutError:
        raise UpstreamTimeout("http upstream timed out") from None
    except OSError as exc:
        raise UpstreamConnectError(f"http upstream unreachable: {_os_reason(exc)}", _errno_reason(exc)) from None
    return reader, writer  # asyncio and uvloop set TCP_NODELAY on TCP transports themselves


def _os_reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    text = str(exc)
    return text.split(":")[-1].strip().lower() or type(exc).__name__


def _errno_reason(exc: BaseException) -> str:
    text = f"{exc} {exc.__cause__ or ''}".lower()
    if "reset" in text:
        return "reset"
    if "timed out" in text or "timeout" in text:
        return "timeout"
    return "refused"


@dataclass(eq=False)
class PooledConnection:
    """A kept-alive upstream connection.  ``uses`` > 0 means it has served before (may be stale)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    uses: int = 0
    idle_since: float = field(default_factory=time.monotonic)

    def is_usable(self, now: float, idle_timeout: float) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and now - self.idle_since < idle_timeout
        )

    def is_open(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


class ConnectionPool:
    """Idle keep-alive connections per key (an upstream, or an upstream and a target).

    Holds anything with ``is_usable(now, idle)``, ``is_open()``, ``close()``, ``uses`` and
    ``idle_since``: stream connections (``PooledConnection``) and the fast path's protocols.

    Bookkeeping is synchronous; closing happens on the transport, never awaited by the caller
    (httpcore's pool decides first and does I/O afterwards).
    """

    def __init__(
        self, per_key: int = 32, idle_timeout: float = 30.0, max_keys: int = 4096, max_total: int = 4096
    ) -> None:
        self.per_key = per_key
        self.idle_timeout = idle_timeout
        self.max_keys = max_keys
        self.max_total = max_total  # idle sockets held at most, whatever the number of upstreams
        self._idle: OrderedDict[object, list[PooledConnection]] = OrderedDict()
        self._total = 0

    def acquire(self, key: object) -> Any:
        conns = self._idle.get(key)
        if not conns:
            return None
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            self._total -= 1
            if conn.is_usable(now, self.idle_timeout):
                if not conns:
                    del self._idle[key]
                return conn
            conn.close()
        del self._idle[key]
        return None

    def release(self, key: object, conn: Any) -> None:
        if self.per_key == 0 or not conn.is_open():
            conn.close()
            return
        conn.uses += 1
        conn.idle_since = time.monotonic()
        conns = self._idle.setdefault(key, [])
        self._idle.move_to_end(key)
        conns.append(conn)
        self._total += 1
        if len(conns) > self.per_key:
            conns.pop(0).close()
            self._total -= 1
        while len(self._idle) > self.max_keys or self._total > self.max_total:
            oldest_key = next(iter(self._idle))
            oldest = self._idle[oldest_key]
            oldest.pop(0).close()
            self._total -= 1
            if not oldest:
                del self._idle[oldest_key]

    def discard_key(self, key: object) -> None:
        for conn in self._idle.pop(key, []):
            conn.close()
            self._total -= 1

    def prune(self) -> int:
        """Close connections idle too long; returns how many (called from a background loop)."""
        now = time.monotonic()
        closed = 0
        for key in list(self._idle):
            conns = self._idle[key]
            keep = [c for c in conns if c.is_usable(now, self.idle_timeout)]
            for c in conns:
                if c not in keep:
                    c.close()
                    closed += 1
            self._total -= len(conns) - len(keep)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        self._total = 0

    def __len__(self) -> int:
        return self._total
