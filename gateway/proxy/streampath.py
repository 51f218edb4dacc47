"""The stream path: every request the callback fast path hands over.

CONNECT tunnels, requests with bodies (streamed both ways, never buffered whole), ``Expect:
100-continue``, HTTP/1.0 clients, SOCKS upstreams, ban-aware retries and the direct fallback are served
here with asyncio streams, one task per client connection.  It is the reference behaviour that
``gateway.proxy.fastpath`` must match for the requests it takes.  A mixin of ``GatewayServer``: the policy
it uses (target checks, auth, picking, reporting) lives there, shared with the fast path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass

from gateway.proxy import http1
from gateway.proxy.errors import BadRequest
from gateway.proxy.refusals import Admission, Attempts, Picked, Refusal
from gateway.proxy.relay import Tunnel
from gateway.proxy.upstream import (
    PooledConnection,
    UpstreamError,
    UpstreamTimeout,
    open_forward,
    open_tunnel,
    proxy_authorization,
)
from pool.models import Proxy
from pool.selector import Route

__all__ = ["ClientReader", "StreamPath"]


class ClientReader(asyncio.StreamReader):
    """A client's StreamReader that can start a time limit at the first byte of the next request head:
    the wait before it is ``idle_timeout``, the head itself has ``head_timeout`` (slowloris). StreamReader
    has no public way to learn that bytes arrived without consuming them, hence ``feed_data``."""

    received = 0  # bytes fed so far
    _head_limit: tuple[asyncio.Timeout, float] | None = None

    def limit_head(self, limit: asyncio.Timeout | None, seconds: float = 0.0) -> None:
        """Bring ``limit`` forward to ``seconds`` after the next bytes arrive (None: stop watching)."""
        self._head_limit = None if limit is None else (limit, seconds)

    def feed_data(self, data: bytes) -> None:
        super().feed_data(data)
        self.received += len(data)
        if self._head_limit is not None and data:
            limit, seconds = self._head_limit
            self._head_limit = None
            sooner = asyncio.get_running_loop().time() + seconds
            when = limit.when()
            if when is None or sooner < when:
                limit.reschedule(sooner)


@dataclass(slots=True, eq=False)
class _Client:
    reader: ClientReader
    writer: asyncio.StreamWriter
    peer: str
    busy: bool = False
    task: asyncio.Task[None] | None = None


class StreamPath:
    """Methods of ``GatewayServer`` that serve a connection with streams (see the module docstring)."""

    async def _serve(
        self, client: _Client, first: tuple[http1.RequestHead, Admission | None, Picked | None] | None = None
    ) -> None:
        if first is not None:
            keep = await self._one(client, first[0], admission=first[1], picked=first[2])
            if not keep:
                return
            await client.writer.drain()
        first_request = first is None
        reader = client.reader
        while not self._closing:
            timeout = self.gw.head_timeout if first_request else self.gw.idle_timeout
            client.busy = False
            received = reader.received
            try:
                async with asyncio.timeout(timeout) as limit:  # no task per call, unlike wait_for on 3.11
                    if not first_request:
                        reader.limit_head(limit, self.gw.head_timeout)
                    try:
                        raw = await http1.read_head(reader, self.gw.max_header_bytes)
                    finally:
                        reader.limit_head(None)
                if raw is None:
                    return
                client.busy = True
                first_request = False
                head = http1.parse_request_head(raw)
            except TimeoutError:
                if first_request or reader.received > received:  # a head had begun: say why we close
                    self._send_refusal(client.writer, Refusal(408, "request head not received in time", "timeout"))
                return
            except BadRequest as exc:
                outcome = "headers_too_large" if exc.status == 431 else "bad_request"
                self._send_refusal(client.writer, Refusal(exc.status, exc.message, outcome))
                self.count_request("?", outcome, 0.0)
                return
            if not await self._one(client, head):
                return
            await client.writer.drain()

    async def _one(
        self,
        client: _Client,
        head: http1.RequestHead,
        admission: Admission | None = None,
        picked: Picked | None = None,
    ) -> bool:
        """Serve one parsed request on the stream path; True when the connection stays open."""
        started = time.perf_counter()
        try:
            keep = await self._request(client, head, admission, picked)
            outcome = "ok"
        except Refusal as refusal:
            keep = refusal.keeps(head)
            self._send_refusal(client.writer, refusal, close=not keep)
            outcome = refusal.outcome
        except BadRequest as exc:
            self._send_refusal(client.writer, Refusal(exc.status, exc.message, "bad_request"))
            outcome, keep = "bad_request", False
        except _ClientGone:
            outcome, keep = "client_closed", False
        self.count_request(head.method, outcome, time.perf_counter() - started)
        return keep and not self._closing

    def _send_refusal(self, writer: asyncio.StreamWriter, refusal: Refusal, close: bool = True) -> None:
        if writer.is_closing():
            return
        writer.write(http1.simple_response(refusal.status, refusal.message, headers=refusal.headers, close=close))

    # one request --------------------------------------------------------------------------
    async def _request(
        self, client: _Client, head: http1.RequestHead, admission: Admission | None = None, picked: Picked | None = None
    ) -> bool:
        """Serve one request; True when the client connection stays open for the next."""
        if admission is None:  # else the callback path admitted (and charged) it already
            admission = await self.admit_request_slow(head, client.peer)
        route = admission.route
        try:
            if head.is_connect:
                return await self._connect(client, head, route)
            return await self._forward(client, head, route, picked)
        except Refusal as refusal:
            self.refund_own_failure(admission, refusal)
            raise

    def _attempt_failed(self, attempts: Attempts, proxy: Proxy | None, exc: UpstreamError) -> None:
        """One attempt's failure: a line of the 502 summary, and the upstream's passive health."""
        attempts.failed(proxy, exc)
        self._report(proxy, False, exc)

    # CONNECT ------------------------------------------------------------------------------
    async def _connect(self, client: _Client, head: http1.RequestHead, route: Route) -> bool:
        attempts = Attempts()
        tried: set[int] = set()
        for _ in range(self.gw.max_retries + 1):
            go, proxy = self._next_upstream(route, tried, head.host, tunnel=True)
            if not go:
                break
            try:
                upstream = await self._dial_tunnel(proxy, head.host, head.port)
            except UpstreamError as exc:
                self._attempt_failed(attempts, proxy, exc)
                if proxy is None:
                    break
                continue
            self._report(proxy, True)
            established = http1.CONNECT_ESTABLISHED
            if self.gw.debug_headers:
                established = established[:-2] + b"".join(
                    f"{k}: {v}\r\n".encode() for k, v in self._debug_headers(proxy)
                ) + b"\r\n"
            client.writer.write(established)
            tunnel = Tunnel((client.reader, client.writer), upstream, idle_timeout=self.gw.idle_timeout, on_bytes=self._on_bytes)
            await tunnel.run()
            return False
        raise attempts.refusal()

    async def _dial_tunnel(
        self, proxy: Proxy | None, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if proxy is None:
            return await self._dial_direct(host, port)
        return await open_tunnel(proxy.upstream, host, port, self.gw.connect_timeout, self.upstream_tls)

    async def _dial_direct(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The ``fallback = "direct"`` path: never to loopback, link-local or private targets."""
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), self.gw.connect_timeout)
        except (OSError, TimeoutError):
            raise UpstreamError(f"cannot resolve {host}", "dns") from None
        address = infos[0][4][0]
        ip = ipaddress.ip_address(address)
        if (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast) and not any(
            ip in net for net in self._direct_allow
        ):
            raise Refusal(403, f"direct connection to {host} ({address}) is not allowed", "forbidden")
        try:
            return await asyncio.wait_for(asyncio.open_connection(address, port, limit=1 << 17), self.gw.connect_timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"direct connection to {host} timed out") from None
        except OSError as exc:
            raise UpstreamError(f"direct connection to {host} failed: {exc.strerror or exc}", "refused") from None

    # plain HTTP ---------------------------------------------------------------------------
    async def _forward(self, client: _Client, head: http1.RequestHead, route: Route, picked: Picked | None = None) -> bool:
        body = http1.request_body_framing(head)
        has_body = body is not http1.Framing.NONE
        retryable = head.method in http1.IDEMPOTENT and not has_body
        attempts = picked.attempts if picked else Attempts()
        tried: set[int] = picked.tried if picked else set()
        first = picked.proxy if picked else None
        continued = False
        # the last answer with a status in retry_on_status: passed on when no other upstream can do better
        banned: tuple[Proxy, PooledConnection, object, http1.ResponseHead] | None = None
        try:
            for attempt in range(len(tried), self.gw.max_retries + 1):
                if first is not None:
                    go, proxy, first = True, first, None
                    tried.add(proxy.id)
                else:
                    go, proxy = self._next_upstream(route, tried, head.host)
                if not go:
                    break
                try:
                    conn, key, absolute = await self._http_connection(proxy, head)
                except UpstreamError as exc:
                    self._attempt_failed(attempts, proxy, exc)
                    if proxy is None:
                        break
                    continue
                extra = proxy_authorization(proxy.upstream) if absolute and proxy is not None else []
                extra.append(("Connection", "keep-alive"))
                out = http1.forward_request_head(head, absolute=absolute, extra=extra)
                try:
                    resp = await self._exchange(client, conn, out, head, body, continued)
                    continued = continued or head.expect_continue
                except (BadRequest, _ClientGone):
                    conn.close()  # the client's body was broken or cut: nothing more goes upstream
                    raise
                except _StaleConnection:
                    # a pooled connection the upstream had closed: once more on a fresh one, if sending
                    # the request twice is safe (RFC 9110 9.2.2) and its body was not consumed
                    conn.close()
                    self.pool.discard_key(key)
                    if not retryable:
                        self._attempt_failed(attempts, proxy, _StaleConnection())
                        break
                    try:
                        conn = await self._fresh_http_connection(proxy, head)
                        resp = await self._exchange(client, conn, out, head, body, continued)
                    except UpstreamError as exc:  # a fresh one that is stale too included
                        self._attempt_failed(attempts, proxy, exc)
                        conn.close()
                        continue
                except UpstreamError as exc:
                    conn.close()
                    self._attempt_failed(attempts, proxy, exc)
                    if not retryable:
                        break  # it may have been acted on, or its body is gone: never sent twice
                    continue
                if (
                    resp.status in self._retry_status
                    and retryable
                    and proxy is not None
                    and attempt < self.gw.max_retries
                ):
                    self.selector.cooldown(proxy, head.host, self.gw.retry_cooldown)
                    self._report(proxy, True)
                    if self.metrics is not None:
                        self.metrics.upstream_failure("banned")  # type: ignore[attr-defined]
                    if banned is not None:
                        banned[1].close()
                    banned = (proxy, conn, key, resp)
                    continue
                if banned is not None:
                    banned[1].close()
                    banned = None
                return await self._respond(client, head, proxy, conn, key, resp)
        except BaseException:
            if banned is not None:
                banned[1].close()
            raise
        if banned is not None:
            return await self._respond(client, head, *banned)
        raise attempts.refusal()

    async def _http_connection(
        self, proxy: Proxy | None, head: http1.RequestHead
    ) -> tuple[PooledConnection, object, bool]:
        key = self._pool_key(proxy, head)
        conn = self.pool.acquire(key)
        absolute = proxy is not None and not proxy.protocol.is_socks
        if conn is None:
            conn = await self._fresh_http_connection(proxy, head)
        return conn, key, absolute

    def _pool_key(self, proxy: Proxy | None, head: http1.RequestHead) -> object:
        if proxy is not None and not proxy.protocol.is_socks:
            return proxy.id
        return (proxy.id if proxy else None, head.host, head.port)

    async def _fresh_http_connection(self, proxy: Proxy | None, head: http1.RequestHead) -> PooledConnection:
        if proxy is not None and not proxy.protocol.is_socks:
            reader, writer = await open_forward(proxy.upstream, self.gw.connect_timeout, self.upstream_tls)
        else:
            reader, writer = await self._dial_tunnel(proxy, head.host, head.port)
        return PooledConnection(reader, writer)

    async def _exchange(
        self,
        client: _Client,
        conn: PooledConnection,
        out: bytes,
        head: http1.RequestHead,
        body: http1.Framing,
        continued: bool,
    ) -> http1.ResponseHead:
        """Send the head (and body) upstream, read the response head."""
        reused = conn.uses > 0
        try:
            if body is http1.Framing.NONE:
                conn.writer.write(out)
            else:
                if head.expect_continue and not continued:
                    client.writer.write(http1.CONTINUE_100)
                try:
                    await http1.copy_body(client.reader, conn.writer, body, on_bytes=self._count_up, prefix=out)
                except http1.IncompleteBody:
                    raise _ClientGone() from None
            await conn.writer.drain()
            while True:
                async with asyncio.timeout(self.gw.response_timeout):
                    raw = await http1.read_response_head(conn.reader, self.gw.max_header_bytes)
                if raw is None:
                    if reused:
                        raise _StaleConnection()
                    raise UpstreamError("upstream closed the connection without answering", "reset", target=_target(head))
                resp = http1.parse_response_head(raw)
                if 100 <= resp.status < 200 and resp.status != 101:
                    continue  # interim answers: we sent our own 100 Continue already
                return resp
        except TimeoutError:
            raise UpstreamTimeout("upstream did not answer in time", target=_target(head)) from None
        except (ConnectionError, OSError) as exc:
            if client.reader.exception() is not None or client.writer.is_closing():
                raise _ClientGone() from None  # the client reset mid-upload: not the upstream's failure
            if reused and body is http1.Framing.NONE:
                raise _StaleConnection() from None
            raise UpstreamError(f"upstream connection failed: {type(exc).__name__}", "reset", target=_target(head)) from None
        except http1.BadResponse as exc:
            raise UpstreamError(
                f"upstream sent a malformed answer: {exc.message}", "protocol_error", target=_target(head)
            ) from None

    def _count_up(self, n: int) -> None:
        if self._on_bytes is not None:
            self._on_bytes("client_to_upstream", n)

    def _count_down(self, n: int) -> None:
        if self._on_bytes is not None:
            self._on_bytes("upstream_to_client", n)

    async def _respond(
        self,
        client: _Client,
        head: http1.RequestHead,
        proxy: Proxy | None,
        conn: PooledConnection,
        key: object,
        resp: http1.ResponseHead,
    ) -> bool:
        framing = http1.response_body_framing(resp, head.method)
        dechunk = head.version == "HTTP/1.0"  # a 1.0 client cannot read chunked framing
        keep = head.keep_alive and framing is not http1.Framing.UNTIL_CLOSE and not self._closing and not dechunk
        out = http1.forward_response_head(resp, keep_alive=keep, extra=self._debug_headers(proxy), dechunk=dechunk)
        try:
            await http1.copy_body(
                conn.reader, client.writer, framing, on_bytes=self._count_down, response=True, dechunk=dechunk, prefix=out
            )
        except (http1.IncompleteBody, http1.BadResponse):
            conn.close()
            self._report(proxy, False, UpstreamError("upstream cut the answer short", "reset", target=_target(head)))
            return False
        except (ConnectionError, OSError):
            conn.close()
            raise _ClientGone() from None
        self._report(proxy, True)
        if resp.keep_alive and framing is not http1.Framing.UNTIL_CLOSE:
            self.pool.release(key, conn)
        else:
            conn.close()
        return keep


class _ClientGone(Exception):
    """The client went away mid-request: nothing to answer."""


def _target(head: http1.RequestHead) -> str:
    """``host:port`` a failure concerns, for passive health."""
    return f"{head.host}:{head.port}"


class _StaleConnection(UpstreamError):
    """A reused keep-alive connection turned out closed before any answer."""

    def __init__(self) -> None:
        super().__init__("upstream closed the connection", "reset")
