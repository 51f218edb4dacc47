"""The user life cycle across real ``serve`` replicas on one real PostgreSQL: a lease miss waits for a lease
instead of answering 402, a disable on one replica is refused by all, usage sums over replicas, a debit
recalls the other replicas' leases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.test_replicas import (
    active,
    basic,
    free_credits,
    get_through,
    leased,
    origin,  # noqa: F401  (fixture)
    replicas,
    upstreams,
)
from tests.support.waiting import across_processes as eventually

pytestmark = pytest.mark.timeout(150)


async def _serving(group, ups, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(ups[0].url() + "\n")
    await group[0].api("POST", "/api/sources", {"url": str(listing)})

    async def ready() -> bool:
        return all([len(await active(r)) == 1 for r in group])

    await eventually(ready, "the upstream active on every replica")


async def answer(proxy_url: str, origin_port: int, auth: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client, client.get(
        f"http://127.0.0.1:{origin_port}/ok", proxy=proxy_url, headers={"Proxy-Authorization": auth},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as resp:
        return resp.status, await resp.text()


async def test_a_replica_without_a_lease_waits_for_one_instead_of_402(
    pg_server, pg_url: str, tmp_path: Path, origin: int  # noqa: F811
) -> None:
    """10 credits, a lease block of 10: one replica holds them all.  A request to the other is not refused
    (402) but waits while the idle holder gives its lease back and it leases it; with the database gone
    meanwhile a lease-less replica answers 503 in one line; with no credits left both answer 402."""
    env = {
        "PROXY_POOL_GATEWAY__AUTH": "users",
        "PROXY_POOL_CREDITS__LEASE_BLOCK": "10",
        "PROXY_POOL_CREDITS__LEASE_WAIT": "10",  # generous: a busy machine; the wait ends at the lease
    }
    async with upstreams(1) as ups, replicas(pg_url, tmp_path, 2, env=env) as (a, b):
        await _serving((a, b), ups, tmp_path)
        status, user = await a.api("POST", "/api/users", {"name": "dora", "credits": 10})
        assert status == 201, user
        auth = basic("dora", user["password"])

        async def one_holds_all() -> bool:
            return free_credits(pg_server, pg_url) == 0 and len(await leased(pg_server, pg_url)) == 1

        await eventually(one_holds_all, "the 10 credits leased to one replica")
        (holder_name,) = await leased(pg_server, pg_url)
        holder, other = (a, b) if holder_name == a.name else (b, a)
        assert await answer(other.proxy_url, origin, auth) == (200, "ok")  # waited, did not get 402
        assert list(await leased(pg_server, pg_url)) == [other.name]  # the lease moved

        # the database goes away: the replica without a lease cannot take one, and says so
        pg_server.stop()
        try:
            status, text = await answer(holder.proxy_url, origin, auth)
            assert status == 503 and text.strip() == "credits database unreachable: try again shortly"
            assert await answer(other.proxy_url, origin, auth) == (200, "ok")  # its lease serves on
        finally:
            pg_server.start()

        served = 2
        for _ in range(20):  # spend the rest, wherever it is
            for replica in (other, holder):
                if (await answer(replica.proxy_url, origin, auth))[0] == 200:
                    served += 1
            if served == 10:
                break
        assert served == 10
        for replica in (a, b):
            status, text = await answer(replica.proxy_url, origin, auth)
            assert status == 402, text


async def test_disable_usage_and_debit_across_replicas(pg_server, pg_url: str, tmp_path: Path, origin: int) -> None:  # noqa: F811
    """A user disabled on one replica is refused (407) by all, enabled again served by all; the usage of both
    replicas sums in either's /api/users; a debit on one recalls the others' leases and never takes more than
    there is; removed on one, refused by all.  Each request is made once the replicas hold the state it tests
    (their /api/users, the leases): exactly 4 are served, however slowly the change travels."""
    env = {
        "PROXY_POOL_GATEWAY__AUTH": "users",
        "PROXY_POOL_CREDITS__LEASE_BLOCK": "10",
        "PROXY_POOL_CREDITS__LEASE_WAIT": "10",  # generous: a busy machine; a recall ends when the lease comes
    }
    async with upstreams(1) as ups, replicas(pg_url, tmp_path, 2, env=env) as (a, b):
        await _serving((a, b), ups, tmp_path)
        status, user = await b.api("POST", "/api/users", {"name": "eve", "credits": 40})
        assert status == 201, user
        auth = basic("eve", user["password"])
        served = 0

        async def through(replica) -> int:
            nonlocal served
            status = await get_through(replica.proxy_url, origin, auth)
            served += status == 200
            return status

        async def views() -> list[dict[str, Any] | None]:
            """eve as each replica's accounts hold her (what its gateway admits by)."""
            return [next((u for u in (await r.api("GET", "/api/users"))[1]["users"] if u["name"] == "eve"), None)
                    for r in (a, b)]

        async def enabled_everywhere(enabled: bool) -> bool:
            return all(v is not None and v["enabled"] is enabled for v in await views())

        async def known_and_leased() -> bool:
            return await enabled_everywhere(True) and len(await leased(pg_server, pg_url)) == 2

        await eventually(known_and_leased, "eve known to both replicas, each holding a lease")
        assert [await through(r) for r in (a, b)] == [200, 200]
        status, view = await a.api("PATCH", "/api/users/eve", {"enabled": False})
        assert status == 200 and view["enabled"] is False
        await eventually(lambda: enabled_everywhere(False), "eve disabled on both replicas")
        assert [await through(r) for r in (a, b)] == [407, 407]
        assert (await b.api("PATCH", "/api/users/eve", {"enabled": True}))[0] == 200
        await eventually(lambda: enabled_everywhere(True), "eve enabled again on both replicas")
        assert [await through(r) for r in (a, b)] == [200, 200]
        assert served == 4

        async def summed() -> bool:
            _, listing = await a.api("GET", "/api/users")
            (row,) = listing["users"]
            return bool(row["requests"] == served and row["bytes_down"] > 0)

        await eventually(summed, "both replicas' usage summed in a's /api/users")

        # a debit of 30 on a takes a's lease, then the free credits, then what b gives back when recalled
        left = 40 - served
        status, debit = await a.api("POST", "/api/users/eve/credits", {"amount": -30})
        assert status == 200 and debit == {"debited": 30, "credits": left - 30}, (debit, served)
        left -= 30
        status, debit = await b.api("POST", "/api/users/eve/credits", {"amount": -5})
        assert status == 200 and debit == {"debited": min(5, left), "credits": left - min(5, left)}, debit
        left -= debit["debited"]
        database = pg_url.rsplit("/", 1)[1]

        async def settled() -> bool:
            return int(pg_server.psql("SELECT SUM(delta) FROM credit_ledger", database=database)) == left

        await eventually(settled, "the ledger at what is left")

        assert (await b.api("DELETE", "/api/users/eve"))[0] == 200

        async def gone_everywhere() -> bool:
            return await views() == [None, None]

        await eventually(gone_everywhere, "eve removed from both replicas")
        assert [await get_through(r.proxy_url, origin, auth) for r in (a, b)] == [407, 407]
        assert (await a.api("GET", "/api/users"))[1]["users"] == []
