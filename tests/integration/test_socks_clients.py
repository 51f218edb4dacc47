"""SOCKS5 and SOCKS4/4a clients on the gateway's own port (and on gateway.socks_listen), with real clients:
curl, requests + PySocks, httpx + socksio, aiohttp-socks; reply codes, routing, credits, and attacks."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import shutil
import struct
from collections import Counter

import aiohttp
import httpx
import pytest
import requests
from aiohttp_socks import ProxyConnector

from config import Settings
from gateway.proxy.server import GatewayServer
from pool.models import Proxy, ProxyStatus, UpstreamURL
from pool.selector import Selector
from tests.support.grade_proxies import black_hole, microsocks, microsocks_available
from tests.support.upstreams import closed_port
from tests.support.waiting import eventually as wait_for

pytestmark = pytest.mark.timeout(60)
CURL = shutil.which("curl")
OPEN = {"allowed_connect_ports": "*"}


def gw(pool) -> str:
    host, port = pool.gateway_address
    return f"{host}:{port}"


async def curl(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        CURL, "-s", "-S", "--max-time", "20", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode, out.decode() or err.decode()


async def socks5_connect(
    address: tuple[str, int], host: str, port: int, *, methods: bytes = b"\x00", credentials: tuple[bytes, bytes] | None = None,
    command: int = 1,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw SOCKS5 handshake; returns the reader, writer and the server's last answer (reply or status)."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(bytes((5, len(methods))) + methods)
    chosen = await asyncio.wait_for(reader.readexactly(2), 10)
    if chosen[1] == 0xFF:
        return reader, writer, chosen
    if chosen[1] == 2:
        user, password = credentials or (b"", b"")
        writer.write(bytes((1, len(user))) + user + bytes((len(password),)) + password)
        status = await asyncio.wait_for(reader.readexactly(2), 10)
        if status != b"\x01\x00":
            return reader, writer, status
    try:
        packed = ipaddress.ip_address(host).packed
        target = bytes((1 if len(packed) == 4 else 4,)) + packed
    except ValueError:
        target = bytes((3, len(host))) + host.encode()
    writer.write(bytes((5, command, 0)) + target + struct.pack("!H", port))
    reply = await asyncio.wait_for(reader.readexactly(4), 20)
    await reader.readexactly((4 if reply[3] == 1 else 16) + 2)  # BND.ADDR, BND.PORT
    return reader, writer, reply


async def http_get_inside(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/echo") -> dict:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


# real clients ------------------------------------------------------------------------------------


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_socks5_socks5h_socks4_socks4a_on_the_http_port(make_pool, upstreams, origin):
    """The gateway's one port answers curl's SOCKS5, SOCKS5 with remote names, SOCKS4 and SOCKS4a, and plain HTTP too."""
    pool = await make_pool([u.url() for u in upstreams], gateway=OPEN)
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    hosts = {u.host for u in upstreams}
    for flag, target in (
        ("--socks5", "127.0.0.1"), ("--socks5-hostname", "localhost"), ("--socks4", "127.0.0.1"), ("--socks4a", "localhost"),
    ):
        code, out = await curl(flag, gw(pool), f"http://{target}:{origin.port}/echo")
        assert code == 0, (flag, out)
        assert json.loads(out)["peer"] in hosts, (flag, out)
    code, out = await curl("-x", f"http://{gw(pool)}", f"http://127.0.0.1:{origin.port}/echo")
    assert code == 0 and json.loads(out)["peer"] in hosts


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_with_credentials_and_routing_usernames(make_pool, upstreams, origin):
    """auth = users: curl's SOCKS5 username/password works, a wrong one is refused, SOCKS4 is refused."""
    pool = await make_pool([u.url() for u in upstreams], gateway={**OPEN, "auth": "users"})
    password = (await pool.accounts.add_user("alice", credits=100)).password
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    url = f"http://127.0.0.1:{origin.port}/echo"
    code, out = await curl("--socks5-hostname", gw(pool), "--proxy-user", f"alice:{password}", url)
    assert code == 0 and "peer" in out, out
    code, out = await curl("-x", f"socks5h://alice-session-s1:{password}@{gw(pool)}", url)
    assert code == 0 and "peer" in out, out
    code, out = await curl("-x", f"socks5h://alice:wrong@{gw(pool)}", url)
    assert code != 0  # curl: "User was rejected by the SOCKS5 server"
    code, out = await curl("--socks4a", gw(pool), url)
    assert code != 0
    code, out = await curl("--socks5-hostname", gw(pool), url)  # no credentials offered: no acceptable method
    assert code != 0


