"""Users and credits end to end: a real gateway with auth = "users", pproxy upstreams, an origin."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config import Settings
from gateway.app import ProxyPool
from gateway.cli import build_parser
from gateway.cli.users import users_command
from pool.accounts import create_user
from pool.errors import DuplicateError, InvalidInputError, NotFoundError
from pool.store import SqliteStore
from tests.integration.conftest import pool_settings
from tests.support.admin import admin_session

pytestmark = pytest.mark.timeout(60)

USERS = {"auth": "users", "allowed_connect_ports": "*"}


def gw_url(pool: ProxyPool) -> str:
    host, port = pool.gateway_address  # type: ignore[misc]
    return f"http://{host}:{port}"


def admin_url(pool: ProxyPool, path: str) -> str:
    host, port = pool.admin_address  # type: ignore[misc]
    return f"http://{host}:{port}{path}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def users_pool(make_pool, upstreams, **overrides: Any) -> ProxyPool:
    gateway = {**USERS, **overrides.pop("gateway", {})}
    pool = await make_pool([upstreams[0].url("socks5")], gateway=gateway, **overrides)
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    return pool


async def ledger_sum(pool: ProxyPool, name: str) -> int:
    user = await pool.store.get_user(name)
    return sum(e.delta for e in await pool.store.ledger_since(0, user_id=user.id))


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
    return Reply(status, headers, body)


async def raw_get(pool: ProxyPool, origin_port: int, auth: str | None, extra: str = "") -> Reply:
    """One absolute-form GET on its own connection, with exactly the headers given."""
    host, port = pool.gateway_address  # type: ignore[misc]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        auth_line = f"Proxy-Authorization: {auth}\r\n" if auth else ""
        writer.write(
            f"GET http://127.0.0.1:{origin_port}/echo HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n"
            f"{auth_line}{extra}Connection: close\r\n\r\n".encode()
        )
        return await read_reply(reader)
    finally:
        writer.close()


async def raw_connect(pool: ProxyPool, origin_port: int, auth: str | None) -> Reply:
    """CONNECT to the (plain HTTP) origin; on 200, one GET through the tunnel."""
    host, port = pool.gateway_address  # type: ignore[misc]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        auth_line = f"Proxy-Authorization: {auth}\r\n" if auth else ""
        writer.write(
            f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n{auth_line}\r\n".encode()
        )
        established = await read_reply(reader)
        if established.status != 200:
            return established
        writer.write(
            f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\nConnection: close\r\n\r\n".encode()
        )
        inner = await read_reply(reader)
        assert inner.status == 200
        return established
    finally:
        writer.close()


# authentication ---------------------------------------------------------------------------
async def test_missing_or_wrong_credentials_get_407(make_pool, upstreams, origin):
    """No header, a wrong password, someone else's password, no name, a Bearer token: 407 with the realm."""
    pool = await users_pool(make_pool, upstreams)
    alice = await pool.accounts.add_user("alice", 10)
    bob = await pool.accounts.add_user("bob", 10)
    cases = [
        None,
        basic("alice", "wrong"),
        basic("alice", bob.password),
        basic("nobody", alice.password),
        basic("country-de", alice.password),
        basic("", alice.password),
        f"Bearer {alice.password}",
        "Basic !!!not-base64!!!",
    ]
    for auth in cases:
        reply = await raw_get(pool, origin.port, auth)
        assert reply.status == 407, auth
        assert reply.headers["proxy-authenticate"] == 'Basic realm="proxy-pool"'
        assert reply.body.count(b"\n") == 1
    assert pool.accounts.balance("alice") == 10 and pool.accounts.balance("bob") == 10
    ok = await raw_get(pool, origin.port, basic("alice", alice.password))
    assert ok.status == 200
    assert json.loads(ok.body)["peer"] == upstreams[0].host
    assert pool.accounts.balance("alice") == 9


async def test_every_request_on_a_kept_alive_connection_is_authenticated(make_pool, upstreams, origin):
    """A second request on the same connection without credentials gets 407; auth is per request."""
    pool = await users_pool(make_pool, upstreams)
    alice = await pool.accounts.add_user("alice", 10)
    host, port = pool.gateway_address  # type: ignore[misc]
    reader, writer = await asyncio.open_connection(host, port)
    target = f"http://127.0.0.1:{origin.port}/echo"
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {basic('alice', alice.password)}\r\n\r\n".encode()
        )
        assert (await read_reply(reader)).status == 200
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (await read_reply(reader)).status == 407
    finally:
        writer.close()
    assert pool.accounts.balance("alice") == 9


