"""Several real ``serve`` replicas on one real PostgreSQL: one pool, one ledger, no coordinator.

Upstreams are pproxy servers on 127.0.0.x, the origin an aiohttp server; every replica is the real
command line.  Waiting is bounded polling of the replicas' admin APIs (external processes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.replicas import START_BOUND, Balancer, Replica, start_replica
from tests.support.upstreams import Upstream, start_pproxy
from tests.support.waiting import across_processes as eventually

pytestmark = pytest.mark.timeout(120)

@pytest.fixture
async def origin() -> AsyncIterator[int]:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    yield server.port
    await server.close()


@contextlib.asynccontextmanager
async def upstreams(count: int) -> AsyncIterator[list[Upstream]]:
    ups = [await start_pproxy(f"127.0.0.{i + 2}", "http") for i in range(count)]
    try:
        yield ups
    finally:
        for up in ups:
            await up.stop()


@contextlib.asynccontextmanager
async def replicas(url: str, cwd: Path, count: int, env: dict[str, str] | None = None) -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for i in range(count):
            started.append(await start_replica(url, f"r{i}", cwd, env=env))
        yield started
    finally:
        for replica in started:
            if replica.proc.returncode is None:
                await replica.stop()


async def active(replica: Replica) -> list[dict[str, Any]]:
    _, answer = await replica.api("GET", "/api/proxies?status=active")
    return list(answer["proxies"])


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def get_through(proxy_url: str, origin_port: int, auth: str | None = None) -> int:
    headers = {"Proxy-Authorization": auth} if auth else {}
    async with aiohttp.ClientSession() as client, client.get(
        f"http://127.0.0.1:{origin_port}/ok", proxy=proxy_url, headers=headers,
        timeout=aiohttp.ClientTimeout(total=20),
    ) as resp:
        await resp.read()
        return resp.status


async def test_a_source_is_scraped_once_checks_split_and_a_dead_proxy_is_benched_everywhere(
    pg_url: str, tmp_path: Path, origin: int
) -> None:
    """Three replicas; a source added on one is scraped by one; each proxy is checked once per round;
    a proxy that dies, benched by the replica whose traffic met it, is out of every replica's pool."""
    async with upstreams(4) as ups, replicas(
        pg_url, tmp_path, 3, env={"PROXY_POOL_CHECKER__RECHECK_INTERVAL": "3"}
    ) as (a, b, c):
        listing = tmp_path / "list.txt"
        listing.write_text("".join(up.url() + "\n" for up in ups))
        status, source = await a.api("POST", "/api/sources", {"url": str(listing)})
        assert status == 201, source

        async def all_active() -> bool:
            return all([len(await active(r)) == 4 for r in (a, b, c)])

        await eventually(all_active, "the 4 proxies active on every replica")
        scrapes = [await r.metric("proxy_pool_scrapes_total", source=str(source["id"])) for r in (a, b, c)]
        assert sum(scrapes) == 1, scrapes

        # two rounds of re-checks: each proxy checked once per round, whoever claimed it
        proxies = await active(a)

        async def two_more_rounds() -> bool:
            for proxy in proxies:
                _, checks = await b.api("GET", f"/api/proxies/{proxy['id']}/checks")
                if len({c["at"] for c in checks["checks"]}) < 3:
                    return False
            return True

        await eventually(two_more_rounds, "three check runs of every proxy", timeout=60)
        for proxy in proxies:
            _, checks = await c.api("GET", f"/api/proxies/{proxy['id']}/checks")
            runs = sorted(datetime.fromisoformat(at) for at in {check["at"] for check in checks["checks"]})
            # a run starts only recheck_interval (3 s) after the last verdict: a second replica checking
            # the same proxy in the same round would leave two runs closer together than that
            gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(runs)]
            assert len(runs) >= 3 and min(gaps) >= 2.99, gaps

        # one upstream dies: traffic through one replica benches it there and has it re-checked;
        # the dead verdict reaches the other two
        victim = next(p for p in proxies if p["port"] == ups[0].port)
        await ups[0].stop()
        for _ in range(12):
            assert await get_through(b.proxy_url, origin) == 200  # retried on a live upstream

        async def benched_everywhere() -> bool:
            for replica in (a, b, c):
                if any(p["id"] == victim["id"] for p in await active(replica)):
                    return False
            return True

        await eventually(benched_everywhere, "the dead proxy out of every replica's pool")
        for replica in (a, b, c):
            for _ in range(6):
                assert await get_through(replica.proxy_url, origin) == 200


