"""What one keep-alive request costs the proxy, counted rather than timed: user-space instructions per
request of ``proxy-pool serve`` and of pproxy ``-s rr`` over the same upstreams, under callgrind.

Instruction counts do not move with the load of a shared machine (wall-clock figures do), so this is
the figure to steer by.  For each pool of ``gateway_bench.POOLS`` (mixed, SOCKS5 only, HTTP only) and
each head (wrk's fixed one; a browser's 8 field lines whose Cookie and Referer change on every request,
``bench/wrk_absolute.lua`` with ``WRK_BROWSER=1``), each proxy runs under
``valgrind --tool=callgrind --instr-atstart=no``; after a warm-up, instrumentation is switched on
(``callgrind_control -i on``) for a wrk run of ``--seconds`` with ``--connections`` keep-alive
connections, then the counters are dumped.  What the process does on its own timers (checks, flushes,
watchdog) is counted over a quiet spell of the same length just before and taken off pro rata, so a slow
(loaded) run, which answers fewer requests in the same time, does not charge them more: (instructions
- idle rate x run time) / requests answered = the row.  The kernel's
work (system calls, loopback TCP) is not counted: both proxies make the same system calls per request
(two reads, two writes; ``strace -c``).

Run:  python bench/callgrind_bench.py [--pools mixed,socks5,http] [--heads wrk,browser] [--seconds 10]
Needs: valgrind, wrk, nginx, tinyproxy, squid, microsocks; pproxy.  About 2 minutes per pool and head.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import say
from bench.gateway_bench import POOLS, Gateway, _pool_upstream, run_wrk
from bench.upstreams import Services

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parent / "results" / "callgrind.md"


def _valgrind(out: Path) -> tuple[str, ...]:
    return ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def _total(out_glob: Path) -> int:
    """Instructions in the dumps of one run (callgrind writes ``out`` and ``out.N`` per dump)."""
    total = 0
    for path in out_glob.parent.glob(out_glob.name + "*"):
        m = re.search(rb"^totals: (\d+)", path.read_bytes(), re.MULTILINE)
        if m:
            total += int(m.group(1))
    return total


def _count(pid: int, out: Path, during: Callable[[], T]) -> tuple[int, T]:
    """Instructions of ``pid`` while ``during()`` runs (instrumentation on around it, then a dump)."""
    for old in out.parent.glob(out.name + "*"):
        old.unlink()
    _control("-z", str(pid))  # zero whatever came before (instrumentation is off)
    _control("-i", "on", str(pid))
    result = during()
    _control("-i", "off", str(pid))
    _control("-d", str(pid))
    deadline = time.monotonic() + 60
    while (instructions := _total(out)) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    return instructions, result


def measure(pid: int, address: tuple[str, int], target: str, out: Path, args: argparse.Namespace,
            browser: bool) -> dict[str, float]:
    """Warm up; count instructions over a quiet spell (the process's own timers: the idle rate) and
    over one wrk run; instructions per request = (run - idle rate x run time) / requests."""
    run_wrk(address, target, close=False, duration=args.warmup, connections=args.connections, threads=1,
            browser=browser)
    idle, _ = _count(pid, out, lambda: time.sleep(args.seconds))
    started = time.monotonic()
    busy, raw = _count(pid, out, lambda: run_wrk(address, target, close=False, duration=args.seconds,
                                                 connections=args.connections, threads=1, browser=browser))
    spell = time.monotonic() - started
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "bad_status"))
    requests = max(1, raw["requests"])
    net = busy - idle * spell / args.seconds
    return {"requests": raw["requests"], "errors": errors, "instructions": busy, "idle_per_s": idle / args.seconds,
            "per_request": net / requests, "raw_per_request": busy / requests}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pools", default="mixed,socks5,http")
    parser.add_argument("--heads", default="wrk,browser")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--skip-pproxy", action="store_true")
    parser.add_argument("--root", type=Path, action="append", default=[],
                        help="also count another source tree's gateway (git archive REV | tar -x -C DIR); repeatable")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE;KEY=VALUE",
                        help="also count a gateway with these [gateway] settings, e.g. "
                             "'routing off=distinct_exit=\"off\";site_ban_seconds=0;hedge_after=\"off\"'; repeatable")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            print(f"callgrind_bench: {tool} is not installed (apt-get install valgrind wrk)", file=sys.stderr)
            return 2
    pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows: list[tuple[str, str, str, dict[str, float]]] = []
    work = Path(tempfile.mkdtemp(prefix="proxy-pool-callgrind-"))
    try:
        with Services(log=say) as services:
            origin = services.nginx("127.0.0.1", big_mb=1)
            hosts = iter(f"127.0.0.{i}" for i in range(20, 60))
            software = sorted({s for p in pools for s in POOLS[p]})
            ups = {name: _pool_upstream(services, name, next(hosts)) for name in software}
            target = f"{origin.base()}/"
            for pool in pools:
                urls = [ups[m].url for m in POOLS[pool]]
                out = work / f"gw-{pool}.cg"
                gw = Gateway(services, work / f"gw-{pool}", proxies=urls, db=work / f"gw-{pool}.db",
                             prefix=_valgrind(out))
                gw.wait_active(len(urls), timeout=600)
                fronts = [("proxy-pool", gw.proc.pid, gw.address, out)]
                for n, variant in enumerate(args.variant):
                    label, _, settings = variant.partition("=")
                    v_out = work / f"gw-{pool}-v{n}.cg"
                    v_gw = Gateway(services, work / f"gw-{pool}-v{n}", proxies=urls, db=work / f"gw-{pool}-v{n}.db",
                                   prefix=_valgrind(v_out), extra_config="".join(f"{kv}\n" for kv in settings.split(";")))
                    v_gw.wait_active(len(urls), timeout=600)
                    fronts.append((f"proxy-pool ({label})", v_gw.proc.pid, v_gw.address, v_out))
                for n, root in enumerate(args.root):
                    other_out = work / f"gw-{pool}-root{n}.cg"
                    other = Gateway(services, work / f"gw-{pool}-root{n}", proxies=urls,
                                    db=work / f"gw-{pool}-root{n}.db", prefix=_valgrind(other_out), root=root)
                    other.wait_active(len(urls), timeout=600)
                    fronts.append((f"proxy-pool ({root.name})", other.proc.pid, other.address, other_out))
                if not args.skip_pproxy:
                    pp_out = work / f"pp-{pool}.cg"
                    pp = services.pproxy("127.0.0.1", remotes=urls, prefix=_valgrind(pp_out))
                    fronts.append(("pproxy -s rr", pp.pid, (pp.host, pp.port), pp_out))
                for head in heads:
                    for name, pid, address, cg in fronts:
                        figures = measure(pid, address, target, cg, args, browser=head == "browser")
                        say(f"{pool:<7} {head:<8} {name:<13} {figures['per_request']:>9,.0f} instructions/request"
                            f" (raw {figures['raw_per_request']:,.0f}, idle {figures['idle_per_s']:,.0f}/s;"
                            f" {figures['requests']} requests, {figures['errors']} errors)")
                        rows.append((pool, head, name, figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"# callgrind, {at}: user-space instructions per keep-alive request", "",
             f"wrk -t1 -c{args.connections}, {args.seconds:g} s counted after {args.warmup:g} s of warm-up", "",
             "instructions / request = (instructions during the run - the idle rate x its length) / requests;",
             "the idle rate is counted over a quiet spell of the same length just before", "",
             "| pool | head | proxy | instructions / request | without the idle correction | idle / s | requests | errors |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for pool, head, name, f in rows:
        lines.append(f"| {pool} | {head} | {name} | {f['per_request']:,.0f} | {f['raw_per_request']:,.0f} |"
                     f" {f['idle_per_s']:,.0f} | {f['requests']} | {f['errors']} |")
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
