"""Replicas and workers: what ``--workers 2`` buys on SQLite and PostgreSQL, what PostgreSQL costs,
how fast changes travel.

    python bench/replicas_bench.py [--duration 8] [--rounds 2] [--pool-size 100000] [--changes 60]
                                   [--db sqlite,postgres] [--pin] [--skip a,b,c]

(a) ``serve --workers 2`` against one ``serve`` process on the same database (a fresh SQLite file, or
    a fresh PostgreSQL database) and the same upstreams (tinyproxy x2 + squid, nginx origin, ``wrk``
    with 32 keep-alive connections): req/s, p50/p99 and the CPU every gateway process together spent
    per request (the supervisor and its workers); interleaved rounds.  ``--direct``: no upstreams, the
    gateway's direct fallback to the origin, so only wrk and nginx share the cores with the gateway.  ``--pin`` (taskset): wrk runs
    on the last core with one thread, one ``serve`` on the first core, the workers on every core, so
    on a 2-core machine one worker shares its core with wrk (the upstreams and the origin float).
(b) 100,000 proxies (half active) in PostgreSQL and in SQLite: the time to load the pool into the
    selector, the µs of a filtered ``Selector.pick`` on each, and the RSS of ``serve`` on each.
(c) two replicas (PostgreSQL), two workers (SQLite): the time from a top-up request on one to the
    other's in-memory balance showing it (its ``/api/users``, polled every 2 ms): p50 and p99.

Starts its own PostgreSQL (tests/support/postgres.py: initdb + pg_ctl in a temp dir) and kills
everything it started at the end.  Figures vary with the load of the shared machine: compare
figures of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, fill_pool
from bench.gateway_bench import run_wrk
from bench.upstreams import Services, free_port
from tests.support.postgres import PgServer, missing_reason

CORES = sorted(os.sched_getaffinity(0))

TOKEN = "bench-token"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Serve:
    """``proxy-pool serve`` (optionally ``--workers N``) as a subprocess on fixed ports."""

    def __init__(self, work: Path, db: str, *, workers: int = 1, proxies: Path | None = None, name: str = "bench",
                 extra_env: dict[str, str] | None = None, cpus: str | None = None) -> None:
        self.port, self.admin = free_port(), free_port()
        pin = ["taskset", "-c", cpus] if cpus else []
        argv = [*pin, sys.executable, "-m", "gateway", "serve", "--no-default-sources", "--db", db,
                "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin}",
                "--replica-name", name, "--log-level", "warning"]
        if workers > 1:
            argv += ["--workers", str(workers)]
        if proxies is not None:
            argv += ["--proxies", str(proxies)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_POOL_")}
        env.update(PROXY_POOL_ADMIN__TOKEN=TOKEN, PROXY_POOL_CHECKER__JUDGES="[]",
                   PROXY_POOL_PLUGINS__CONTRIB_DIR=str(work / "none"), PYTHONPATH=str(ROOT), **(extra_env or {}))
        self.proc = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids() if Path(f"/proc/{p}").exists())

    def api(self, path: str, body: Any = None, method: str | None = None) -> Any:
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def wait_ready(self, selectable: int, bound: float = 120.0) -> None:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            try:
                if self.api("/api/stats")["pool"]["selectable"] >= selectable:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve not ready with {selectable} selectable after {bound}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# (a) ------------------------------------------------------------------------------------------
def bench_workers(pg: PgServer | None, services: Services, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    origin = services.nginx("127.0.0.1", big_mb=1)
    ups = [services.tinyproxy("127.0.0.2"), services.tinyproxy("127.0.0.3"), services.squid("127.0.0.4")]
    listing = work / "upstreams.txt"
    listing.write_text("".join(u.url + "\n" for u in ups))
    fresh = iter(range(10**6))
    databases = {
        "SQLite": lambda: str(work / f"workers-{next(fresh)}.db"),
        "PostgreSQL": lambda: pg.create_database() if pg is not None else "",
    }
    cases = [(f"{db}, {label}", db, workers) for db in databases if db.lower()[:6] in args.db
             for label, workers in (("1 process", 1), ("--workers 2", 2))]
    rows: dict[str, list[dict[str, Any]]] = {case: [] for case, _, _ in cases}
    wrk_cores = {CORES[-1]} if args.pin else set(CORES)
    for _ in range(args.rounds):
        for case, db, workers in cases:
            cpus = None if not args.pin else ",".join(map(str, CORES)) if workers > 1 else str(CORES[0])
            direct = {"PROXY_POOL_GATEWAY__FALLBACK": "direct", "PROXY_POOL_GATEWAY__DIRECT_ALLOW": '["127.0.0.0/8"]'}
            serve = Serve(work, databases[db](), workers=workers, proxies=None if args.direct else listing, cpus=cpus,
                          extra_env=direct if args.direct else None)
            try:
                serve.wait_ready(0 if args.direct else len(ups))
                if workers > 1:
                    time.sleep(1.0)  # both workers up (each loads the pool)
                before = serve.cpu()
                os.sched_setaffinity(0, wrk_cores)  # wrk inherits it
                try:
                    raw = run_wrk(("127.0.0.1", serve.port), origin.base() + "/", close=False, duration=args.duration,
                                  connections=32, threads=1 if args.pin else 2)
                finally:
                    os.sched_setaffinity(0, set(CORES))
                spent = serve.cpu() - before
            finally:
                serve.stop()
            row = {"rps": raw["rps"], "p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
                   "cpu_us_per_request": 1e6 * spent / max(1, raw["requests"]), "requests": raw["requests"]}
            say(f"(a) {case:<24} {row['rps']:7.0f} req/s  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
                f"cpu {row['cpu_us_per_request']:.0f} us/req")
            rows[case].append(row)
    out = []
    for label, runs in rows.items():
        out.append({"case": label, **{k: statistics.median(r[k] for r in runs) for k in runs[0]},
                    "rounds_rps": [round(r["rps"]) for r in runs]})
    return out


# (b) ------------------------------------------------------------------------------------------
async def load_and_pick(location: str) -> dict[str, float]:
    from pool.models import ProxyProtocol
    from pool.selector import Route, Selector
    from pool.stores import open_store

    store = await open_store(location)
    try:
        started = time.perf_counter()
        proxies = await store.all_proxies()
        load_s = time.perf_counter() - started
    finally:
        await store.close()
    sel = Selector("round_robin")
    sel.load(proxies)
    route = Route(protocol=ProxyProtocol.HTTP, country="DE")
    number = 100_000
    pick = min(timeit.repeat(lambda: sel.pick(route), number=number, repeat=3)) / number * 1e6
    sticky = min(timeit.repeat(lambda: sel.pick(Route(country="DE", session="s1")), number=10_000, repeat=3))
    fresh = iter(range(10**9))
    new_session = min(timeit.repeat(lambda: sel.pick(Route(country="DE", session=f"n{next(fresh)}")), number=200, repeat=3))
    return {"load_s": load_s, "pick_us": pick, "sticky_pick_us": sticky / 10_000 * 1e6,
            "new_session_pick_us": new_session / 200 * 1e6, "selectable": sel.active_count}


def bench_big_pool(pg: PgServer, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from pool.store.postgres import PostgresStore
    from pool.store import SqliteStore

    out = []
    sqlite_path = str(work / "big.db")
    pg_url = pg.create_database()
    for label, location, opener in (("SQLite", sqlite_path, SqliteStore.open), ("PostgreSQL", pg_url, PostgresStore.open)):
        async def prepare(location: str = location, opener: Any = opener) -> None:
            store = await opener(location)
            try:
                await fill_pool(store, args.pool_size, latency=lambda: 100.0)
            finally:
                await store.close()

        asyncio.run(prepare())
        figures = asyncio.run(load_and_pick(location))
        serve = Serve(work, location)
        try:
            serve.wait_ready(args.pool_size // 2)
            time.sleep(1.0)
            figures["serve_rss_mb"] = sum(rss_mb(p) for p in serve.pids())
        finally:
            serve.stop()
        say(f"(b) {label:<10} load {figures['load_s']:.2f} s  pick {figures['pick_us']:.2f} us  "
            f"known session {figures['sticky_pick_us']:.1f} us  new session (rendezvous over the DE bucket) "
            f"{figures['new_session_pick_us']:.0f} us  serve RSS {figures['serve_rss_mb']:.0f} MB")
        out.append({"store": label, **figures})
    return out


# (c) ------------------------------------------------------------------------------------------
def bench_propagation(pg: PgServer, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    url = pg.create_database()
    a, b = Serve(work, url, name="a"), Serve(work, url, name="b")
    times: list[float] = []
    try:
        a.wait_ready(0)
        b.wait_ready(0)
        a.api("/api/users", {"name": "topped", "credits": 1})
        want = 1
        for _ in range(args.changes):
            time.sleep(0.05)
            want += 7
            started = time.perf_counter()  # from the top-up request on a to b's in-memory balance
            a.api("/api/users/topped/credits", {"amount": 7})
            name = "topped"
            deadline = started + 10
            while time.perf_counter() < deadline:
                users = b.api("/api/users")["users"]
                if any(u["name"] == name and u["credits"] == want for u in users):
                    break
                time.sleep(0.002)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        a.stop()
        b.stop()
    times.sort()
    out = {"changes": len(times), "p50_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
           "max_ms": times[-1]}
    say(f"(c) change on one replica seen by the other: p50 {out['p50_ms']:.0f} ms  p99 {out['p99_ms']:.0f} ms "
        f"(max {out['max_ms']:.0f} ms, {len(times)} changes)")
    return out


def bench_propagation_workers(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(c) on SQLite: ``serve --workers 2``; a top-up on one worker until the other's balance shows it.
    Each worker is reached through a kept-alive connection to the shared admin port that it accepted."""
    import http.client

    serve = Serve(work, str(work / "propagation.db"), workers=2, name="box")
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    conns: dict[str, http.client.HTTPConnection] = {}

    def call(con: http.client.HTTPConnection, path: str, body: Any = None) -> Any:
        con.request("GET" if body is None else "POST", path, None if body is None else json.dumps(body), headers)
        return json.loads(con.getresponse().read())

    times: list[float] = []
    try:
        serve.wait_ready(0)
        for _ in range(200):  # each new connection goes to either worker
            con = http.client.HTTPConnection("127.0.0.1", serve.admin, timeout=10)
            try:
                conns.setdefault(call(con, "/api/stats")["replica"], con)
            except OSError:
                time.sleep(0.2)
            if len(conns) == 2:
                break
        a, b = list(conns.values())
        call(a, "/api/users", {"name": "topped", "credits": 1})
        want = 1
        for _ in range(args.changes):
            time.sleep(0.05)
            want += 7
            started = time.perf_counter()
            call(a, "/api/users/topped/credits", {"amount": 7})
            deadline = started + 10
            while time.perf_counter() < deadline:
                if any(u["name"] == "topped" and u["credits"] == want for u in call(b, "/api/users")["users"]):
                    break
                time.sleep(0.002)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        for con in conns.values():
            con.close()
        serve.stop()
    times.sort()
    out = {"changes": len(times), "p50_ms": statistics.median(times),
           "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))], "max_ms": times[-1]}
    say(f"(c) SQLite, change on one worker seen by the other: p50 {out['p50_ms']:.0f} ms  p99 {out['p99_ms']:.0f} ms "
        f"(max {out['max_ms']:.0f} ms, {len(times)} changes)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=60)
    parser.add_argument("--skip", default="", help="comma list of a,b,c to skip")
    parser.add_argument("--db", default="sqlite,postgres", help="(a) on which databases: sqlite, postgres or both")
    parser.add_argument("--pin", action="store_true", help="(a): wrk on the last core, one serve on the first (taskset)")
    parser.add_argument("--direct", action="store_true",
                        help="(a) without upstream proxies: every request goes direct to the nginx origin "
                             "(no tinyproxy or squid competing for the cores: the gateway is what is measured)")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    needs_pg = "postgres" in args.db or "b" not in skip
    reason = missing_reason() if needs_pg else None
    if reason:
        raise SystemExit(reason)
    pg = PgServer() if needs_pg else None
    if pg is not None:
        pg.init()
        pg.start()
    results: dict[str, Any] = {"load_average": os.getloadavg(), "pinned": args.pin, "cores": len(CORES)}
    try:
        with tempfile.TemporaryDirectory(prefix="replicas-bench-") as tmp:
            work = Path(tmp)
            os.chmod(work, 0o755)
            if "a" not in skip:
                with Services(log=say) as services:
                    results["workers"] = bench_workers(pg, services, work, args)
            if "b" not in skip and pg is not None:
                results["big_pool"] = bench_big_pool(pg, work, args)
            if "c" not in skip and "sqlite" in args.db:
                results["propagation_sqlite_workers"] = bench_propagation_workers(work, args)
            if "c" not in skip and pg is not None and "postgres" in args.db:
                results["propagation"] = bench_propagation(pg, work, args)
    finally:
        if pg is not None:
            pg.destroy()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
