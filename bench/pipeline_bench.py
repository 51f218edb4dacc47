"""Checker pipeline throughput: N proxies shaped like a free list (a few dozen honest ones, as many
liars, the rest closed ports and black holes).

    python bench/pipeline_bench.py [--proxies 5000] [--live 40] [--liars 40] [--holes 500] [--concurrency 500]
                                   [--format json]

Live upstreams (pproxy), liars (tests/support/liars.py, in equal parts: fake judge, HTML injector, man
in the middle, CONNECT refuser), black holes and the judge (``/judge`` and ``/judge/page``, as a
proxy-pool admin serves them) run in a helper process so the pipeline has its event loop to itself, as
in ``proxy-pool serve``.  Reports wall time, peak RSS and the peak number of open file descriptors of
the checking process, and the share of the list each check removes.  Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HELPER = r"""
import asyncio, json, socket, sys
sys.modules["uvloop"] = None
sys.path.insert(0, sys.argv[4])
import pproxy
from aiohttp import web
from tests.support.liars import LIARS

KINDS = ["fake_judge", "html_injector", "man_in_the_middle", "connect_refuser"]

async def main(live, holes, liars):
    ports = []
    for i in range(live):
        host = f"127.0.1.{i % 250 + 1}"
        srv = await pproxy.Server(f"http+socks5://{host}:0/@in").start_server({"rserver": [], "verbose": lambda *a, **k: None})
        ports.append([host, srv.sockets[0].getsockname()[1]])
    liar_ports = []
    for i in range(liars):
        kind = KINDS[i % len(KINDS)]
        proxy = await LIARS[kind](f"127.0.4.{i % 250 + 1}", "elite").start()
        liar_ports.append([kind, proxy.host, proxy.port])
    page = open(sys.argv[5], "rb").read()
    hole_socks = []
    hole_ports = []
    for i in range(holes):
        s = socket.socket(); s.bind(("127.0.2.1", 0)); s.listen(4096); hole_socks.append(s)
        hole_ports.append(s.getsockname()[1])
    async def get(request):
        return web.json_response({"args": dict(request.query), "origin": request.remote, "headers": dict(request.headers)})
    async def page_of(request):
        return web.Response(body=page, content_type="text/html")
    app = web.Application(); app.router.add_get("/judge", get); app.router.add_get("/judge/page", page_of)
    runner = web.AppRunner(app, access_log=None); await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0); await site.start()
    print(json.dumps({"live": ports, "liars": liar_ports, "holes": hole_ports, "judge": runner.addresses[0][1]}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
"""

# proxybroker2 checking the same list (``--proxybroker PYTHON``: an interpreter that has it; it is not a
# dependency of this project).  Offline: its external-IP lookup answers 127.0.0.1, a judge's host:port
# resolves to its address; one try per proxy (max_tries=1, as our checker), types HTTP at any anonymity.
PEER = r"""
import asyncio, json, os, resource, sys, time
from proxybroker2 import Broker
from proxybroker2.resolver import Resolver

async def ext_ip(self):
    return "127.0.0.1"

_resolve = Resolver.resolve
async def resolve(self, host, *args, **kwargs):
    if host.startswith("127."):
        return host.split(":")[0]
    return await _resolve(self, host, *args, **kwargs)

Resolver.get_real_ext_ip = ext_ip
Resolver.resolve = resolve

async def main(spec):
    proxies = asyncio.Queue()
    broker = Broker(proxies, timeout=spec["timeout"], max_conn=spec["concurrency"], max_tries=1,
                    judges=[spec["judge"]], providers=[])
    peak_fds = len(os.listdir("/proc/self/fd"))
    found = 0
    started = time.perf_counter()
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    await broker.find(types=["HTTP"], data=[tuple(t) for t in spec["targets"]])

    async def sample():
        nonlocal peak_fds
        while True:
            peak_fds = max(peak_fds, len(os.listdir("/proc/self/fd")))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    while True:
        proxy = await proxies.get()
        if proxy is None:
            break
        found += 1
    wall = time.perf_counter() - started
    sampler.cancel()
    return {"wall_s": round(wall, 2), "cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_open_fds": peak_fds, "working": found}

print(json.dumps(asyncio.run(main(json.load(sys.stdin)))))
"""

try:  # the page every proxy-pool judge serves; older trees (benched for comparison) have none
    from plugins import JUDGE_PAGE
except ImportError:
    JUDGE_PAGE = b"<html><body>judge page</body></html>"


def closed_ports(n: int) -> list[tuple[str, int]]:
    import socket

    out = []
    for i in range(n):
        host = f"127.0.3.{i % 250 + 1}"
        with socket.socket() as s:
            s.bind((host, 0))
            out.append((host, s.getsockname()[1]))
    return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def run(args: argparse.Namespace) -> dict[str, object]:
    from config import Settings
    from config.settings import CheckerSettings
    from gateway.app import open_registry
    from gateway.eventloop import loop_name
    from pool.models import UpstreamURL
    from pool.pipeline import Pipeline
    from pool.selector import Selector
    from pool.store import SqliteStore

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    page_file = tempfile.NamedTemporaryFile(prefix="judge-page-", suffix=".html")
    page_file.write(JUDGE_PAGE)
    page_file.flush()
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER, str(args.live), str(args.holes), str(args.liars), str(ROOT), page_file.name],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(helper.stdout.readline())  # type: ignore[union-attr]
        live = [(h, p) for h, p in info["live"]]
        liars = {(h, p): kind for kind, h, p in info["liars"]}
        holes = [("127.0.2.1", p) for p in info["holes"]]
        closed = closed_ports(args.proxies - len(live) - len(liars) - len(holes))
        targets = live + list(liars) + holes + closed
        random.Random(1).shuffle(targets)
        settings = Settings(
            checker={
                "judges": [f"http://127.0.0.1:{info['judge']}/judge"],
                # offline: the judge's own page only (older trees have no such key)
                **({"integrity_pages": []} if "integrity_pages" in CheckerSettings.model_fields else {}),
                "concurrency": args.concurrency,
                "timeout": args.timeout,
            },
            plugins={"contrib_dir": "/nonexistent"},
        )
        with tempfile.TemporaryDirectory() as tmp:
            store = await SqliteStore.open(Path(tmp) / "bench.db")
            registry = await open_registry(settings)
            selector = Selector()
            result = await store.upsert_proxies(None, [UpstreamURL.parse(f"http://{h}:{p}") for h, p in targets])
            pipeline = Pipeline(settings, registry, store, selector)
            live_set = {f"{h}:{p}" for h, p in live}
            live_failures: dict[str, int] = {}

            def on_run(run) -> None:  # why a live upstream failed, if one does
                if f"{run.proxy.host}:{run.proxy.port}" in live_set and run.verdict and not run.verdict.passed:
                    key = f"{run.verdict.failed_check}: {run.verdict.detail[:80]}"
                    live_failures[key] = live_failures.get(key, 0) + 1

            removed_by: dict[str, int] = {}
            liar_verdicts: dict[str, dict[str, int]] = {}

            def on_run_all(run) -> None:
                on_run(run)
                verdict = run.verdict
                if verdict is not None and verdict.passed is False and verdict.failed_check:
                    removed_by[verdict.failed_check] = removed_by.get(verdict.failed_check, 0) + 1
                kind = liars.get((run.proxy.host, run.proxy.port))
                if kind is not None and verdict is not None:
                    outcome = (
                        f"dead ({verdict.failed_check})" if verdict.passed is False
                        else "active" + ("" if getattr(run.proxy, "tunnels", None) is not False else ", tunnels=false")
                    )
                    liar_verdicts.setdefault(kind, {})
                    liar_verdicts[kind][outcome] = liar_verdicts[kind].get(outcome, 0) + 1

            pipeline.on_run = on_run_all
            await pipeline.start()
            peak_fds = open_fds()
            cpu_before = _cpu()
            started = time.perf_counter()
            pipeline.submit(result.new)

            async def sample() -> None:
                nonlocal peak_fds
                while True:
                    peak_fds = max(peak_fds, open_fds())
                    await asyncio.sleep(0.05)

            sampler = asyncio.ensure_future(sample())
            await pipeline.wait_idle()
            wall = time.perf_counter() - started
            cpu = _cpu() - cpu_before
            sampler.cancel()
            await pipeline.stop()
            counts = {"active": 0, "dead": 0, "new": 0}
            tunnels = {"yes": 0, "no": 0, "unknown": 0}
            for proxy in selector.proxies():
                counts[proxy.status.value] += 1
                if proxy.status.value == "active":
                    flag = getattr(proxy, "tunnels", None)
                    tunnels["unknown" if flag is None else "yes" if flag else "no"] += 1
            await store.close()
        peer = None
        if args.proxybroker:
            spec = {"targets": [[h, p] for h, p in targets], "judge": f"http://127.0.0.1:{info['judge']}/judge",
                    "timeout": args.timeout, "concurrency": args.concurrency}
            ran = subprocess.run([str(args.proxybroker), "-c", PEER], input=json.dumps(spec), capture_output=True,
                                 text=True, check=False)
            lines = ran.stdout.strip().splitlines()
            peer = json.loads(lines[-1]) if ran.returncode == 0 and lines else {"error": ran.stderr[-800:]}
    finally:
        helper.kill()
        helper.wait()
        page_file.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "proxies": len(targets),
        "live": len(live),
        "liars": len(liars),
        "black_holes": len(holes),
        "closed_ports": len(closed),
        "concurrency": args.concurrency,
        "checker_timeout_s": args.timeout,
        "wall_s": round(wall, 2),
        "proxies_per_s": round(len(targets) / wall, 1),
        "cpu_s": round(cpu, 2),  # the checking process's user + system time while it checked
        "loop": loop_name(),
        "peak_rss_mb": round(rss_mb, 1),
        "peak_open_fds": peak_fds,
        "fd_soft_limit_before": soft,
        "result": counts,
        "active_tunnels": tunnels,
        "removed_by": {
            check: f"{n} ({100 * n / len(targets):.2f} %)" for check, n in sorted(removed_by.items(), key=lambda kv: -kv[1])
        },
        "liar_verdicts": liar_verdicts,
        "live_failures": live_failures,
        **({"proxybroker2": peer} if peer is not None else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxies", type=int, default=5000)
    parser.add_argument("--live", type=int, default=40)
    parser.add_argument("--liars", type=int, default=40, help="lying proxies, in equal parts of the four kinds")
    parser.add_argument("--holes", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--proxybroker", type=Path, default=None,
                        help="a Python with proxybroker2 installed: it checks the same list after us (HTTP, max_tries=1)")
    parser.add_argument("--loop", choices=("serve", "asyncio", "uvloop"), default="serve",
                        help="event loop of the checking process: serve's (uvloop where installed, the default)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args()
    if args.loop == "asyncio":
        figures = asyncio.run(run(args))
    elif args.loop == "uvloop":
        import uvloop

        figures = uvloop.run(run(args))
    else:
        from gateway.eventloop import run as serve_loop_run

        figures = serve_loop_run(run(args))
    if args.format == "json":
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