async def _counted_requests(replica: Replica, origin: int, auth: str, n: int) -> list[int]:
    return await asyncio.gather(*(get_through(replica.proxy_url, origin, auth) for _ in range(n)))


async def leased(pg_server, pg_url: str) -> dict[str, int]:
    database = pg_url.rsplit("/", 1)[1]
    text = pg_server.psql("SELECT replica || '=' || amount FROM credit_leases", database=database)
    return {k: int(v) for k, v in (line.split("=") for line in text.splitlines() if line)}


def free_credits(pg_server, pg_url: str) -> int:
    database = pg_url.rsplit("/", 1)[1]
    return int(pg_server.psql("SELECT COALESCE(SUM(balance), 0) FROM users", database=database))


async def test_credits_stay_exact_across_replicas_and_a_kill_costs_at_most_its_lease(
    pg_server, pg_url: str, tmp_path: Path, origin: int
) -> None:
    """3 replicas x 40 parallel requests on 50 credits (3 spent first, one per replica): exactly 47 answered.  Then 30 more credits; the
    replica holding the most is killed with SIGKILL: the others spend what they hold, and the user
    loses at most the killed replica's lease (forfeited when it starts again)."""
    env = {"PROXY_POOL_GATEWAY__AUTH": "users", "PROXY_POOL_CREDITS__LEASE_BLOCK": "20"}
    async with upstreams(1) as _ups, replicas(pg_url, tmp_path, 3, env=env) as (a, b, c):
        listing = tmp_path / "list.txt"
        listing.write_text(_ups[0].url() + "\n")
        await a.api("POST", "/api/sources", {"url": str(listing)})

        async def serving_everywhere() -> bool:
            return all([len(await active(r)) == 1 for r in (a, b, c)])

        await eventually(serving_everywhere, "the upstream active on every replica")
        status, user = await a.api("POST", "/api/users", {"name": "alice", "credits": 50})
        assert status == 201, user
        auth = basic("alice", user["password"])

        async def all_leased() -> bool:
            return free_credits(pg_server, pg_url) == 0 and len(await leased(pg_server, pg_url)) == 3

        await eventually(all_leased, "the 50 credits leased out to the three replicas")
        for replica in (a, b, c):  # each replica has checked the password once: the burst charges at once
            assert await get_through(replica.proxy_url, origin, auth) == 200
        answers = await asyncio.gather(*(_counted_requests(r, origin, auth, 40) for r in (a, b, c)))
        flat = [s for batch in answers for s in batch]
        assert flat.count(200) == 50 - 3, {s: flat.count(s) for s in set(flat)}
        assert set(flat) == {200, 402}

        # a top-up made on one replica reaches the others' leases
        status, answer = await b.api("POST", "/api/users/alice/credits", {"amount": 30})
        assert status == 200, answer

        async def topped_up() -> bool:
            return free_credits(pg_server, pg_url) == 0 and sum((await leased(pg_server, pg_url)).values()) == 30

        await eventually(topped_up, "the 30 new credits leased")
        leases = await leased(pg_server, pg_url)
        victim_name = max(leases, key=lambda k: leases[k])
        victim = {"r0": a, "r1": b, "r2": c}[victim_name]
        survivors = [r for r in (a, b, c) if r is not victim]
        await victim.kill()
        lost = leases[victim_name]
        assert lost <= 20

        served = 0

        async def rest_with_survivors() -> bool:
            """Every credit not yet served is settled into a survivor's lease: none free, none in flight
            (a drained survivor asks, an idle one gives its lease back, the drained one leases it)."""
            leases = await leased(pg_server, pg_url)
            held = sum(n for name, n in leases.items() if name != victim_name)
            return free_credits(pg_server, pg_url) == 0 and held == 30 - lost - served

        for _ in range(30):  # each round spends min(10, lease) on every survivor: bounded rounds
            await eventually(rest_with_survivors, f"the {30 - lost - served} credits left leased to the survivors")
            for replica in survivors:
                served += (await _counted_requests(replica, origin, auth, 10)).count(200)
            if served >= 30 - lost:
                break
        assert served == 30 - lost, (served, await leased(pg_server, pg_url), free_credits(pg_server, pg_url))

        restarted = await start_replica(pg_url, victim_name, tmp_path, env=env)
        try:
            async def forfeited() -> bool:
                return victim_name not in await leased(pg_server, pg_url)

            await eventually(forfeited, "the dead replica's lease settled at its restart")
        finally:
            await restarted.stop()
    database = pg_url.rsplit("/", 1)[1]
    ledger = int(pg_server.psql("SELECT SUM(delta) FROM credit_ledger", database=database))
    assert ledger == 0 and free_credits(pg_server, pg_url) == 0
    assert await leased(pg_server, pg_url) == {}


