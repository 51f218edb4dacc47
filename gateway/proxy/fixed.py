"""A SOCKS client's tunnel served request by request: one target, one held upstream connection.

A SOCKS CONNECT fixes its target (host, port) and its upstream (the pick, with failover before the
reply).  Its success reply goes out once an upstream connection to that target is ready: an idle one
from the pool (keyed by upstream and target, as for plain HTTP) or a fresh tunnel.  From then on the
client connection (``gateway.proxy.client``) reads what the client sends: while it is an everyday
HTTP/1.1 request in origin form, it is served by the one request path (``Exchange`` in fixed-target
mode: no pick, no routing by the Host header, the connection is this session's), and when the client
goes at a message boundary the connection goes back to the pool IDLE, so the next SOCKS client to the
same target pays no dial.  Anything else -- bytes the strict parser refuses, an Upgrade, CONNECT or
absolute form inside the tunnel, connection-bound authentication (NTLM, Negotiate), an HTTP/1.0
request, non-HTTP bytes, or the target speaking first -- turns the session into a raw relay from that
point, on the same connection, which then never returns to the pool.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gateway.proxy import fasthead, http1
from gateway.proxy.errors import BadRequest
from gateway.proxy.refusals import Admission

if TYPE_CHECKING:
    from gateway.proxy.connection import ConnectionPool, UpstreamConnection
    from pool.models import Proxy

__all__ = ["FixedTarget", "could_be_head", "fixed_head"]

# an origin-form HTTP/1.1 request line (the only kind served; absolute form and CONNECT go raw)
_ORIGIN_LINE = re.compile(rb"([A-Z]{1,20}) (/[\x21-\x7e]*) HTTP/1\.1\r\n")
# what may precede the end of such a line while it is still arriving
_PARTIAL_LINE = re.compile(rb"[A-Z]{1,20}(?: (?:/[\x21-\x7e]*(?: [HTP/1.]{0,8}\r?)?)?)?")
_HOST = re.compile(rb"\r\nhost:[ \t]*([^\r\n]*?)[ \t]*\r\n", re.IGNORECASE)
_AUTHORITY = re.compile(rb"(?:[a-z0-9_.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?", re.IGNORECASE)


def could_be_head(buffer: bytes | bytearray) -> bool:
    """Whether the bytes so far can still become a request head ``fixed_head`` serves (else: raw, now)."""
    line_end = buffer.find(b"\r\n")
    if line_end < 0:
        return _PARTIAL_LINE.fullmatch(buffer) is not None
    return _ORIGIN_LINE.match(buffer) is not None


def fixed_head(raw: bytes) -> http1.RequestHead | None:
    """The head of an everyday origin-form HTTP/1.1 request, parsed as the HTTP path parses a proxy
    request (strictly), with ``host``/``port`` from its Host header: what is sent upstream as Host,
    never where it goes.  ``None``: not one to serve as HTTP (relay raw)."""
    line = _ORIGIN_LINE.match(raw)
    if line is None or line[1] == b"CONNECT":
        return None
    hosts = _HOST.findall(raw, line.end() - 2)
    if len(hosts) != 1 or _AUTHORITY.fullmatch(hosts[0]) is None:
        return None
    absolute = b"%s http://%s%s HTTP/1.1\r\n%s" % (line[1], hosts[0], line[2], raw[line.end() :])
    try:
        head = fasthead.plain_request(absolute) or http1.parse_request_head(absolute)
    except BadRequest:
        return None
    if (
        head.upgrade is not None
        or head.is_connect
        or head.pool_params
        or head.proxy_authorization is not None
        or head.binds_connection  # NTLM, Negotiate (gateway.proxy.bound): raw on the held connection
    ):
        return None
    return head


class FixedClient(Protocol):
    """The client connection serving the session (``gateway.proxy.client.ClientConnection``)."""

    def upstream_spoke(self, conn: UpstreamConnection, data: bytes) -> None: ...
    def upstream_gone(self, conn: UpstreamConnection) -> None: ...


class FixedTarget:
    """One SOCKS session: its target, upstream and admission, the connection it holds between its
    requests, and the bytes it moved (for its one access-log line)."""

    __slots__ = ("admission", "client", "conn", "host", "on_end", "pool", "port", "proxy", "received", "sent", "served")

    def __init__(
        self,
        proxy: Proxy | None,
        host: str,
        port: int,
        admission: Admission,
        conn: UpstreamConnection,
        pool: ConnectionPool,
        on_end: Callable[[FixedTarget], None],
    ) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        # the connection was charged once, for its reply: a request inside that fails refunds nothing, and
        # its usage (bytes) is counted once too, by the SOCKS connection at its end (so no usage here)
        self.admission = Admission(admission.user, admission.route, 0, direct=admission.direct)
        self.pool = pool
        self.on_end: Callable[[FixedTarget], None] | None = on_end
        self.client: FixedClient | None = None
        self.conn: UpstreamConnection | None = None
        self.sent = 0
        self.received = 0
        self.served = 0  # requests sent on a held connection
        self.hold(conn)

    def __repr__(self) -> str:
        return f"<FixedTarget {self.host}:{self.port} via {self.proxy.id if self.proxy else 'direct'} {self.conn!r}>"

    def hold(self, conn: UpstreamConnection) -> None:
        """``conn`` is the session's connection now; one held before goes back to the pool."""
        old, self.conn = self.conn, conn
        conn.holder = self
        if old is not None and old is not conn:
            self.pool.give_back(old)

    def take(self, fresh_only: bool) -> UpstreamConnection | None:
        """The held connection for the next request, if it is still open (``fresh_only``: only one that
        has carried nothing yet, for a request that must never ride a reused connection)."""
        conn = self.conn
        if conn is None or not conn.is_open or (fresh_only and conn.uses):
            return None
        return conn

    def detach(self) -> UpstreamConnection | None:
        """The held connection for a raw relay (never pooled again), or None when it is gone."""
        conn, self.conn = self.conn, None
        if conn is None or not conn.is_open:
            return None
        conn.detach()
        return conn

    def spoke(self, conn: UpstreamConnection, data: bytes) -> None:
        """The held connection got bytes while carrying no request (the target speaks first)."""
        if self.client is not None and conn is self.conn:
            self.client.upstream_spoke(conn, data)
        else:
            conn.close()

    def lost(self, conn: UpstreamConnection) -> None:
        """The held connection closed while carrying no request."""
        if self.client is not None and conn is self.conn:
            self.client.upstream_gone(conn)

    def end(self) -> None:
        """The client went: an idle held connection goes back to the pool; the session is counted once."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.give_back(conn)
        self.client = None
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end(self)