async def test_requests_pysocks_httpx_socksio_and_aiohttp_socks(make_pool, upstreams, origin):
    """Python clients: requests with socks5h:// (PySocks), httpx with socksio, aiohttp with aiohttp-socks."""
    pool = await make_pool([u.url() for u in upstreams], gateway=OPEN)
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    hosts = {u.host for u in upstreams}
    url = f"http://localhost:{origin.port}/echo"

    def with_requests() -> str:
        proxy = f"socks5h://{gw(pool)}"
        return requests.get(url, proxies={"http": proxy, "https": proxy}, timeout=20).json()["peer"]

    assert await asyncio.to_thread(with_requests) in hosts
    async with httpx.AsyncClient(proxy=f"socks5://{gw(pool)}", timeout=20) as client:
        assert (await client.get(url)).json()["peer"] in hosts
    async with aiohttp.ClientSession(connector=ProxyConnector.from_url(f"socks5://{gw(pool)}", rdns=True)) as session:
        async with session.get(url) as resp:
            assert (await resp.json())["peer"] in hosts
    async with aiohttp.ClientSession(connector=ProxyConnector.from_url(f"socks4://{gw(pool)}", rdns=True)) as session:
        async with session.get(url) as resp:
            assert (await resp.json())["peer"] in hosts


# rotation, routing, sessions ---------------------------------------------------------------------


async def test_each_socks_connection_picks_an_upstream(make_pool, upstreams, origin):
    """12 SOCKS connections leave through at least 2 upstreams (one pick per connection)."""
    pool = await make_pool([u.url() for u in upstreams], gateway=OPEN)
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    peers = Counter()
    for _ in range(12):
        reader, writer, reply = await socks5_connect(pool.gateway_address, "127.0.0.1", origin.port)
        assert reply[1] == 0
        peers[(await http_get_inside(reader, writer))["peer"]] += 1
    assert len(peers) >= 2 and set(peers) <= {u.host for u in upstreams}


async def test_routing_and_sticky_sessions_through_socks_usernames(make_pool, upstreams, origin):
    """With auth = none the SOCKS username carries routing parameters alone: a protocol filter and a session."""
    pool = await make_pool([upstreams[0].url("socks5"), upstreams[1].url(), upstreams[2].url()], gateway=OPEN)
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    for _ in range(4):
        reader, writer, reply = await socks5_connect(
            pool.gateway_address, "127.0.0.1", origin.port, methods=b"\x00\x02", credentials=(b"protocol-socks5", b"x")
        )
        assert reply[1] == 0
        assert (await http_get_inside(reader, writer))["peer"] == upstreams[0].host
    seen = set()
    for _ in range(4):
        reader, writer, reply = await socks5_connect(
            pool.gateway_address, "127.0.0.1", origin.port, methods=b"\x02", credentials=(b"session-abc", b"")
        )
        seen.add((await http_get_inside(reader, writer))["peer"])
    assert len(seen) == 1
    # SOCKS4a: the user id is the routing username
    reader, writer = await asyncio.open_connection(*pool.gateway_address)
    writer.write(b"\x04\x01" + struct.pack("!H", origin.port) + b"\x00\x00\x00\x01protocol-socks5\x00localhost\x00")
    assert (await reader.readexactly(8))[1] == 0x5A
    assert (await http_get_inside(reader, writer))["peer"] == upstreams[0].host
    # a filter nothing matches: network unreachable (the 503 of HTTP)
    _, writer, reply = await socks5_connect(
        pool.gateway_address, "127.0.0.1", origin.port, methods=b"\x02", credentials=(b"country-zz", b"")
    )
    writer.close()
    assert reply[1] == 0x03