async def test_routing_params_and_headers_cannot_bypass_auth_or_billing(make_pool, upstreams, origin):
    """Parameters in the username or X-Proxy-Pool-* headers neither replace credentials nor skip the charge."""
    pool = await users_pool(make_pool, upstreams)
    alice = await pool.accounts.add_user("alice", 10)
    # headers alone, or headers naming a user, are not credentials
    for extra in (
        "X-Proxy-Pool-Session: s1\r\n",
        "X-Proxy-Pool-User: alice\r\n",
        "X-Proxy-Pool-Country: de\r\n",
    ):
        assert (await raw_get(pool, origin.port, None, extra)).status == 407
    # a routing parameter in the username with a wrong password
    assert (await raw_get(pool, origin.port, basic("alice-session-s1", "wrong"))).status == 407
    # parameters with the right password work and are charged like any request
    for _ in range(3):
        reply = await raw_get(
            pool, origin.port, basic("alice-session-s1", alice.password), "X-Proxy-Pool-Session: s2\r\n"
        )
        assert reply.status == 200
    assert pool.accounts.balance("alice") == 7
    # an unknown routing header or parameter with valid credentials is refused (400) before any charge
    assert (
        await raw_get(pool, origin.port, basic("alice", alice.password), "X-Proxy-Pool-Cost: 0\r\n")
    ).status == 400
    assert (await raw_get(pool, origin.port, basic("alice-cost-0", alice.password))).status == 400
    assert pool.accounts.balance("alice") == 7


async def test_auth_none_has_no_users_and_no_charges(make_pool, upstreams, origin):
    """With auth = none requests pass without credentials and balances do not move."""
    pool = await make_pool([upstreams[0].url("socks5")])
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    await pool.accounts.add_user("alice", 3)
    for _ in range(5):
        assert (await raw_get(pool, origin.port, None)).status == 200
    assert pool.accounts.balance("alice") == 3


# credits ----------------------------------------------------------------------------------
async def test_out_of_credits_gets_402(make_pool, upstreams, origin):
    """A user with a balance below the cost gets 402 with a one-line body, for requests and CONNECT."""
    pool = await users_pool(make_pool, upstreams)
    alice = await pool.accounts.add_user("alice", 1)
    auth = basic("alice", alice.password)
    assert (await raw_get(pool, origin.port, auth)).status == 200
    reply = await raw_get(pool, origin.port, auth)
    assert reply.status == 402
    assert b"credits" in reply.body and reply.body.count(b"\n") == 1
    assert (await raw_connect(pool, origin.port, auth)).status == 402
    assert pool.accounts.balance("alice") == 0


async def test_40_parallel_requests_on_20_credits_give_exactly_20_successes(make_pool, upstreams, origin):
    """Charging is atomic: 40 concurrent requests on 20 credits are 20 x 200 and 20 x 402, balance 0."""
    pool = await users_pool(make_pool, upstreams)
    alice = await pool.accounts.add_user("alice", 20)
    auth = {"Proxy-Authorization": "Basic " + base64.b64encode(f"alice:{alice.password}".encode()).decode()}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one() -> int:
            async with client.get(
                f"http://127.0.0.1:{origin.port}/echo", proxy=gw_url(pool), headers=auth
            ) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(40)))
    assert sorted(statuses) == [200] * 20 + [402] * 20
    assert pool.accounts.balance("alice") == 0
    await pool.accounts.flush()
    assert await ledger_sum(pool, "alice") == 0


async def test_connect_is_billed_like_a_request(make_pool, upstreams, origin):
    """Each CONNECT costs cost_per_request; an unauthenticated CONNECT gets 407 and costs nothing."""
    pool = await users_pool(make_pool, upstreams, credits={"cost_per_request": 2})
    alice = await pool.accounts.add_user("alice", 10)
    assert (await raw_connect(pool, origin.port, None)).status == 407
    assert (await raw_connect(pool, origin.port, basic("alice", "nope"))).status == 407
    for _ in range(3):
        assert (await raw_connect(pool, origin.port, basic("alice", alice.password))).status == 200
    assert pool.accounts.balance("alice") == 4
    assert (await raw_get(pool, origin.port, basic("alice", alice.password))).status == 200
    assert pool.accounts.balance("alice") == 2


