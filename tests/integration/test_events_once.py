"""Once per pool: ``serve --workers 2`` on SQLite, a webhook notifier posting to an aiohttp receiver on
loopback.  Both workers see a user's balance run out (each refuses it a request and logs the event);
the receiver gets one ``credits.exhausted`` per occasion, and one more after a top-up spent again."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.integration.test_replicas import basic, get_through, origin, upstreams  # noqa: F401  (origin: fixture)
from tests.support.replicas import Replica, each_worker, start_workers
from tests.support.waiting import across_processes as eventually

pytestmark = pytest.mark.timeout(90)

EXHAUSTED = "event credits.exhausted"
TOLD = re.compile(r"event credits\.exhausted: already delivered by another process")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict]]]:
    """A webhook receiver on loopback: its URL and the events it got, in order."""
    got: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/hook")), got
    await server.close()


def exhausted_by(pool: Replica) -> dict[int, int]:
    """How many times each worker (by pid) logged ``credits.exhausted``."""
    seen: dict[int, int] = {}
    for line in pool.lines:
        if isinstance(line, dict) and str(line.get("message", "")).startswith(EXHAUSTED + " "):
            seen[int(line["pid"])] = seen.get(int(line["pid"]), 0) + 1
    return seen


async def spend_out(pool: Replica, origin_port: int, auth: str, times: int) -> None:
    """Requests (each on a new connection: either worker) until both workers logged the event ``times``
    times, i.e. both refused the user for want of credits since the last top-up."""

    async def both_saw_it() -> bool:
        seen = exhausted_by(pool)
        if len(seen) == 2 and min(seen.values()) >= times:
            return True
        assert await get_through(pool.proxy_url, origin_port, auth) in (200, 402)
        return False

    await eventually(both_saw_it, lambda: f"both workers refusing for want of credits: {exhausted_by(pool)}")


async def settled(pool: Replica, got: list[dict], occasions: int) -> list[dict]:
    """Once every worker's sighting is accounted for (delivered, or stood down for another's), the
    ``credits.exhausted`` webhooks received."""

    def accounted() -> bool:
        hooks = [e for e in got if e["type"] == "credits.exhausted"]
        return len(hooks) + len(TOLD.findall(pool.messages())) >= 2 * occasions

    await eventually(accounted, lambda: f"webhooks {got}, log {pool.messages()[-2000:]}")
    return [e for e in got if e["type"] == "credits.exhausted"]


async def test_a_balance_run_out_on_two_workers_is_one_webhook_per_occasion(
    tmp_path: Path, origin: int, receiver: tuple[str, list[dict]]  # noqa: F811
) -> None:
    url, got = receiver
    env = {
        "PROXY_POOL_GATEWAY__AUTH": "users",
        "PROXY_POOL_CREDITS__LEASE_BLOCK": "2",
        "PROXY_POOL_NOTIFIERS__WEBHOOK__URL": url,
        "PROXY_POOL_NOTIFIERS__WEBHOOK__SUBSCRIBES_TO": '["credits.exhausted"]',
    }
    async with upstreams(1) as ups:
        listing = tmp_path / "list.txt"
        listing.write_text(ups[0].url() + "\n")
        pool = await start_workers(str(tmp_path / "pool.db"), tmp_path, 2, "--proxies", str(listing), env=env)
        try:
            await each_worker(pool, "/api/stats", lambda stats: stats["pool"]["selectable"] == 1)
            status, user = await pool.api("POST", "/api/users", {"name": "carol", "credits": 4})
            assert status == 201, user
            await each_worker(pool, "/api/users", lambda answer: [u["credits"] for u in answer["users"]] == [4])
            auth = basic("carol", user["password"])

            await spend_out(pool, origin, auth, 1)
            first = await settled(pool, got, 1)
            assert [e["payload"] for e in first] == [{"user_id": user["id"]}], first

            status, _ = await pool.api("POST", "/api/users/carol/credits", {"amount": 3})
            assert status == 200
            await each_worker(pool, "/api/users", lambda answer: [u["credits"] for u in answer["users"]] == [3])
            await spend_out(pool, origin, auth, 2)
            both = await settled(pool, got, 2)
            assert [e["payload"] for e in both] == [{"user_id": user["id"]}] * 2, both
        finally:
            assert await pool.stop() == 0, pool.messages()
    assert "Traceback" not in pool.messages()