async def test_a_password_change_on_one_replica_is_refused_by_all(
    pg_server, pg_url: str, tmp_path: Path, origin: int
) -> None:
    """A user added on one replica works on the others; after a new password on one, the old one is
    refused (407) by every replica and the new one accepted."""
    env = {"PROXY_POOL_GATEWAY__AUTH": "users"}
    async with upstreams(1) as ups, replicas(pg_url, tmp_path, 3, env=env) as group:
        listing = tmp_path / "list.txt"
        listing.write_text(ups[0].url() + "\n")
        await group[0].api("POST", "/api/sources", {"url": str(listing)})

        async def ready() -> bool:
            return all([len(await active(r)) == 1 for r in group])

        await eventually(ready, "the upstream active everywhere")
        _, user = await group[1].api("POST", "/api/users", {"name": "bob", "credits": 1000})
        old = basic("bob", user["password"])

        async def known_everywhere() -> bool:  # every replica's accounts (what it admits by), a lease each
            names = [[u["name"] for u in (await r.api("GET", "/api/users"))[1]["users"]] for r in group]
            return names == [["bob"]] * 3 and len(await leased(pg_server, pg_url)) == 3

        await eventually(known_everywhere, "the new user known to every replica, each holding a lease")
        for replica in group:
            assert await get_through(replica.proxy_url, origin, old) == 200
        status, answer = await group[2].api("POST", "/api/users/bob/password")
        assert status == 200, answer
        new = basic("bob", answer["password"])

        async def old_refused() -> bool:
            return all([await get_through(r.proxy_url, origin, old) == 407 for r in group])

        await eventually(old_refused, "the old password refused by every replica")
        for replica in group:
            assert await get_through(replica.proxy_url, origin, new) == 200


async def test_clients_behind_a_balancer_get_answers_when_a_replica_dies(
    pg_url: str, tmp_path: Path, origin: int
) -> None:
    """Clients spread over three replicas by a TCP balancer; one replica is killed midway: every
    request is answered (one retry for a connection that was on the killed replica)."""
    async with upstreams(2) as ups, replicas(pg_url, tmp_path, 3) as group:
        listing = tmp_path / "list.txt"
        listing.write_text("".join(up.url() + "\n" for up in ups))
        await group[0].api("POST", "/api/sources", {"url": str(listing)})

        async def ready() -> bool:
            return all([len(await active(r)) == 2 for r in group])

        await eventually(ready, "both upstreams active everywhere")
        balancer = Balancer([r.gateway for r in group])
        await balancer.start()
        url = f"http://127.0.0.1:{balancer.port}"
        killed = asyncio.Event()
        results: list[int] = []

        async def client(n: int) -> None:
            for i in range(12):
                if n == 0 and i == 4:
                    await group[1].kill()
                    killed.set()
                try:
                    results.append(await get_through(url, origin))
                except (aiohttp.ClientError, TimeoutError):
                    results.append(await get_through(url, origin))  # the retry a client makes

        try:
            await asyncio.gather(*(client(n) for n in range(6)))
        finally:
            await balancer.close()
        assert killed.is_set()
        assert results == [200] * 72


