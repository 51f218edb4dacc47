"""``serve --workers 2`` on the embedded SQLite file: one pool, one ledger, one leader.

The real command line; upstreams are pproxy servers on 127.0.0.x, the origin an aiohttp server.  The
workers are told apart by their pid (JSON log lines carry it; the access log says which upstream
carried each request) and by their name in ``/api/stats``.  The database is read directly once the
pool has stopped.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pool.dbfiles import ServeLock
from tests.integration.test_replicas import basic, get_through, origin, upstreams  # noqa: F401  (origin: fixture)
from tests.support.replicas import Replica, each_worker, serve_environ, start_workers, worker_pids
from tests.support.upstreams import free_port
from tests.support.waiting import across_processes as eventually

pytestmark = pytest.mark.timeout(120)

LEASE = 20


def ledger(db: Path, user: str) -> tuple[int, int, int]:
    """(free balance, sum of the ledger, credits still leased) of ``user``, read from the file."""
    with sqlite3.connect(db) as con:
        uid, free = con.execute("SELECT id, balance FROM users WHERE name = ?", (user,)).fetchone()
        total = con.execute("SELECT COALESCE(SUM(delta), 0) FROM credit_ledger WHERE user_id = ?", (uid,)).fetchone()[0]
        leased = con.execute("SELECT COALESCE(SUM(amount), 0) FROM credit_leases").fetchone()[0]
    return int(free), int(total), int(leased)


async def stop(pool: Replica) -> None:
    assert await pool.stop() == 0, pool.messages()
    assert "Traceback" not in pool.messages()


def leaders(pool: Replica) -> list[int]:
    """The pids of the workers that took the lead, in order."""
    return [int(m) for m in re.findall(r"\(pid (\d+)\) leads:", pool.messages())]


async def known_everywhere(pool: Replica, user: str, proxies: int) -> None:
    """Every worker holds ``proxies`` selectable upstreams and knows ``user``."""
    await each_worker(pool, "/api/stats", lambda stats: stats["pool"]["selectable"] == proxies)
    await each_worker(pool, "/api/users", lambda answer: [u["name"] for u in answer["users"]] == [user])


async def test_two_workers_spend_one_balance_exactly_and_a_second_serve_is_refused(
    tmp_path: Path, origin: int  # noqa: F811
) -> None:
    """200 parallel requests over both workers on 150 credits: never more than 150 answered, and once the
    pool stops the balance is exactly 150 minus the requests answered (nothing leased, the ledger agrees).
    Meanwhile an unrelated serve on the same file is refused with one line (exit 2).  The pool stops by
    its supervisor's kill -9: the orphaned workers stop by themselves, cleanly, and free the file."""
    db = tmp_path / "pool.db"
    env = {
        "PROXY_POOL_GATEWAY__AUTH": "users",
        "PROXY_POOL_CREDITS__LEASE_BLOCK": str(LEASE),
        "PROXY_POOL_GATEWAY__SOCKS_LISTEN": f"127.0.0.1:{free_port()}",  # every listener is shared
    }
    async with upstreams(1) as ups:
        listing = tmp_path / "list.txt"
        listing.write_text(ups[0].url() + "\n")
        pool = await start_workers(str(db), tmp_path, 2, "--proxies", str(listing), env=env)
        try:
            assert len(set(leaders(pool))) == 1, pool.messages()  # one leader of the two
            assert "starting it again" not in pool.messages()  # no worker died on the way
            status, user = await pool.api("POST", "/api/users", {"name": "alice", "credits": 150})
            assert status == 201, user
            await known_everywhere(pool, "alice", 1)
            second = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", "--db", str(db), "--no-default-sources",
                "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                cwd=tmp_path, env=serve_environ(tmp_path, env),
            )
            _, err = await asyncio.wait_for(second.communicate(), 60)
            lines = err.decode().strip().splitlines()
            assert second.returncode == 2 and len(lines) == 1, lines
            assert "in use by another `proxy-pool serve`" in lines[0] and f"(pid {pool.proc.pid})" in lines[0]

            auth = basic("alice", user["password"])
            answers = await asyncio.gather(*(get_through(pool.proxy_url, origin, auth) for _ in range(200)))
            served = answers.count(200)
            assert set(answers) <= {200, 402} and 0 < served <= 150, {s: answers.count(s) for s in set(answers)}

            # the supervisor dies (kill -9): its workers notice, stop cleanly (leases settled and given
            # back), and the file is free for the next serve once the last of them is gone
            workers = worker_pids(pool)
            await pool.kill()

            def all_gone() -> bool:
                return not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in workers)

            await eventually(all_gone, "the orphaned workers stopped")
        finally:
            await pool.kill()
    assert "Traceback" not in pool.messages()
    assert ledger(db, "alice") == (150 - served, 150 - served, 0)
    lock = ServeLock(db)
    lock.acquire()
    lock.release()


