"""Proxies through their life: listed while checked, re-checked now, removed (admin API and CLI); sources
removed with the proxies only they listed.

Real pproxy upstreams stopped on purpose, a black-hole TCP server for a proxy whose check never ends, the
CLI as a subprocess beside a serving gateway (SQLite), without one, and on a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import ProxyPool
from pool.models import ProxyStatus, UpstreamURL
from pool.store import SqliteStore
from tests.integration.test_users_credits import admin_url, cli
from tests.support.admin import admin_session

pytestmark = pytest.mark.timeout(90)


async def api(method: str, pool: ProxyPool, path: str, body: Any = None) -> tuple[int, Any]:
    async with admin_session(pool) as client, client.request(method, admin_url(pool, path), json=body) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def black_hole() -> AsyncIterator[int]:
    """A TCP port that accepts and never answers: a proxy whose check lasts until the checker's timeout."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.3", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_proxy_being_checked_is_listed(make_pool, upstreams, black_hole):
    """While its first check runs, a scraped proxy is in /api/proxies (status new) and in the stats."""
    pool = await make_pool(
        [upstreams[0].url("http"), f"http://127.0.0.3:{black_hole}"], checker={"timeout": 20.0, "judges": []}
    )
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    assert pool.pipeline.backlog == 1  # the black hole is still being checked
    status, listing = await api("GET", pool, "/api/proxies")
    assert status == 200 and listing["total"] == 2
    assert sorted(p["status"] for p in listing["proxies"]) == ["active", "new"]
    assert (await api("GET", pool, "/api/proxies?status=new"))[1]["total"] == 1
    stats = (await api("GET", pool, "/api/stats"))[1]
    assert stats["pool"]["by_status"] == {"active": 1, "new": 1}


async def test_recheck_and_remove_through_the_api(make_pool, upstreams):
    """A re-check applies its verdict at once (a stopped upstream is dead); a removed proxy leaves pool and store."""
    pool = await make_pool([upstreams[0].url("http"), upstreams[1].url("http")])
    await pool.wait_until(lambda: pool.selector.active_count == 2)
    doomed = next(p for p in pool.selector.proxies() if p.port == upstreams[1].port)
    await upstreams[1].stop()
    status, answer = await api("POST", pool, f"/api/proxies/{doomed.id}/recheck")
    assert status == 200, answer
    assert answer["proxy"]["status"] == "dead" and answer["failed_check"]
    assert pool.selector.active_count == 1
    await pool.pipeline.flush()
    assert (await pool.store.get_proxy(doomed.id)).status is ProxyStatus.DEAD
    for method, path, code in (
        ("POST", "/api/proxies/999999/recheck", 404),
        ("POST", "/api/proxies/x/recheck", 400),
        ("DELETE", "/api/proxies/999999", 404),
        ("DELETE", "/api/proxies/x", 400),
    ):
        got, answer = await api(method, pool, path)
        assert got == code and "error" in answer, (method, path)
    assert len(pool.selector) == 2  # bad input changed nothing
    assert await api("DELETE", pool, f"/api/proxies/{doomed.id}") == (200, {"deleted": doomed.id})
    assert pool.selector.get(doomed.id) is None
    assert doomed.id not in [p["id"] for p in (await api("GET", pool, "/api/proxies"))[1]["proxies"]]
    assert (await api("GET", pool, f"/api/proxies/{doomed.id}/checks"))[0] == 404
    assert (await api("DELETE", pool, f"/api/proxies/{doomed.id}"))[0] == 404


