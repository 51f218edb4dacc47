"""An upstream connection bound to one client by a connection-bound handshake (NTLM, Negotiate).

NTLM and Negotiate (Kerberos/SPNEGO) authenticate the TCP connection, not a request: once an origin
has accepted one on a connection, everything sent on it runs as that user.  The pool shares idle
connections across clients, so such a connection must never go back to it.  The rule, in one place
for both request paths: a request whose ``Authorization`` names such a scheme
(``http1.RequestHead.binds_connection``) or an answer ``401`` inviting one
(``http1.challenges_connection``) binds the connection carrying it to its client.  On the plain-HTTP
path the client connection keeps it here (``BoundConnection``) and sends its next requests to that
target on it, through the same upstream, so a handshake stays on one connection; it is closed when the
client goes, never pooled.  A SOCKS session already holds its one connection (``gateway.proxy.fixed``)
and relays such a request raw on it, which never returns to the pool either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.proxy.connection import UpstreamConnection
    from pool.models import Proxy

__all__ = ["BoundConnection"]


class BoundConnection:
    """One client's bound connection: its upstream and target, held between that client's requests
    (a ``Holder`` of ``gateway.proxy.connection``: the pool never keeps it)."""

    __slots__ = ("conn", "host", "port", "proxy")

    def __init__(self, conn: UpstreamConnection, proxy: Proxy | None, host: str, port: int) -> None:
        self.conn: UpstreamConnection | None = conn
        self.proxy = proxy
        self.host = host
        self.port = port
        conn.holder = self

    def __repr__(self) -> str:
        return f"<BoundConnection {self.host}:{self.port} via {self.proxy.id if self.proxy else 'direct'} {self.conn!r}>"

    def take(self, host: str, port: int) -> UpstreamConnection | None:
        """The connection for the client's next request to ``host:port``, if it is still open."""
        conn = self.conn
        if conn is None or host != self.host or port != self.port or not conn.is_open:
            return None
        return conn

    def spoke(self, conn: UpstreamConnection, data: bytes) -> None:
        """Bytes nobody asked for: the connection is never used again."""
        conn.close()

    def lost(self, conn: UpstreamConnection) -> None:
        if conn is self.conn:
            self.conn = None

    def end(self) -> None:
        """The client went, or bound another connection: this one closes (never to the pool)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.holder = None
            conn.close()