def _alive(pid: int) -> bool:
    """Not a zombie (an orphan's exit is reaped by init, but not at once)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_leader_killed_mid_load_costs_at_most_its_lease_and_another_worker_leads(
    tmp_path: Path, origin: int  # noqa: F811
) -> None:
    """The leader is killed with SIGKILL under load: the other worker takes the lead (it scrapes and checks
    a source added through the admin API afterwards) while the supervisor starts the dead one again, every
    worker serves through the new source's proxy, and the user loses at most the killed worker's lease
    (plus the requests it was carrying); never a credit is spent twice."""
    db = tmp_path / "pool.db"
    env = {
        "PROXY_POOL_GATEWAY__AUTH": "users",
        "PROXY_POOL_CREDITS__LEASE_BLOCK": str(LEASE),
        "PROXY_POOL_LOG__ACCESS_LOG": "true",
    }
    async with upstreams(2) as ups:
        first, second = tmp_path / "first.txt", tmp_path / "second.txt"
        first.write_text(ups[0].url() + "\n")
        second.write_text(ups[1].url() + "\n")
        pool = await start_workers(str(db), tmp_path, 2, "--proxies", str(first), env=env)
        try:
            (leader,) = leaders(pool)
            assert leader in worker_pids(pool)
            status, user = await pool.api("POST", "/api/users", {"name": "bob", "credits": 1000})
            assert status == 201, user
            await known_everywhere(pool, "bob", 1)
            auth = basic("bob", user["password"])
            results: list[int | str] = []

            async def client(n: int) -> None:
                for i in range(25):
                    if n == 0 and i == 8:
                        os.kill(leader, signal.SIGKILL)
                    try:
                        results.append(await get_through(pool.proxy_url, origin, auth))
                    except (aiohttp.ClientError, TimeoutError):
                        results.append("error")  # a request on the killed worker's connection

            await asyncio.gather(*(client(n) for n in range(8)))
            served = results.count(200)
            failed = results.count("error")
            assert set(results) <= {200, "error"} and served >= 150, {s: results.count(s) for s in set(results)}

            def taken_over() -> bool:
                return len(leaders(pool)) >= 2

            await eventually(taken_over, "another worker leading")
            assert leader not in leaders(pool)[1:], pool.messages()

            def restarted() -> bool:
                return pool.messages().count("proxy-pool serving:") >= 3

            await eventually(restarted, "the killed worker started again")
            await known_everywhere(pool, "bob", 1)

            status, source = await pool.api("POST", "/api/sources", {"url": str(second)})
            assert status == 201, source
            await each_worker(pool, "/api/stats", lambda stats: stats["pool"]["selectable"] == 2)
            _, listed = await pool.api("GET", "/api/proxies?status=active")
            (fresh,) = [p["id"] for p in listed["proxies"] if p["port"] == ups[1].port]
            pids = set(worker_pids(pool))

            def carried_by() -> set[int]:
                """The workers whose access log shows a 200 through the new source's proxy."""
                return {
                    int(line["pid"]) for line in pool.lines
                    if isinstance(line, dict) and line.get("logger") == "proxy_pool.access"
                    and f" 200 ok upstream={fresh} " in line.get("message", "")
                }

            async def every_worker_used_it() -> bool:
                assert await get_through(pool.proxy_url, origin, auth) == 200
                served_now[0] += 1
                return carried_by() >= pids

            served_now = [0]
            await eventually(every_worker_used_it, lambda: f"a request through #{fresh} on each of {pids}: {carried_by()}")
            served += served_now[0]
        finally:
            await stop(pool)
    free, total, leased = ledger(db, "bob")
    assert free == total and leased == 0
    # every answered request is paid once; the killed worker's lease (at most LEASE, with what it was
    # carrying) is forfeited when it starts again
    assert 1000 - served - failed - LEASE <= free <= 1000 - served, (free, served, failed)
