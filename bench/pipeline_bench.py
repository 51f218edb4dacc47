"""Checker pipeline throughput: N proxies (a few dozen live, the rest closed ports and black holes).

    python bench/pipeline_bench.py [--proxies 5000] [--live 40] [--holes 500] [--concurrency 500] [--format json]

Live upstreams (pproxy), black holes and the judge run in a helper process so the pipeline has its
event loop to itself, as in ``proxy-pool serve``.  Reports wall time, peak RSS and the peak number of
open file descriptors of the checking process.  Loopback only.
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
import pproxy
from aiohttp import web

async def main(live, holes):
    ports = []
    for i in range(live):
        host = f"127.0.1.{i % 250 + 1}"
        srv = await pproxy.Server(f"http+socks5://{host}:0/@in").start_server({"rserver": [], "verbose": lambda *a, **k: None})
        ports.append([host, srv.sockets[0].getsockname()[1]])
    hole_socks = []
    hole_ports = []
    for i in range(holes):
        s = socket.socket(); s.bind(("127.0.2.1", 0)); s.listen(4096); hole_socks.append(s)
        hole_ports.append(s.getsockname()[1])
    async def get(request):
        return web.json_response({"origin": request.remote, "headers": dict(request.headers)})
    app = web.Application(); app.router.add_get("/get", get)
    runner = web.AppRunner(app, access_log=None); await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0); await site.start()
    print(json.dumps({"live": ports, "holes": hole_ports, "judge": runner.addresses[0][1]}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def closed_ports(n: int) -> list[tuple[str, int]]:
    import socket

    out = []
    for i in range(n):
        host = f"127.0.3.{i % 250 + 1}"
        with socket.socket() as s:
            s.bind((host, 0))
            out.append((host, s.getsockname()[1]))
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def run(args: argparse.Namespace) -> dict[str, object]:
    from config import Settings
    from gateway.app import open_registry
    from pool.models import UpstreamURL
    from pool.pipeline import Pipeline
    from pool.selector import Selector
    from pool.store import SqliteStore

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER, str(args.live), str(args.holes)], stdout=subprocess.PIPE, text=True
    )
    try:
        info = json.loads(helper.stdout.readline())  # type: ignore[union-attr]
        live = [(h, p) for h, p in info["live"]]
        holes = [("127.0.2.1", p) for p in info["holes"]]
        closed = closed_ports(args.proxies - len(live) - len(holes))
        targets = live + holes + closed
        random.Random(1).shuffle(targets)
        settings = Settings(
            checker={
                "judges": [f"http://127.0.0.1:{info['judge']}/get?show_env=1"],
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

            pipeline.on_run = on_run
            await pipeline.start()
            peak_fds = open_fds()
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
            sampler.cancel()
            await pipeline.stop()
            counts = {"active": 0, "dead": 0, "new": 0}
            for proxy in selector.proxies():
                counts[proxy.status.value] += 1
            await store.close()
    finally:
        helper.kill()
        helper.wait()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "proxies": len(targets),
        "live": len(live),
        "black_holes": len(holes),
        "closed_ports": len(closed),
        "concurrency": args.concurrency,
        "checker_timeout_s": args.timeout,
        "wall_s": round(wall, 2),
        "proxies_per_s": round(len(targets) / wall, 1),
        "peak_rss_mb": round(rss_mb, 1),
        "peak_open_fds": peak_fds,
        "fd_soft_limit_before": soft,
        "result": counts,
        "live_failures": live_failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxies", type=int, default=5000)
    parser.add_argument("--live", type=int, default=40)
    parser.add_argument("--holes", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    if args.format == "json":
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