async def test_removing_a_source_removes_the_proxies_only_it_listed(make_pool, upstreams, tmp_path: Path):
    """DELETE /api/sources/{id}: the proxies only it listed go (from the gateway's pool too), shared ones stay;
    ``?keep_proxies=true`` keeps them all; a bad flag is a 400 that changes nothing."""
    pool = await make_pool([upstreams[0].url("http"), upstreams[1].url("http")])
    await pool.wait_until(lambda: pool.selector.active_count == 2)
    second = tmp_path / "second.txt"
    second.write_text(f"{upstreams[1].url('http')}\n{upstreams[2].url('http')}\n")
    status, source = await api("POST", pool, "/api/sources", {"url": str(second), "parser": "plaintext"})
    assert status == 201
    assert (await api("POST", pool, f"/api/sources/{source['id']}/scrape"))[0] == 200
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    first_id = next(s["id"] for s in (await api("GET", pool, "/api/sources"))[1]["sources"] if s["id"] != source["id"])
    status, body = await api("DELETE", pool, f"/api/sources/{first_id}?keep_proxies=maybe")
    assert (status, list(body)) == (400, ["error"])
    assert len(await pool.store.list_sources()) == 2 and len(pool.selector) == 3
    status, answer = await api("DELETE", pool, f"/api/sources/{first_id}")
    assert (status, answer) == (200, {"deleted": first_id, "proxies_removed": 1})
    assert sorted(p.port for p in pool.selector.proxies()) == sorted([upstreams[1].port, upstreams[2].port])
    assert len(await pool.store.all_proxies()) == 2
    status, answer = await api("DELETE", pool, f"/api/sources/{source['id']}?keep_proxies=true")
    assert (status, answer) == (200, {"deleted": source["id"], "proxies_removed": 0})
    assert len(pool.selector) == 2 and len(await pool.store.all_proxies()) == 2
    assert (await api("DELETE", pool, "/api/sources/999"))[0] == 404


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.timeout(180)
async def test_cli_recheck_and_remove_on_a_serving_gateway(make_pool, upstreams, tmp_path: Path):
    """`proxies recheck` and `proxies remove` act on the serving gateway's pool (found through its lock file);
    bad input exits 2 with one line and changes nothing."""
    pool = await make_pool([upstreams[0].url("http"), upstreams[1].url("http")])
    await pool.wait_until(lambda: pool.selector.active_count == 2)
    db = str(tmp_path / "pool.db")
    doomed = next(p for p in pool.selector.proxies() if p.port == upstreams[1].port)
    await upstreams[1].stop()
    code, out, err = await cli("proxies", "recheck", str(doomed.id), "--format", "json", "--db", db)
    assert code == 0, err
    (row,) = json.loads(out)
    assert (row["id"], row["status"]) == (doomed.id, "dead")
    assert pool.selector.active_count == 1  # the gateway's own pool changed
    for bad in (
        ("proxies", "recheck"),
        ("proxies", "recheck", "999999"),
        ("proxies", "recheck", "1", "--all"),
        ("proxies", "recheck", "--status", "zombie"),
        ("proxies", "remove", str(doomed.id), "999999"),
        ("proxies", "remove", "x"),
        ("sources", "remove", "999"),
    ):
        code, _, err = await cli(*bad, "--db", db)
        assert code == 2 and one_line(err), (bad, err)
    assert len(pool.selector) == 2 and len(await pool.store.all_proxies()) == 2
    code, out, err = await cli("proxies", "recheck", "--status", "dead", "--db", db)
    assert code == 0 and str(doomed.id) in out, err
    code, out, err = await cli("proxies", "remove", str(doomed.id), "--db", db)
    assert (code, out.strip()) == (0, f"removed 1 proxy: {doomed.id}"), err
    assert pool.selector.get(doomed.id) is None and len(pool.selector) == 1
    (source,) = await pool.store.list_sources()
    code, out, err = await cli("sources", "remove", str(source.id), "--db", db)
    assert code == 0, err
    assert out.strip() == f"removed source {source.id} and 1 proxy no other source listed (--keep-proxies keeps them)"
    assert len(pool.selector) == 0


@pytest.mark.timeout(180)
async def test_cli_without_a_gateway(upstreams, tmp_path: Path):
    """No gateway serving: `proxies recheck --all` checks here and writes the verdicts; `sources remove` says how
    many proxies went with the source; --keep-proxies keeps them."""
    db = str(tmp_path / "offline.db")
    store = await SqliteStore.open(db)
    source = await store.add_source(str(tmp_path / "list.txt"), parser="plaintext")
    other = await store.add_source(str(tmp_path / "other.txt"), parser="plaintext")
    await store.upsert_proxies(source.id, [UpstreamURL.parse(upstreams[0].url("http")), UpstreamURL.parse(upstreams[1].url("http"))])
    await store.upsert_proxies(other.id, [UpstreamURL.parse(upstreams[2].url("http"))])
    await store.close()
    await upstreams[1].stop()
    code, out, err = await cli("proxies", "recheck", "--all", "--format", "json", "--db", db)
    assert code == 0, err
    assert sorted(r["status"] for r in json.loads(out)) == ["active", "active", "dead"]
    code, out, err = await cli("proxies", "--status", "active", "--format", "json", "--db", db)
    assert sorted(p["port"] for p in json.loads(out)) == sorted([upstreams[0].port, upstreams[2].port])
    code, out, err = await cli("sources", "list", "--format", "json", "--db", db)
    assert [(s["id"], s["active"]) for s in json.loads(out)] == [(source.id, 1), (other.id, 1)]
    code, out, err = await cli("sources", "remove", str(source.id), "--db", db)
    assert code == 0, err
    assert "2 proxies" in out
    code, out, err = await cli("sources", "remove", str(other.id), "--keep-proxies", "--db", db)
    assert (code, out.strip()) == (0, f"removed source {other.id}; its proxies stay in the pool"), err
    code, out, err = await cli("proxies", "--format", "json", "--db", db)
    assert [p["port"] for p in json.loads(out)] == [upstreams[2].port]


@pytest.mark.timeout(180)
async def test_cli_on_postgresql_reaches_the_replicas(make_pool, upstreams, pg_url: str):
    """With --db postgresql://, `proxies recheck` and `proxies remove` work on the shared database, and a
    replica serving from it follows (NOTIFY): the dead verdict and the removal reach its pool."""
    pool = await make_pool(
        [upstreams[0].url("http"), upstreams[1].url("http")], storage={"url": pg_url}, admin={"token": "t" * 32}
    )
    await pool.wait_until(lambda: pool.selector.active_count == 2)
    doomed = next(p for p in pool.selector.proxies() if p.port == upstreams[1].port)
    await upstreams[1].stop()
    code, out, err = await cli("proxies", "recheck", str(doomed.id), "--format", "json", "--db", pg_url)
    assert code == 0, err
    assert json.loads(out)[0]["status"] == "dead"
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    code, _, err = await cli("proxies", "remove", "999999", "--db", pg_url)
    assert code == 2 and one_line(err), err
    code, out, err = await cli("proxies", "remove", str(doomed.id), "--db", pg_url)
    assert code == 0, err
    await pool.wait_until(lambda: pool.selector.get(doomed.id) is None)
    assert len(pool.selector) == 1