# reply codes ----------------------------------------------------------------------------------------


async def test_reply_codes(make_pool, upstreams, origin):
    """0x02 for a port not allowed or the gateway itself, 0x07 for BIND and UDP ASSOCIATE; then the gateway closes."""
    pool = await make_pool([upstreams[0].url("socks5")], gateway={"allowed_connect_ports": [80, 443, origin.port]})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    address = pool.gateway_address
    for host, port, command, code in (
        ("127.0.0.1", 22, 1, 0x02),  # port not allowed
        (address[0], address[1], 1, 0x02),  # the gateway itself
        ("127.0.0.1", origin.port, 2, 0x07),  # BIND
        ("127.0.0.1", origin.port, 3, 0x07),  # UDP ASSOCIATE
    ):
        reader, writer, reply = await socks5_connect(address, host, port, command=command)
        assert reply[1] == code, (host, port, command, reply)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # and the gateway closes
        writer.close()


@pytest.mark.skipif(not microsocks_available(), reason="microsocks is not installed")
async def test_upstream_failures_map_to_reply_codes(origin):
    """A target the SOCKS upstream found refused keeps 0x05, a black-hole upstream is 0x06 (timeout), an
    upstream that is down a general failure; every one after the failover, never a hang."""
    settings = Settings(gateway={"listen": "127.0.0.1:0", "max_retries": 0, "connect_timeout": 0.5, **OPEN})
    async with microsocks("127.0.0.7") as ms, black_hole("127.0.0.8") as hole:
        for url, target, code in (
            (ms.url(), closed_port(), 0x05),
            (hole.url("http"), origin.port, 0x06),
            (f"http://127.0.0.9:{closed_port('127.0.0.9')}", origin.port, 0x01),
        ):
            selector = Selector()
            selector.load([Proxy(1, UpstreamURL.parse(url), status=ProxyStatus.ACTIVE)])
            server = GatewayServer(settings, selector)
            address = await server.start()
            try:
                _, writer, reply = await socks5_connect(address, "127.0.0.1", target)
                writer.close()
                assert reply[1] == code, (url, reply)
            finally:
                await server.stop()


async def test_empty_pool_is_network_unreachable(make_pool):
    pool = await make_pool([])
    _, writer, reply = await socks5_connect(pool.gateway_address, "example.com", 443)
    writer.close()
    assert reply[1] == 0x03


async def test_credits_and_auth_equivalents(make_pool, upstreams, origin):
    """auth = users: no credentials offered -> 0xFF; wrong password -> RFC 1929 failure; SOCKS4 -> 0x5B;
    credits exhausted -> 0x02 (the 402); a failed dial is refunded like an HTTP 502."""
    pool = await make_pool(
        [u.url() for u in upstreams], gateway={**OPEN, "auth": "users", "max_retries": 0}, credits={"cost_per_request": 1}
    )
    password = (await pool.accounts.add_user("bob", credits=2)).password.encode()
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    address = pool.gateway_address
    _, writer, answer = await socks5_connect(address, "127.0.0.1", origin.port)
    writer.close()
    assert answer == b"\x05\xff"
    _, writer, answer = await socks5_connect(address, "127.0.0.1", origin.port, methods=b"\x02", credentials=(b"bob", b"no"))
    writer.close()
    assert answer == b"\x01\x01"
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"\x04\x01" + struct.pack("!H", origin.port) + b"\x7f\x00\x00\x01bob\x00")
    assert (await asyncio.wait_for(reader.readexactly(8), 10))[1] == 0x5B
    writer.close()
    creds = (b"bob", password)
    dead = closed_port()
    _, writer, reply = await socks5_connect(address, "127.0.0.1", dead, methods=b"\x02", credentials=creds)
    writer.close()
    assert reply[1] != 0
    await wait_for(lambda: pool.accounts.balance("bob") == 2)  # the failure was ours to bear: refunded
    for _ in range(2):
        reader, writer, reply = await socks5_connect(address, "127.0.0.1", origin.port, methods=b"\x02", credentials=creds)
        assert reply[1] == 0
        await http_get_inside(reader, writer)
    _, writer, reply = await socks5_connect(address, "127.0.0.1", origin.port, methods=b"\x02", credentials=creds)
    writer.close()
    assert reply[1] == 0x02  # credits exhausted


