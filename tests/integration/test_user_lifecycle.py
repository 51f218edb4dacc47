"""The user life cycle on a real gateway: disable, enable, remove, debit, per-user limits and usage.

Real pproxy upstreams and an aiohttp origin; the CLI runs as a subprocess on the serving database and
reaches the gateway's admin API through the gateway's beat (``pool.beacon``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.app import ProxyPool
from pool.store import SqliteStore
from tests.integration.test_socks_clients import http_get_inside, socks5_connect
from tests.integration.test_users_credits import (
    admin_url,
    basic,
    cli,
    raw_connect,
    raw_get,
    read_reply,
    users_pool,
)
from tests.support.admin import admin_session
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)


async def api(method: str, pool: ProxyPool, path: str, body: Any = None) -> tuple[int, Any]:
    async with admin_session(pool) as client, client.request(method, admin_url(pool, path), json=body) as resp:
        return resp.status, await resp.json()


async def user_row(pool: ProxyPool, name: str) -> dict[str, Any]:
    status, listing = await api("GET", pool, "/api/users")
    assert status == 200
    return next(u for u in listing["users"] if u["name"] == name)


async def new_user(pool: ProxyPool, name: str, credits: int = 100) -> str:
    status, created = await api("POST", pool, "/api/users", {"name": name, "credits": credits})
    assert status == 201
    return str(created["password"])


async def socks_status(pool: ProxyPool, origin_port: int, name: str, password: str) -> bytes:
    """The SOCKS5 answer to a username/password CONNECT: the RFC 1929 status on failure, else the reply."""
    reader, writer, answer = await socks5_connect(
        pool.gateway_address, "127.0.0.1", origin_port, methods=b"\x02",  # type: ignore[arg-type]
        credentials=(name.encode(), password.encode()),
    )
    try:
        if answer[:2] == b"\x05\x00":
            await http_get_inside(reader, writer)
        return answer
    finally:
        writer.close()


async def test_disable_enable_remove_take_effect_at_once(make_pool, upstreams, origin):
    """A disabled user gets 407 on the very next request (HTTP, CONNECT) and the RFC 1929 failure on SOCKS5;
    enabled again it works; removed it is gone, its name free for a new user whose old password fails."""
    pool = await users_pool(make_pool, upstreams)
    password = await new_user(pool, "erin")
    auth = basic("erin", password)
    assert (await raw_get(pool, origin.port, auth)).status == 200
    assert (await socks_status(pool, origin.port, "erin", password))[1] == 0
    status, view = await api("PATCH", pool, "/api/users/erin", {"enabled": False})
    assert status == 200 and view["enabled"] is False
    refused = await raw_get(pool, origin.port, auth)
    assert refused.status == 407 and refused.headers["proxy-authenticate"] == 'Basic realm="proxy-pool"'
    assert (await raw_connect(pool, origin.port, auth)).status == 407
    assert await socks_status(pool, origin.port, "erin", password) == b"\x01\x01"
    status, view = await api("PATCH", pool, "/api/users/erin", {"enabled": True})
    assert status == 200 and view["enabled"] is True
    assert (await raw_get(pool, origin.port, auth)).status == 200
    assert (await raw_connect(pool, origin.port, auth)).status == 200
    assert (await socks_status(pool, origin.port, "erin", password))[1] == 0

    status, answer = await api("DELETE", pool, "/api/users/erin")
    assert (status, answer) == (200, {"deleted": "erin"})
    assert (await raw_get(pool, origin.port, auth)).status == 407
    assert await socks_status(pool, origin.port, "erin", password) == b"\x01\x01"
    assert all(u["name"] != "erin" for u in (await api("GET", pool, "/api/users"))[1]["users"])
    assert (await api("DELETE", pool, "/api/users/erin"))[0] == 404
    again = await new_user(pool, "erin", 5)
    assert (await raw_get(pool, origin.port, auth)).status == 407  # the removed user's password
    assert (await raw_get(pool, origin.port, basic("erin", again))).status == 200
    assert (await user_row(pool, "erin"))["credits"] == 4
    await pool.accounts.flush()
    states = await pool.store.credit_state()
    assert len(states) == 2 and states[0].free == states[0].total == 95  # the removed one's lease given back


async def test_api_bad_input_changes_nothing(make_pool, upstreams):
    """Unknown names, wrong types, negative or zero limits, unknown fields: a 4xx with one error, nothing changed."""
    pool = await users_pool(make_pool, upstreams)
    await new_user(pool, "fay", 10)
    before = await user_row(pool, "fay")
    bad = [
        ("PATCH", "/api/users/nobody", {"enabled": False}, 404),
        ("PATCH", "/api/users/fay", {"enabled": "no"}, 400),
        ("PATCH", "/api/users/fay", {"enabled": 0}, 400),
        ("PATCH", "/api/users/fay", {"enabled": None}, 400),
        ("PATCH", "/api/users/fay", {"max_connections": 0}, 400),
        ("PATCH", "/api/users/fay", {"max_connections": -1}, 400),
        ("PATCH", "/api/users/fay", {"max_connections": 1.5}, 400),
        ("PATCH", "/api/users/fay", {"max_connections": True}, 400),
        ("PATCH", "/api/users/fay", {"max_requests_per_second": -2}, 400),
        ("PATCH", "/api/users/fay", {"max_requests_per_second": "1"}, 400),
        ("PATCH", "/api/users/fay", {"max_requests_per_second": 1e300}, 400),
        ("PATCH", "/api/users/fay", {"enabled": False, "credits": 5}, 400),
        ("PATCH", "/api/users/fay", {}, 400),
        ("PATCH", "/api/users/fay", [1], 400),
        ("DELETE", "/api/users/nobody", None, 404),
        ("POST", "/api/users/nobody/credits", {"amount": -1}, 404),
        ("POST", "/api/users/fay/credits", {"amount": 0}, 400),
        ("POST", "/api/users/fay/credits", {"amount": -1.5}, 400),
        ("POST", "/api/users/fay/credits", {"amount": "-1"}, 400),
        ("POST", "/api/users/fay/credits", {"amount": -(10**13)}, 400),
    ]
    for method, path, body, status in bad:
        got, answer = await api(method, pool, path, body)
        assert got == status, (method, path, body, answer)
        assert isinstance(answer.get("error"), str) and "\n" not in answer["error"]
    assert await user_row(pool, "fay") == before


async def test_negative_credit_debits_never_below_zero(make_pool, upstreams, origin):
    """``POST .../credits`` with a negative amount debits (out of the gateway's own lease: this lone
    gateway holds every credit); a debit beyond the balance stops at 0 (then 402); the ledger agrees."""
    pool = await users_pool(make_pool, upstreams)
    password = await new_user(pool, "gil", 10)
    assert await api("POST", pool, "/api/users/gil/credits", {"amount": -4}) == (200, {"credits": 6, "debited": 4})
    assert await api("POST", pool, "/api/users/gil/credits", {"amount": -100}) == (200, {"credits": 0, "debited": 6})
    assert (await raw_get(pool, origin.port, basic("gil", password))).status == 402
    await pool.accounts.flush()
    record = await pool.store.get_user("gil")
    assert record.balance == 0  # the ledger agrees with the gateway
    assert sorted(e.delta for e in await pool.store.ledger_since(0, user_id=record.id)) == [-6, -4, 10]
    assert await api("POST", pool, "/api/users/gil/credits", {"amount": 3}) == (200, {"credits": 3})
    assert (await raw_get(pool, origin.port, basic("gil", password))).status == 200


@pytest.mark.timeout(180)  # several interpreter start-ups on a possibly busy machine
async def test_cli_life_cycle_on_a_serving_gateway(make_pool, upstreams, origin, tmp_path: Path):
    """The CLI on the database a gateway serves: balances printed are the gateway's (unflushed spends counted),
    disable/enable/remove are in force when the command returns, bad input exits 2 in one line, changing nothing."""
    pool = await users_pool(make_pool, upstreams, credits={"flush_interval": 30})
    db = str(tmp_path / "pool.db")
    password = await new_user(pool, "max", 2)
    auth = basic("max", password)
    assert (await raw_get(pool, origin.port, auth)).status == 200
    assert (await raw_get(pool, origin.port, auth)).status == 200
    assert (await raw_get(pool, origin.port, auth)).status == 402  # the gateway's balance is 0 now, unflushed
    code, out, err = await cli("users", "credit", "max", "3", "--db", db)
    assert (code, out.strip()) == (0, "max: 3 credits"), err
    assert pool.accounts.balance("max") == 3
    code, out, err = await cli("users", "debit", "max", "1", "--db", db)
    assert (code, out.strip()) == (0, "max: 2 credits"), err
    code, out, err = await cli("users", "disable", "max", "--db", db)
    assert (code, out.strip()) == (0, "max: disabled"), err
    assert (await raw_get(pool, origin.port, auth)).status == 407
    code, out, err = await cli("users", "list", "--format", "json", "--db", db)
    (row,) = json.loads(out)
    assert (row["name"], row["credits"], row["enabled"]) == ("max", 2, False)
    code, out, err = await cli("users", "list", "--db", db)
    assert out.split("\n")[0].split() == [
        "ID", "NAME", "CREDITS", "ENABLED", "REQUESTS", "TUNNELS", "BYTES_UP", "BYTES_DOWN", "LAST_SEEN"
    ]
    for bad in (
        ("users", "debit", "max", "-1"),
        ("users", "debit", "max", "1.5"),
        ("users", "debit", "max", "0"),
        ("users", "debit", "nobody", "1"),
        ("users", "credit", "nobody", "1"),
        ("users", "disable", "nobody"),
        ("users", "enable", "no-body"),
        ("users", "remove", "nobody"),
        ("users", "limit", "max", "--max-connections", "0"),
        ("users", "limit", "max", "--max-connections", "1.5"),
        ("users", "limit", "max", "--max-rps", "-1"),
        ("users", "limit", "max", "--max-rps", "fast"),
        ("users", "limit", "nobody", "--max-rps", "1"),
        ("users", "limit", "max"),
    ):
        code, _, err = await cli(*bad, "--db", db)
        assert code == 2, (bad, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (bad, err)
    assert pool.accounts.user("max").max_connections is None
    code, out, err = await cli("users", "enable", "max", "--db", db)
    assert code == 0, err
    assert (await raw_get(pool, origin.port, auth)).status == 200
    assert pool.accounts.balance("max") == 1
    code, out, err = await cli("users", "limit", "max", "--max-connections", "4", "--max-rps", "2.5", "--db", db)
    assert (code, out.strip()) == (0, "max: max_connections 4, max_requests_per_second 2.5"), err
    view = pool.accounts.user("max")
    assert (view.max_connections, view.max_requests_per_second) == (4, 2.5)
    code, out, err = await cli("users", "limit", "max", "--max-connections", "none", "--db", db)
    assert (code, out.strip()) == (0, "max: max_connections none, max_requests_per_second 2.5"), err
    code, out, err = await cli("users", "remove", "max", "--db", db)
    assert code == 0, err
    assert (await raw_get(pool, origin.port, auth)).status == 407
    assert "max" not in [u.name for u in pool.accounts.users()]
    code, out, err = await cli("users", "add", "nia", "--credits", "1", "--format", "json", "--db", db)
    assert code == 0, err
    created = json.loads(out)
    assert (await raw_get(pool, origin.port, basic("nia", created["password"]))).status == 200  # works at once


@pytest.mark.timeout(120)
async def test_cli_without_a_gateway_works_on_the_database(tmp_path: Path):
    """No gateway serving: disable, limit, debit (never below 0), remove on the database itself."""
    db = str(tmp_path / "cli.db")
    code, out, err = await cli("users", "add", "olga", "--credits", "5", "--format", "json", "--db", db)
    assert code == 0, err
    store = await SqliteStore.open(db)
    try:  # a serve that crashed holding every credit (a lone gateway leases them all)
        assert await store.lease_credits("crashed", (await store.get_user("olga")).id, 5) == 5
    finally:
        await store.close()
    code, out, err = await cli("users", "debit", "olga", "2", "--db", db)
    assert (code, out.strip(), err) == (0, "olga: 3 credits", ""), err
    code, out, err = await cli("users", "debit", "olga", "7", "--db", db)
    assert (code, out.strip()) == (0, "olga: 0 credits"), err
    assert "debited 3 of 7" in err and len(err.strip().splitlines()) == 1
    code, out, err = await cli("users", "disable", "olga", "--db", db)
    assert code == 0, err
    code, out, err = await cli("users", "limit", "olga", "--max-connections", "2", "--db", db)
    assert code == 0, err
    code, out, err = await cli("users", "list", "--format", "json", "--db", db)
    (row,) = json.loads(out)
    assert (row["credits"], row["enabled"], row["max_connections"], row["requests"]) == (0, False, 2, 0)
    code, out, err = await cli("users", "remove", "olga", "--db", db)
    assert code == 0, err
    code, out, err = await cli("users", "list", "--format", "json", "--db", db)
    assert json.loads(out) == []


async def test_usage_counted_per_user_and_flushed(make_pool, upstreams, origin):
    """Requests, tunnels, bytes each way and last-seen per user, in /api/users and (after a flush) the database;
    SOCKS tunnels count too; no user name ever reaches the metrics."""
    pool = await users_pool(make_pool, upstreams)
    password = await new_user(pool, "hal")
    hal = basic("hal", password)
    other = basic("ivy", await new_user(pool, "ivy"))
    for _ in range(3):
        assert (await raw_get(pool, origin.port, hal)).status == 200
    assert (await raw_connect(pool, origin.port, hal)).status == 200
    assert (await socks_status(pool, origin.port, "hal", password))[1] == 0
    host, port = pool.gateway_address  # type: ignore[misc]
    reader, writer = await asyncio.open_connection(host, port)
    body = b"y" * 5000
    writer.write(
        f"POST http://127.0.0.1:{origin.port}/body HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Authorization: {hal}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    )
    assert (await read_reply(reader)).status == 200
    writer.close()

    async def counted() -> bool:
        row = await user_row(pool, "hal")
        return bool(row["tunnels"] == 2 and row["bytes_down"] > 0 and row["requests"] == 4)

    # a tunnel's bytes count when the gateway sees it close: poll its state
    await eventually(counted, "hal's two tunnels and four requests counted")
    row = await user_row(pool, "hal")
    assert (row["requests"], row["tunnels"]) == (4, 2)
    assert row["bytes_up"] >= 5000 and row["bytes_down"] > 0 and row["last_seen"] is not None
    quiet = await user_row(pool, "ivy")
    assert (quiet["requests"], quiet["tunnels"], quiet["bytes_up"], quiet["bytes_down"]) == (0, 0, 0, 0)
    assert quiet["last_seen"] is None
    assert (await raw_get(pool, origin.port, other)).status == 200
    await pool.accounts.flush()
    stored = await pool.store.usage()
    hal_id = (await pool.store.get_user("hal")).id
    assert (stored[hal_id].requests, stored[hal_id].tunnels, stored[hal_id].bytes_up) == (4, 2, row["bytes_up"])
    assert await user_row(pool, "hal") == row  # flushed: shown the same, not twice
    await pool.accounts.flush()  # nothing new: nothing added twice
    assert (await pool.store.usage())[hal_id].requests == 4
    async with admin_session(pool) as client, client.get(admin_url(pool, "/metrics")) as resp:
        exposition = await resp.text()
    assert "hal" not in exposition and "ivy" not in exposition  # no user name as a label


async def test_requests_per_second_limit_answers_429(make_pool, upstreams, origin):
    """Over ``max_requests_per_second`` the gateway answers 429 with Retry-After (SOCKS: 0x02), other users
    unaffected, nothing charged."""
    pool = await users_pool(make_pool, upstreams)
    jo_password = await new_user(pool, "jo")
    jo = basic("jo", jo_password)
    kim = basic("kim", await new_user(pool, "kim"))
    status, view = await api("PATCH", pool, "/api/users/jo", {"max_requests_per_second": 0.01})
    assert status == 200 and view["max_requests_per_second"] == 0.01
    assert (await raw_get(pool, origin.port, jo)).status == 200  # the bucket holds one
    limited = await raw_get(pool, origin.port, jo)
    assert limited.status == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert b"too many requests" in limited.body and limited.body.count(b"\n") == 1
    assert (await raw_connect(pool, origin.port, jo)).status == 429
    assert (await socks_status(pool, origin.port, "jo", jo_password))[:2] == b"\x05\x02"
    assert (await raw_get(pool, origin.port, kim)).status == 200
    assert (await user_row(pool, "jo"))["credits"] == 99  # a refused request costs nothing
    assert (await user_row(pool, "jo"))["requests"] == 1
    status, view = await api("PATCH", pool, "/api/users/jo", {"max_requests_per_second": None})
    assert status == 200 and view["max_requests_per_second"] is None
    assert (await raw_get(pool, origin.port, jo)).status == 200


async def test_max_connections_limit(make_pool, upstreams, origin):
    """With ``max_connections = 1`` a second connection is refused (429) while a tunnel is open, admitted after;
    more requests on the one connection are fine."""
    pool = await users_pool(make_pool, upstreams)
    lee_password = await new_user(pool, "lee")
    lee = basic("lee", lee_password)
    assert (await api("PATCH", pool, "/api/users/lee", {"max_connections": 1}))[0] == 200
    host, port = pool.gateway_address  # type: ignore[misc]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {lee}\r\n\r\n".encode())
    assert (await read_reply(reader)).status == 200
    refused = await raw_get(pool, origin.port, lee)
    assert refused.status == 429 and b"too many connections" in refused.body and "retry-after" in refused.headers
    assert (await socks_status(pool, origin.port, "lee", lee_password))[:2] == b"\x05\x02"
    writer.close()
    await writer.wait_closed()
    # the gateway notices the close on its own schedule: poll its state
    await eventually(lambda: not pool.accounts._conns, "the connection slot free again")
    # one keep-alive connection: its second request holds the same slot
    reader, writer = await asyncio.open_connection(host, port)
    for _ in range(2):
        writer.write(
            f"GET http://127.0.0.1:{origin.port}/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Authorization: {lee}\r\n\r\n".encode()
        )
        assert (await read_reply(reader)).status == 200
    writer.close()


async def test_a_client_that_leaves_during_a_lease_wait_pays_nothing_and_holds_no_slot(make_pool, upstreams, origin):
    """A request waiting for a lease whose client goes away: when the lease comes, its charge goes back and the
    connection slot (max_connections) it took is free again."""
    pool = await users_pool(make_pool, upstreams, credits={"lease_wait": 20})
    password = await new_user(pool, "pat", 5)
    assert (await api("PATCH", pool, "/api/users/pat", {"max_connections": 1}))[0] == 200
    auth = basic("pat", password)
    assert (await raw_get(pool, origin.port, auth)).status == 200
    await eventually(lambda: not pool.accounts._conns and not pool.gateway._clients, "the first connection gone")
    pool.accounts._by_name["pat"].balance = 0  # as if its lease were elsewhere: 4 credits known, none here
    host, port = pool.gateway_address  # type: ignore[misc]
    _, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET http://127.0.0.1:{origin.port}/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Authorization: {auth}\r\n\r\n".encode()
    )
    await eventually(lambda: pool.accounts._waiting == 1, "the request waiting for a lease")
    writer.close()
    await writer.wait_closed()
    await eventually(lambda: not pool.gateway._clients, "the gateway seeing the client leave")
    user = await pool.store.get_user("pat")
    await pool.store.append_ledger([(user.id, 3, "credit")])  # free credits: the waiting request gets a lease
    await eventually(lambda: pool.accounts._waiting == 0, "the wait over")
    assert not pool.accounts._conns
    assert pool.accounts.balance("pat") == 4 + 3  # nothing charged for the request nobody waited for
