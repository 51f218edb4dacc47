"""An upstream connection bound to one client by a connection-bound handshake (NTLM, Negotiate).

NTLM and Negotiate (Kerberos/SPNEGO) authenticate the TCP connection, not a request: once an origin
has accepted one on a connection, everything sent on it runs as that user.  The pool shares idle
connections across clients, so such a connection must never go back to it.  The rule, in one place
for both request paths: a request whose ``Authorization`` names such a scheme
(``http1.RequestHead.binds_connection``) or an answer ``401`` inviting one
(``http1.challenges_connection``) binds the connection carrying it to its client.  On the plain-HTTP
path the client connection keeps it here (``BoundConnection``) and sends its next requests to that
target on it, through the same upstream, so a handshake stays on one connection; it is closed when the
client goes, never pooled.  It belongs to (gateway user, client connection, target): a downstream proxy
that pools its connections sends several users' requests on one client connection, and a request of
another user (or to another target) never takes it (``BoundConnections``: one per user).  A SOCKS
session already holds its one connection (``gateway.proxy.fixed``) and relays such a request raw on
it, which never returns to the pool either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.proxy.connection import UpstreamConnection
    from pool.models import Proxy

__all__ = ["BoundConnection", "BoundConnections"]

_PER_CLIENT = 8  # users holding a bound connection on one client connection; past that the oldest closes


class BoundConnection:
    """One client's bound connection: its upstream and target, held between that client's requests
    (a ``Holder`` of ``gateway.proxy.connection``: the pool never keeps it)."""

    __slots__ = ("conn", "host", "port", "proxy", "user")

    def __init__(
        self, conn: UpstreamConnection, proxy: Proxy | None, user: str | None, host: str, port: int
    ) -> None:
        self.conn: UpstreamConnection | None = conn
        self.proxy = proxy
        self.user = user  # the gateway user whose request bound it (None without auth)
        self.host = host
        self.port = port
        conn.holder = self

    def __repr__(self) -> str:
        via = self.proxy.id if self.proxy else "direct"
        return f"<BoundConnection {self.user or '-'} {self.host}:{self.port} via {via} {self.conn!r}>"

    def take(self, user: str | None, host: str, port: int) -> UpstreamConnection | None:
        """The connection for the client's next request to ``host:port`` as ``user``, if it is still open."""
        conn = self.conn
        if conn is None or user != self.user or host != self.host or port != self.port or not conn.is_open:
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


class BoundConnections:
    """A client connection's bound connections, one per gateway user: a downstream proxy's pooled
    connection may carry several users' handshakes, each on its own upstream connection."""

    __slots__ = ("_by_user",)

    def __init__(self) -> None:
        self._by_user: dict[str | None, BoundConnection] = {}

    def take(self, user: str | None, host: str, port: int) -> BoundConnection | None:
        """``user``'s bound connection when it is open and to ``host:port``, else None."""
        bound = self._by_user.get(user)
        if bound is None or bound.take(user, host, port) is None:
            return None
        return bound

    def bind(
        self, conn: UpstreamConnection, proxy: Proxy | None, user: str | None, host: str, port: int
    ) -> None:
        """``conn`` is ``user``'s from now on (the one it held before, to another target, closes)."""
        held = self._by_user.pop(user, None)
        if held is not None:
            if held.conn is conn:
                self._by_user[user] = held
                return
            held.end()
        if len(self._by_user) >= _PER_CLIENT:
            self._by_user.pop(next(iter(self._by_user))).end()
        self._by_user[user] = BoundConnection(conn, proxy, user, host, port)

    def end(self) -> None:
        """The client went: every bound connection closes."""
        held, self._by_user = self._by_user, {}
        for bound in held.values():
            bound.end()