# attacks --------------------------------------------------------------------------------------------


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_slowloris_garbage_truncation_and_oversized_fields_end_within_head_timeout(make_pool, upstreams):
    """Each gets a reply code or a close within head_timeout; connection slots and fds return to baseline."""
    pool = await make_pool([upstreams[0].url()], gateway={"head_timeout": 0.5})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    server = pool.gateway
    baseline = _fds()
    attacks = [
        b"\x05",  # slowloris: a greeting that never completes
        b"\x05\x01\x00",  # greeting, then no request
        b"\x05\x01\x00\x05\x01\x00\x03\x20abc",  # truncated domain
        b"\x05\x01\x00\xde\xad\xbe\xef\x00\x00\x00\x00\x00\x00",  # garbage after the greeting
        b"\x04\x01\x00\x50\x01\x02\x03\x04" + b"u" * 4000,  # oversized SOCKS4 user id, no NUL
        b"\x05\x01\x02\x01\xff" + b"u" * 255,  # a 255-byte username and no password
        b"\x05\xff" + bytes(range(255)) + b"\x01\x00" * 500,  # greeting with 255 methods then junk
    ]
    conns = []
    for data in attacks:
        reader, writer = await asyncio.open_connection(*pool.gateway_address)
        writer.write(data)
        conns.append((reader, writer))
    for reader, writer in conns:
        await asyncio.wait_for(reader.read(), 10)  # a reply (maybe) and then EOF: never a hang
        writer.close()
    await wait_for(lambda: len(server._clients) == 0)  # noqa: SLF001
    await wait_for(lambda: _fds() <= baseline)


async def test_socks_listen_port_speaks_socks_only(make_pool, upstreams, origin):
    """gateway.socks_listen: SOCKS works there, an HTTP request is closed, and the port is the gateway's own (loop)."""
    from tests.support.upstreams import free_port

    port = free_port()
    pool = await make_pool([u.url() for u in upstreams], gateway={**OPEN, "socks_listen": f"127.0.0.1:{port}"})
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    reader, writer, reply = await socks5_connect(("127.0.0.1", port), "127.0.0.1", origin.port)
    assert reply[1] == 0
    assert (await http_get_inside(reader, writer))["peer"] in {u.host for u in upstreams}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    _, writer, reply = await socks5_connect(pool.gateway_address, "127.0.0.1", port)
    writer.close()
    assert reply[1] == 0x02  # a loop to the SOCKS port


async def test_metrics_and_access_log_carry_the_protocol(make_pool, upstreams, origin, caplog):
    """gateway_requests_total{protocol="socks5"|"socks4"} counts SOCKS connections, beside http and connect."""
    pool = await make_pool([u.url() for u in upstreams], gateway=OPEN, log={"access_log": True})
    caplog.set_level(logging.INFO, logger="proxy_pool.access")
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    reader, writer, reply = await socks5_connect(pool.gateway_address, "127.0.0.1", origin.port)
    await http_get_inside(reader, writer)
    reader, writer = await asyncio.open_connection(*pool.gateway_address)
    writer.write(b"\x04\x01" + struct.pack("!H", origin.port) + b"\x7f\x00\x00\x01\x00")
    assert (await reader.readexactly(8))[1] == 0x5A
    await http_get_inside(reader, writer)
    counts = pool.metrics.request_counts
    await wait_for(lambda: counts.get(("CONNECT", "ok", "socks5")) == 1 and counts.get(("CONNECT", "ok", "socks4")) == 1)
    host, port = pool.admin_address
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://{host}:{port}/metrics") as resp:
            text = await resp.text()
    assert 'proxy_pool_gateway_requests_total{method="CONNECT",outcome="ok",protocol="socks5"} 1.0' in text
    assert any(" SOCKS5-CONNECT " in r.getMessage() and " ok " in r.getMessage() for r in caplog.records)


