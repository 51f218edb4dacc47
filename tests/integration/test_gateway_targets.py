"""Numeric host forms through a real gateway (issue 12, finding 1): each is read as the address it is, so a
request aimed at the admin API or the gateway itself is refused at admission, on every request path."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from tests.integration.test_gateway_hardening import exchange, one_line_body, status_of

pytestmark = pytest.mark.timeout(90)

# every form of the issue, each meaning 127.0.0.1 (or 0.0.0.0) to the software behind an upstream
LOOPBACK_FORMS = ["2130706433", "0x7f000001", "127.1", "0177.0.0.1", "127.000.000.001", "0",
                  "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "127.0.0.%31", "127.0.0.1.", "0x7F.1", "[::7f00:1]"]  # fmt: skip
LOOP = "request loops back to the gateway itself"


def get(host: str, port: int, path: str = "/api/users", version: str = "HTTP/1.1") -> bytes:
    return f"GET http://{host}:{port}{path} {version}\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()


def post(host: str, port: int) -> bytes:  # non-idempotent with a body: the stream path
    body = b'{"amount": 1000000}'
    return (
        f"POST http://{host}:{port}/api/users/carol/credits HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def connect(host: str, port: int) -> bytes:
    return f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


async def assert_refused_as_loop(pool, payload: bytes) -> None:
    answer = await exchange(pool.gateway_address, payload)
    assert status_of(answer) == 403, (payload, answer[:200])
    assert one_line_body(answer) == LOOP + "\n", payload  # our own answer, before any dialing


async def test_numeric_forms_of_own_addresses_are_refused_on_every_path(make_pool, upstreams):
    """Fast path (GET HTTP/1.1), stream path (POST with a body, HTTP/1.0) and CONNECT: every numeric form of
    the admin's and the gateway's own address gets the gateway's 403, through a live upstream."""
    pool = await make_pool([upstreams[0].url()], gateway={"allowed_connect_ports": "*"})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    admin_port, gateway_port = pool.admin_address[1], pool.gateway_address[1]
    for form in LOOPBACK_FORMS:
        await assert_refused_as_loop(pool, get(form, admin_port))
        await assert_refused_as_loop(pool, get(form, admin_port, version="HTTP/1.0"))
        await assert_refused_as_loop(pool, post(form, admin_port))
        await assert_refused_as_loop(pool, connect(form, gateway_port))
        await assert_refused_as_loop(pool, connect(form, admin_port))
    assert pool.accounts.users() == []


async def test_numeric_forms_never_reach_the_admin_with_direct_fallback(make_pool):
    """fallback = "direct" with direct_allow = ["127.0.0.1/32"]: the forms still never reach the admin port
    nor the gateway (the loop check sees the canonical address), while another loopback port is dialled."""
    pool = await make_pool(
        gateway={"fallback": "direct", "direct_allow": ["127.0.0.1/32"], "allowed_connect_ports": "*"}
    )
    admin_port, gateway_port = pool.admin_address[1], pool.gateway_address[1]
    for form in LOOPBACK_FORMS:
        await assert_refused_as_loop(pool, get(form, admin_port))
        await assert_refused_as_loop(pool, post(form, admin_port))
        await assert_refused_as_loop(pool, connect(form, gateway_port))


async def test_canonical_target_is_what_goes_upstream(make_pool, upstreams, origin):
    """A numeric form of an allowed target reaches it, and the upstream is asked for the canonical host."""
    pool = await make_pool([upstreams[0].url()])
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    gateway = "http://%s:%d" % pool.gateway_address
    async with aiohttp.ClientSession() as client:
        for form in ("2130706433", "0x7f.1", "127.0.0.%31"):
            raw = get(form, origin.port, "/echo")
            answer = await exchange(pool.gateway_address, raw)
            assert status_of(answer) == 200, answer[:300]
            assert f'"Host": "127.0.0.1:{origin.port}"'.encode() in answer, answer
        async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gateway) as resp:
            assert resp.status == 200


