"""Dialing an upstream proxy: one way in per protocol, errors mapped per phase.

* SOCKS4/SOCKS5: python-socks does the handshake and hands over a connected socket
  (``gateway.proxy.dialing`` makes it a transport);
* HTTP upstreams are dialed by ``gateway.proxy.dialing`` itself (CONNECT or absolute form).

An ``https://`` upstream is spoken to over TLS (``tls``: ``config.tls.upstream_tls_context``) before
anything else, for both; a TLS failure is an ``UpstreamConnectError`` with reason ``tls``.

The socket is closed when a handshake fails (glider's dialers do the same).  Errors leave as
``UpstreamError`` subclasses with a ``reason`` for metrics and passive health, and never mention
credentials; a dial that failed for want of local resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) is a
``LocalShortage``, which blames nobody.
"""

from __future__ import annotations

import base64
import socket
import ssl

from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio import Proxy as SocksProxy

from config.tls import handshake_failure
from gateway.proxy.errors import GatewayError
from pool.models import ProxyProtocol, UpstreamURL
from pool.resources import is_local_shortage

__all__ = [
    "LocalShortage",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamRefused",
    "UpstreamTimeout",
    "open_socks",
    "proxy_authorization",
    "tls_for",
    "local_or",
    "tls_open_error",
]

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


class LocalShortage(UpstreamError):
    """This process ran out of descriptors, socket buffers or memory while dialing
    (``pool.resources.is_local_shortage``): no verdict on the upstream, never counted against it."""

    reason = "local_resources"
    status = 503
    blames_upstream = False


def local_or(exc: BaseException, error: UpstreamError) -> UpstreamError:
    """``error``, unless ``exc`` was a local shortage: then that, naming it."""
    if is_local_shortage(exc):
        return LocalShortage(f"gateway out of local resources: {_os_reason(exc)}")
    return error


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


_SOCKS_TYPES = {  # HTTP kept for the checker-style CONNECT dial through python-socks
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


async def open_socks(up: UpstreamURL, host: str, port: int, timeout: float) -> socket.socket:
    """A connected socket to ``host:port`` through the SOCKS upstream ``up`` (handshake done)."""
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
        raise local_or(
            exc, UpstreamConnectError(f"{up.protocol} upstream unreachable: {_os_reason(exc)}", _errno_reason(exc))
        ) from None
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
        raise local_or(
            exc, UpstreamConnectError(f"{up.protocol} upstream failed: {_os_reason(exc)}", _errno_reason(exc))
        ) from None
    return sock


def tls_open_error(exc: BaseException) -> UpstreamConnectError | None:
    """The error for a TLS connection to a proxy that failed in its handshake (None: not that)."""
    why = handshake_failure(exc)
    return None if why is None else UpstreamConnectError(f"TLS to the https upstream failed: {why}", "tls")




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