async def test_failover_happens_before_the_reply(upstreams, origin):
    """The first upstream picked is down: the gateway tries the next one before it answers, so the client
    sees one success reply and a working tunnel; the down one is reported for passive health."""
    settings = Settings(gateway={"listen": "127.0.0.1:0", "max_retries": 1, **OPEN})
    selector = Selector()
    down = Proxy(1, UpstreamURL.parse(f"http://127.0.0.9:{closed_port('127.0.0.9')}"), status=ProxyStatus.ACTIVE)
    live = Proxy(2, UpstreamURL.parse(upstreams[0].url("socks5")), status=ProxyStatus.ACTIVE)
    selector.load([down, live])
    server = GatewayServer(settings, selector)
    address = await server.start()
    try:
        for _ in range(4):  # round robin starts on either: each connection still succeeds
            reader, writer, reply = await socks5_connect(address, "127.0.0.1", origin.port)
            assert reply[1] == 0
            assert (await http_get_inside(reader, writer))["peer"] == upstreams[0].host
    finally:
        await server.stop()


async def test_socks_early_data_pauses_reading_at_the_bound_of_http_connect(make_pool):
    """A SOCKS5 client that sends 4 MiB right after its CONNECT while the dial is slow (the upstream holds
    the CONNECT until released) is read up to the one bound HTTP CONNECT has, then paused; once the tunnel
    is up every byte reaches the target."""
    from gateway.proxy.services import HELD_MAX
    from gateway.proxy.socksproto import SocksProtocol
    from tests.support.grade_proxies import Grade
    from tests.support.liars import Liar

    class Gated(Liar):
        gate: asyncio.Event | None = None

        async def lie(self, method, target, head, reader, writer) -> bool:
            if method == "CONNECT" and self.gate is not None:
                await self.gate.wait()
            return False

    received = 0

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        while chunk := await reader.read(65536):
            received += len(chunk)
        writer.close()

    target = await asyncio.start_server(sink, "127.0.0.1", 0)
    upstream = await Gated("127.0.0.2", Grade.ELITE).start()
    try:
        pool = await make_pool([upstream.url()], gateway={**OPEN, "connect_timeout": 30})
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        upstream.gate = asyncio.Event()
        reader, writer = await asyncio.open_connection(*pool.gateway_address)
        writer.write(b"\x05\x01\x00")
        assert await asyncio.wait_for(reader.readexactly(2), 10) == b"\x05\x00"
        writer.write(b"\x05\x01\x00\x01" + bytes((127, 0, 0, 1)) + struct.pack("!H", target.sockets[0].getsockname()[1]))
        total = 4 << 20

        async def send() -> None:
            for _ in range(total // 65536):
                writer.write(b"x" * 65536)
                await writer.drain()

        sending = asyncio.ensure_future(send())

        def socks_protocols() -> list[SocksProtocol]:
            found = [c.transport.get_protocol() for c in pool.gateway._clients if c.transport is not None]
            return [p for p in found if isinstance(p, SocksProtocol)]

        await wait_for(
            lambda: any(p.transport is not None and not p.transport.is_reading() for p in socks_protocols()),
            lambda: f"early data held: {[len(p.early) for p in socks_protocols()]}",
        )
        assert all(len(p.early) <= HELD_MAX + (256 << 10) for p in socks_protocols())
        assert not sending.done()
        upstream.gate.set()
        assert (await asyncio.wait_for(reader.readexactly(10), 20))[:2] == b"\x05\x00"
        await asyncio.wait_for(sending, 20)
        writer.write_eof()
        await wait_for(lambda: received == total, lambda: f"{received} of {total} bytes arrived")
        writer.close()
    finally:
        await upstream.stop()
        target.close()
