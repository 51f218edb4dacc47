"""The TLS context for ``https://`` upstreams, one for the gateway and the checker alike.

``checker.upstream_tls_verify``: ``True`` verifies the proxy's certificate and name against the system
store, ``False`` accepts any certificate (self-signed proxies), a path trusts only the CAs in that PEM file.
"""

from __future__ import annotations

import ssl
from functools import lru_cache

__all__ = ["handshake_failure", "tls_failure", "upstream_tls_context"]


@lru_cache(maxsize=8)
def upstream_tls_context(verify: bool | str) -> ssl.SSLContext:
    """A client context for TLS to the proxy itself (built once per setting: loading a store is slow)."""
    if verify is False:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if verify is True:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=verify)


def handshake_failure(exc: BaseException) -> str | None:
    """Why a TLS connection to a proxy failed in its handshake, or None when ``exc`` is not that.

    A plain-HTTP proxy answers a ClientHello with a 400 page (OpenSSL: "wrong version number") or by
    closing the connection (a reset or an EOF mid-handshake): both mean it does not speak TLS.
    """
    if isinstance(exc, ssl.SSLError):
        return tls_failure(exc)
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "the proxy does not speak TLS (it closed the connection)"
    return None


def tls_failure(exc: ssl.SSLError) -> str:
    """Why TLS to a proxy failed, in words (a plain-HTTP proxy answers a ClientHello with garbage)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message or exc.reason})"
    reason = str(exc.reason or exc or type(exc).__name__).lower().replace("_", " ")
    if reason in _NOT_TLS:
        return f"the proxy does not speak TLS ({reason})"
    return reason


# what OpenSSL says when the other side answered a ClientHello with something that is not TLS
_NOT_TLS = frozenset(
    {"wrong version number", "record layer failure", "unexpected eof while reading", "packet length too long",
     "http request", "unknown protocol"}
)