@pytest.mark.parametrize("host", ["1.2.3.4.5", "999.1.1.1", "127.0.0.256", "exa%2fmple.com", "foo.1", "%ff"])
async def test_host_that_is_neither_name_nor_address_is_400(make_pool, host):
    """A target host that is no DNS name and no IP literal gets 400 with one line naming it."""
    pool = await make_pool()
    for payload in (get(host, 80, "/"), connect(host, 443)):
        answer = await exchange(pool.gateway_address, payload)
        assert status_of(answer) == 400, (payload, answer[:200])
        assert one_line_body(answer)


async def test_direct_fallback_checks_the_resolved_address(make_pool):
    """With fallback = "direct", a name that resolves to a loopback address (the machine's host name in
    /etc/hosts) aimed at the admin port is refused after resolution, not dialled."""
    name = socket.gethostname()
    try:
        resolved = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)[0][4][0]
    except OSError:
        pytest.skip("the host name does not resolve here")
    if resolved != "127.0.0.1":
        pytest.skip(f"the host name resolves to {resolved}, not 127.0.0.1")
    pool = await make_pool(gateway={"fallback": "direct", "direct_allow": ["127.0.0.1/32"]})
    await assert_refused_as_loop(pool, get(name, pool.admin_address[1]))
    await assert_refused_as_loop(pool, post(name, pool.admin_address[1]))


def own_names_here() -> list[str]:
    """This machine's host name, and every other name /etc/hosts gives a loopback address."""
    names = [socket.gethostname()]
    with open("/etc/hosts", encoding="utf-8", errors="replace") as hosts:
        for line in hosts:
            address, *aliases = line.partition("#")[0].split() or [""]
            if address.startswith("127.") or address == "::1":
                names += [
                    a for a in aliases if a not in names and "localhost" not in a and not a.startswith("ip6-")
                ]
    return names


async def test_own_host_names_are_refused_like_own_addresses(make_pool, upstreams):
    """CONNECT, SOCKS5 and absolute-form requests to this machine's host name (and the names /etc/hosts gives
    loopback) on the admin's or the gateway's port are refused (403 / 0x02), though the listen address is
    127.0.0.1, not a wildcard: a local upstream would resolve them to us."""
    from tests.integration.test_socks_clients import socks5_connect

    pool = await make_pool([upstreams[0].url()], gateway={"allowed_connect_ports": "*"})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    admin_port, gateway_port = pool.admin_address[1], pool.gateway_address[1]
    for name in own_names_here():
        await assert_refused_as_loop(pool, connect(name, admin_port))
        await assert_refused_as_loop(pool, connect(name.upper() + ".", gateway_port))
        await assert_refused_as_loop(pool, get(name, admin_port))
        _, writer, reply = await socks5_connect(pool.gateway_address, name, admin_port)
        writer.close()
        assert reply[1] == 0x02, (name, reply)


async def test_plain_http_to_a_port_outside_the_safe_list_is_refused(make_pool, upstreams):
    """``POST http://host:25/`` is refused with 403 before any upstream carries its lines there, like
    ``CONNECT host:25``; with allowed_http_ports = [80, 443] a listening service on another port is never
    reached; a port in the list still goes through."""
    accepted = 0

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(service, "127.0.0.1", 0)
    service_port = server.sockets[0].getsockname()[1]
    pool = await make_pool([upstreams[0].url()])
    narrow = await make_pool([upstreams[0].url()], gateway={"allowed_http_ports": [80, 443]})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    await narrow.wait_until(lambda: narrow.selector.active_count == 1)
    try:
        for gateway, port in ((pool, 25), (pool, 22), (narrow, service_port)):
            payload = (
                f"POST http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 10\r\n"
                "Connection: close\r\n\r\nHELO evil\n"
            ).encode()
            answer = await exchange(gateway.gateway_address, payload)
            assert status_of(answer) == 403, answer[:200]
            assert one_line_body(answer) == f"plain HTTP to port {port} is not allowed\n"
            assert status_of(await exchange(gateway.gateway_address, connect("127.0.0.1", port))) == 403
        assert accepted == 0
        assert status_of(await exchange(pool.gateway_address, get("127.0.0.1", service_port, "/"))) == 502
        assert accepted == 1  # the default list has the unprivileged ports: carried, and the service hung up
    finally:
        server.close()