async def test_gateway_failure_503_is_refunded(make_pool, origin):
    """With refund_gateway_failures (default) a 503 from an empty pool costs nothing; the ledger shows why."""
    pool = await make_pool(gateway=USERS)
    alice = await pool.accounts.add_user("alice", 5)
    reply = await raw_get(pool, origin.port, basic("alice", alice.password))
    assert reply.status == 503
    assert pool.accounts.balance("alice") == 5
    await pool.accounts.flush()
    user = await pool.store.get_user("alice")
    rows = [(e.kind, e.delta) for e in await pool.store.ledger_since(0, user_id=user.id)]
    assert rows == [("credit", 5), ("spend", -1), ("refund", 1)]
    assert await ledger_sum(pool, "alice") == 5


async def test_gateway_failure_is_charged_when_refunds_are_off(make_pool, origin):
    """With refund_gateway_failures = false a 503 still costs the request."""
    pool = await make_pool(gateway=USERS, credits={"refund_gateway_failures": False})
    alice = await pool.accounts.add_user("alice", 5)
    assert (await raw_get(pool, origin.port, basic("alice", alice.password))).status == 503
    assert pool.accounts.balance("alice") == 4


# persistence ------------------------------------------------------------------------------
async def test_balance_survives_a_restart(make_pool, upstreams, origin, tmp_path):
    """Stop the pool, start a new one on the same database: same balance, same password, invariant holds."""
    listing = tmp_path / "restart.txt"
    listing.write_text(upstreams[0].url("socks5") + "\n")
    first = ProxyPool(pool_settings(tmp_path, gateway=USERS), extra_sources=[str(listing)])
    await first.start()
    try:
        await first.wait_until(lambda: first.selector.active_count == 1)
        alice = await first.accounts.add_user("alice", 10)
        for _ in range(3):
            assert (await raw_get(first, origin.port, basic("alice", alice.password))).status == 200
        assert first.accounts.balance("alice") == 7
    finally:
        await first.stop()  # flushes the unflushed spends
    second = await make_pool(gateway=USERS)
    assert second.accounts.balance("alice") == 7
    assert await ledger_sum(second, "alice") == 7
    await second.wait_until(lambda: second.selector.active_count == 1)
    assert (await raw_get(second, origin.port, basic("alice", alice.password))).status == 200
    assert second.accounts.balance("alice") == 6


async def test_ledger_invariant_after_mixed_traffic(make_pool, upstreams, origin):
    """After requests, CONNECTs, 402s, top-ups and a flush, every balance equals its ledger sum."""
    pool = await users_pool(make_pool, upstreams)
    users = {
        name: await pool.accounts.add_user(name, credits) for name, credits in (("alice", 6), ("bob", 3))
    }
    for name, new in users.items():
        auth = basic(name, new.password)
        for _ in range(4):
            await raw_get(pool, origin.port, auth)
        await raw_connect(pool, origin.port, auth)
    await pool.accounts.credit("bob", 2)
    await raw_get(pool, origin.port, basic("bob", users["bob"].password))
    await pool.accounts.flush()
    assert pool.accounts.balance("alice") == 1
    assert pool.accounts.balance("bob") == 1
    for name in users:
        assert pool.accounts.balance(name) == await ledger_sum(pool, name)