async def test_a_replica_that_loses_the_database_keeps_serving_and_catches_up(
    pg_server, pg_url: str, tmp_path: Path, origin: int
) -> None:
    """PostgreSQL stops: both replicas keep answering from memory (pool and leased credits); when it
    is back, a change made on one reaches the other again (LISTEN reconnects, full resync)."""
    env = {"PROXY_POOL_GATEWAY__AUTH": "users"}
    async with upstreams(1) as ups, replicas(pg_url, tmp_path, 2, env=env) as (a, b):
        listing = tmp_path / "list.txt"
        listing.write_text(ups[0].url() + "\n")
        await a.api("POST", "/api/sources", {"url": str(listing)})
        _, user = await a.api("POST", "/api/users", {"name": "carol", "credits": 1000})
        auth = basic("carol", user["password"])

        async def ready() -> bool:
            return all([len(await active(r)) == 1 and await get_through(r.proxy_url, origin, auth) == 200 for r in (a, b)])

        await eventually(ready, "both replicas serving carol")
        pg_server.stop()
        try:
            for replica in (a, b):
                for _ in range(5):
                    assert await get_through(replica.proxy_url, origin, auth) == 200
        finally:
            pg_server.start()
        status, answer = await a.api("POST", "/api/users/carol/password")
        assert status == 200, answer

        async def old_refused_on_b() -> bool:
            return await get_through(b.proxy_url, origin, auth) == 407

        await eventually(old_refused_on_b, "the password change reaching the other replica after the outage")
        assert await get_through(b.proxy_url, origin, basic("carol", answer["password"])) == 200


async def test_workers_share_the_listening_sockets(pg_url: str, tmp_path: Path, origin: int) -> None:
    """serve --workers 2: two processes answer on the same gateway and admin ports (SO_REUSEPORT),
    each a replica named NAME/wK, both up at the first try (the same --proxies list added once);
    SIGTERM to the supervisor stops both, exit 0."""
    import signal
    import sys

    from tests.support.replicas import TOKEN, serve_environ
    from tests.support.upstreams import free_port

    gw_port, admin_port = free_port(), free_port()
    async with upstreams(1) as ups:
        listing = tmp_path / "list.txt"
        listing.write_text(ups[0].url() + "\n")
        environ = serve_environ(tmp_path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--workers", "2", "--db", pg_url, "--no-default-sources",
            "--listen", f"127.0.0.1:{gw_port}", "--admin-listen", f"127.0.0.1:{admin_port}",
            "--replica-name", "box", "--proxies", str(listing), "--log-format", "json",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            cwd=tmp_path, env=environ,
        )
        supervisor = Replica("box", proc)  # its stderr carries the workers' logs too
        supervisor.tasks.spawn(supervisor.read_log(), name="log-box")
        try:
            async def both_serving() -> bool:
                return supervisor.messages().count("proxy-pool serving:") == 2 or proc.returncode is not None

            # the workers' own "serving" lines, however long a loaded machine takes to start them
            await eventually(both_serving, "both workers serving", timeout=START_BOUND)
            assert proc.returncode is None, supervisor.messages()
            seen: set[str] = set()

            async def both_workers_answer() -> bool:
                async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as client, client.get(
                    f"http://127.0.0.1:{admin_port}/api/stats"
                ) as resp:
                    stats = await resp.json()
                if stats["pool"]["selectable"] == 1:
                    seen.add(stats["replica"])
                return seen == {"box/w0", "box/w1"}

            # each poll is a new connection, which the kernel gives to either worker
            await eventually(both_workers_answer, "both workers answering on the shared admin port")
            for _ in range(10):
                assert await get_through(f"http://127.0.0.1:{gw_port}", origin) == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                code = await proc.wait()
            await supervisor.tasks.wait(5)
            await supervisor.tasks.close()
        assert code == 0, supervisor.messages()
        assert "starting it again" not in supervisor.messages()  # no worker died on the way