# events, metrics, logs --------------------------------------------------------------------
async def test_events_metrics_and_logs_keep_names_and_passwords_out(make_pool, upstreams, origin, caplog):
    """Credit events fire once each; credits_spent_total counts; no log or metric line shows a name or password."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="aiosqlite")  # as gateway.logs.setup_logging does: it logs SQL
    pool = await users_pool(
        make_pool, upstreams, credits={"low_balance_threshold": 2}, log={"access_log": True}
    )
    seen: list[Any] = []
    pool.events.add_listener(seen.append)
    zelda = await pool.accounts.add_user("zelda", 3)
    auth = basic("zelda", zelda.password)
    statuses = [(await raw_get(pool, origin.port, auth)).status for _ in range(5)]
    assert statuses == [200, 200, 200, 402, 402]
    assert (await raw_get(pool, origin.port, basic("zelda", "wrong-secret"))).status == 407
    user_id = (await pool.store.get_user("zelda")).id
    credit_events = [(e.type, e.payload) for e in seen if e.type.startswith("credits.")]
    assert credit_events == [
        ("credits.low_balance", {"user_id": user_id, "balance": 1, "threshold": 2}),
        ("credits.exhausted", {"user_id": user_id}),
    ]
    await pool.accounts.flush()
    async with aiohttp.ClientSession() as client, client.get(admin_url(pool, "/metrics")) as resp:
        metrics = await resp.text()
    assert "proxy_pool_credits_spent_total 3.0" in metrics
    await pool.events.drain(2.0)
    for secret in ("zelda", zelda.password, "wrong-secret"):
        assert secret not in metrics
        assert secret not in caplog.text


# admin API --------------------------------------------------------------------------------
async def test_api_users_create_list_credit(make_pool, upstreams, origin):
    """POST /api/users answers the password once; it works at once; credits top up; bad input changes nothing."""
    pool = await users_pool(make_pool, upstreams)
    async with admin_session(pool) as client:
        async with client.post(admin_url(pool, "/api/users"), json={"name": "carol", "credits": 2}) as resp:
            assert resp.status == 201
            created = await resp.json()
        assert created["name"] == "carol" and created["credits"] == 2 and len(created["password"]) >= 32
        assert (await raw_get(pool, origin.port, basic("carol", created["password"]))).status == 200
        async with client.post(admin_url(pool, "/api/users/carol/credits"), json={"amount": 5}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"credits": 6}
        async with client.get(admin_url(pool, "/api/users")) as resp:
            listing = await resp.json()
        (listed,) = listing["users"]
        assert {k: listed[k] for k in ("id", "name", "credits", "enabled")} == {
            "id": created["id"], "name": "carol", "credits": 6, "enabled": True
        }
        assert "password" not in json.dumps(listing)
        bad = [
            ("/api/users", {"name": "carol", "credits": 1}, 409),
            ("/api/users", {"name": "car-ol"}, 400),
            ("/api/users", {"name": "session"}, 400),
            ("/api/users", {"name": "dave", "credits": -1}, 400),
            ("/api/users", {"credits": 1}, 400),
            ("/api/users/carol/credits", {"amount": 0}, 400),
            ("/api/users/carol/credits", {"amount": 1.5}, 400),
            ("/api/users/carol/credits", {"amount": "5"}, 400),
            ("/api/users/carol/credits", {}, 400),
            ("/api/users/nobody/credits", {"amount": 5}, 404),
        ]
        for path, body, status in bad:
            async with client.post(admin_url(pool, path), json=body) as resp:
                assert resp.status == status, (path, body)
                assert "error" in await resp.json()
        async with client.get(admin_url(pool, "/api/users")) as resp:
            assert await resp.json() == listing
    await pool.accounts.flush()
    assert await ledger_sum(pool, "carol") == 6


# CLI --------------------------------------------------------------------------------------
async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(120)  # several interpreter start-ups on a possibly busy machine
async def test_cli_users_add_list_credit_and_bad_input(tmp_path: Path):
    """`users add` prints the password once, `list` shows balances, `credit` tops up; mistakes exit 2 in one line."""
    db = str(tmp_path / "cli.db")
    code, out, _ = await cli("users", "add", "dave", "--credits", "3", "--format", "json", "--db", db)
    assert code == 0
    added = json.loads(out)
    assert added["name"] == "dave" and added["credits"] == 3 and len(added["password"]) >= 32
    code, out, _ = await cli("users", "credit", "dave", "4", "--db", db)
    assert (code, out.strip()) == (0, "dave: 7 credits")
    bad_inputs = (
        ("users", "credit", "dave", "-1"),
        ("users", "credit", "nobody", "1"),
        ("users", "add", "da-ve"),
        ("users", "add", "dave"),
    )
    for bad in bad_inputs:
        code, _, err = await cli(*bad, "--db", db)
        assert code == 2, bad
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (bad, err)
    code, out, _ = await cli("users", "list", "--format", "json", "--db", db)
    (listed,) = json.loads(out)
    assert (listed["id"], listed["name"], listed["credits"], listed["enabled"]) == (added["id"], "dave", 7, True)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (("users", "credit", "dave", "0"), InvalidInputError),
        (("users", "credit", "dave", "2.5"), InvalidInputError),
        (("users", "credit", "dave", "ten"), InvalidInputError),
        (("users", "credit", "dave", "-3"), InvalidInputError),
        (("users", "credit", "nobody", "1"), NotFoundError),
        (("users", "add", "dave"), DuplicateError),
        (("users", "add", "protocol"), InvalidInputError),
        (("users", "add", "a:b"), InvalidInputError),
        (("users", "add", "erin", "--credits", "-5"), InvalidInputError),
    ],
)
async def test_cli_users_bad_input_raises_a_pool_error_and_changes_nothing(tmp_path: Path, argv, error):
    """Every bad `users` input is a pool error (the CLI's one-line exit 2) and leaves the database as it was."""
    db = str(tmp_path / "cli.db")
    store = await SqliteStore.open(db)
    try:
        await create_user(store, "dave", 7)
    finally:
        await store.close()
    args = build_parser().parse_args([*argv, "--db", db])
    with pytest.raises(error):
        await users_command(args, Settings(storage={"path": db}))
    store = await SqliteStore.open(db)
    try:
        assert [(u.name, u.balance) for u in await store.list_users()] == [("dave", 7)]
        assert len(await store.ledger_since(0)) == 1
    finally:
        await store.close()


async def test_cli_changes_reach_a_running_gateway(make_pool, upstreams, origin, tmp_path):
    """A user added and credited by the CLI on the serving database can use the gateway after a flush."""
    pool = await users_pool(make_pool, upstreams)
    db = str(tmp_path / "pool.db")
    code, out, _ = await cli("users", "add", "erin", "--credits", "1", "--format", "json", "--db", db)
    assert code == 0
    password = json.loads(out)["password"]
    await pool.accounts.flush()
    auth = basic("erin", password)
    assert (await raw_get(pool, origin.port, auth)).status == 200
    assert (await raw_get(pool, origin.port, auth)).status == 402
    code, _, _ = await cli("users", "credit", "erin", "2", "--db", db)
    assert code == 0
    await pool.accounts.flush()
    assert (await raw_get(pool, origin.port, auth)).status == 200
    assert pool.accounts.balance("erin") == 1
    await pool.accounts.flush()
    assert await ledger_sum(pool, "erin") == 1


async def test_new_password_by_api_and_cli_retires_the_old_one(make_pool, upstreams, origin, tmp_path):
    """POST /api/users/{name}/password and `users password NAME` show a new password once; the old one
    is refused at once (API) or after the gateway's next flush (CLI on the serving database)."""
    pool = await users_pool(make_pool, upstreams)
    async with admin_session(pool) as client:
        async with client.post(admin_url(pool, "/api/users"), json={"name": "gail", "credits": 10}) as resp:
            first = (await resp.json())["password"]
        assert (await raw_get(pool, origin.port, basic("gail", first))).status == 200
        async with client.post(admin_url(pool, "/api/users/gail/password")) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert answer["name"] == "gail" and len(answer["password"]) >= 32 and answer["password"] != first
        assert (await raw_get(pool, origin.port, basic("gail", first))).status == 407
        assert (await raw_get(pool, origin.port, basic("gail", answer["password"]))).status == 200
        async with client.post(admin_url(pool, "/api/users/nobody/password")) as resp:
            assert resp.status == 404 and "error" in await resp.json()
        async with client.get(admin_url(pool, "/api/users")) as resp:
            assert "password" not in json.dumps(await resp.json())

    db = str(tmp_path / "pool.db")
    code, out, _ = await cli("users", "password", "gail", "--format", "json", "--db", db)
    assert code == 0
    third = json.loads(out)
    assert third["name"] == "gail" and third["password"] not in (first, answer["password"])
    await pool.accounts.flush()
    assert (await raw_get(pool, origin.port, basic("gail", answer["password"]))).status == 407
    assert (await raw_get(pool, origin.port, basic("gail", third["password"]))).status == 200
    code, _, err = await cli("users", "password", "nobody", "--db", db)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
