"""Gateway bench: proxy-pool against pproxy and against its own upstreams, same run, same upstreams.

Starts real local software (nginx origin; tinyproxy x2 and squid as HTTP upstreams, each on its own
127.0.0.x and leaving from it), ``proxy-pool serve`` over those three, and pproxy as the comparison
(``-r URL1 -r URL2 -r URL3 -s rr``, on the default asyncio loop and, through a wrapper, on uvloop), then
measures with wrk (absolute-URI requests, ``bench/wrk_absolute.lua``):

  (a) keep-alive clients: req/s, p50, p99  (proxy-pool rotates per request; pproxy per connection)
  (b) ``Connection: close`` clients: req/s, p50, p99
  (c) CONNECT download of a large file: MB/s through each upstream straight, via proxy-pool, via pproxy
  (d) (a) and (b) sent straight to one upstream of each software: the ceiling
  (e) RSS of ``proxy-pool serve`` with 100,000 proxies (half active), and the time of a filtered pick
  (f) with ``--pools``, only this: pools with SOCKS upstreams (microsocks, pproxy socks5) and mixed
      pools, proxy-pool against pproxy ``-s rr`` over the same upstreams: keep-alive, ``Connection:
      close``, 1 MiB POSTs (nginx ``/post``), and (c) through the HTTP pool (CONNECT bulk, % of straight,
      CPU per MB): every row of issue 13's table in one run; ``--old-root`` runs another source tree beside it

Run:  python bench/gateway_bench.py [--duration 6] [--rounds 3] [--format json]
Needs Debian packages: nginx-light (or nginx), tinyproxy, squid, wrk; Python: pproxy (uvloop optional).
Every process it starts is killed at the end, even on error.  All traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, fill_pool, generated_pool, say, tunnel_download
from bench.upstreams import Origin, Service, Services, free_port, have

LUA = Path(__file__).resolve().parent / "wrk_absolute.lua"
RESULTS = Path(__file__).resolve().parent / "results" / "gateway.md"


# wrk -------------------------------------------------------------------------------------
@dataclass
class WrkResult:
    case: str
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int]
    note: str = ""
    cpu_us_per_request: float = 0.0
    runs: list[float] = field(default_factory=list)  # req/s of each round, when there were several


def median_of(results: list[WrkResult]) -> WrkResult:
    """One row for interleaved rounds: the median of each figure, errors summed, every req/s kept."""
    first = results[0]
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    return WrkResult(first.case, first.target, statistics.median(r.rps for r in results),
                     statistics.median(r.p50_ms for r in results), statistics.median(r.p99_ms for r in results),
                     sum(r.requests for r in results), errors, first.note,
                     statistics.median(r.cpu_us_per_request for r in results),
                     [round(r.rps) for r in results] if len(results) > 1 else [])


def run_wrk(proxy: tuple[str, int], target_url: str, *, close: bool, duration: float, connections: int,
            threads: int, body_bytes: int = 0, browser: bool = False) -> dict[str, Any]:
    """One wrk run against ``proxy`` asking for ``target_url`` (a POST of ``body_bytes`` when set);
    the Lua script's JSON summary."""
    env = {**os.environ, "WRK_TARGET": target_url, "WRK_CLOSE": "1" if close else "0"}
    if body_bytes:
        env.update(WRK_METHOD="POST", WRK_BODY_BYTES=str(body_bytes))
    if browser:  # a browser's 8 field lines, Cookie and Referer new on every request
        env["WRK_BROWSER"] = "1"
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
            "-s", str(LUA), f"http://{proxy[0]}:{proxy[1]}/"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=duration + 30, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    raise RuntimeError(f"wrk gave no summary (exit {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")


def wrk_case(case: str, name: str, proxy: tuple[str, int], pid: int, target: str, args: argparse.Namespace, *,
             close: bool, note: str = "", body_bytes: int = 0, browser: bool = False) -> WrkResult:
    """One measured wrk run; also the CPU the proxy process spent per request (robust to a busy machine)."""
    before = cpu_seconds(pid)
    raw = run_wrk(proxy, target, close=close, duration=args.duration, connections=args.connections,
                  threads=args.threads, body_bytes=body_bytes, browser=browser)
    spent = cpu_seconds(pid) - before
    errors = {k: raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "bad_status") if raw[k]}
    result = WrkResult(case, name, raw["rps"], raw["p50_us"] / 1000, raw["p99_us"] / 1000, raw["requests"],
                       errors, note, cpu_us_per_request=1e6 * spent / max(1, raw["requests"]))
    say(f"{case:<14} {name:<24} {result.rps:>7.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
        f"  cpu {result.cpu_us_per_request:5.0f} us/req" + (f"  errors {errors}" if errors else ""))
    return result


# the gateway -----------------------------------------------------------------------------
class Gateway:
    """``proxy-pool serve`` as a subprocess in its own process group, with its admin API."""

    def __init__(self, services: Services, work: Path, *, proxies: list[str] | None, db: Path,
                 extra_config: str = "", root: Path = ROOT, admin_port: int | None = None,
                 prefix: tuple[str, ...] = ()) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.admin_port = admin_port or free_port()  # chosen by the caller when the config names it
        config = work / "proxy-pool.toml"
        self.token = "bench-" + os.urandom(8).hex()  # /api/* wants the bearer token, also from loopback
        config.write_text(f'[admin]\ntoken = "{self.token}"\n[gateway]\nallowed_connect_ports = "*"\n' + extra_config)
        argv = [*prefix, sys.executable, "-m", "gateway", "serve", "--config", str(config), "--no-default-sources",
                "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}",
                "--db", str(db)]
        if proxies:
            listing = work / "proxies.txt"
            listing.write_text("\n".join(proxies) + "\n")
            argv += ["--proxies", str(listing)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_POOL_")}
        env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = services.spawn(argv, work, env)
        # registered with the services so their close() kills it too
        services.services.append(
            Service("proxy-pool", "proxy-pool", "127.0.0.1", self.port, "http", self.proc, work)
        )

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def admin(self, path: str) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def wait_active(self, count: int, timeout: float = 60.0) -> float:
        """Poll the admin API until ``count`` proxies are active; returns the seconds it took."""
        start = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                log = (self.work / "stdout.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"proxy-pool serve exited with {self.proc.returncode}:\n{log}")
            try:
                total = self.admin("/api/proxies?status=active&limit=1")["total"]
                if total >= count:
                    return time.monotonic() - start
            except OSError:
                pass
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"fewer than {count} active proxies after {timeout} s")
            time.sleep(0.1)

    def rss_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MB of the serve process."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return rss / 1024, hwm / 1024


# (c) CONNECT downloads -------------------------------------------------------------------
def bulk_downloads(origin: Origin, upstreams: list[Service], fronts: dict[str, tuple[tuple[str, int], int]],
                   reps: int) -> dict[str, Any]:
    """MB/s through each upstream: straight, and via each rotating front (which upstream carried a
    download is read from the origin's access log: each upstream leaves from its own address).
    Also the CPU the relaying process spent per MB."""
    by_exit = {u.exit_host: u for u in upstreams}
    speeds: dict[str, dict[str, list[float]]] = {u.name: {} for u in upstreams}
    cpu: dict[str, list[float]] = {}
    seq = 0

    def fetch(path_name: str, proxy: tuple[str, int], pid: int) -> None:
        nonlocal seq
        seq += 1
        tag = f"{re.sub(r'[^a-z0-9]+', '-', path_name.lower()).strip('-')}-{seq}"
        before = cpu_seconds(pid)
        speed, size = tunnel_download(proxy, (origin.host, origin.port), f"/big.bin?via={tag}")
        cpu.setdefault(path_name, []).append((cpu_seconds(pid) - before) / (size / 1e6) * 1000)
        if size != origin.big_size:
            raise RuntimeError(f"{path_name}: got {size} bytes of {origin.big_size}")
        peer = origin.peers_by_uri().get(f"/big.bin?via={tag}")
        upstream = by_exit.get(peer)
        if upstream is None:
            raise RuntimeError(f"{path_name}: download left from {peer}, not from a known upstream")
        speeds[upstream.name].setdefault(path_name, []).append(speed / 1e6)

    for rep in range(reps):  # interleaved, so a busy spell of a shared machine falls on every path alike
        for upstream in upstreams:
            fetch("straight", (upstream.host, upstream.port), upstream.pid)
        for name, (address, pid) in fronts.items():
            # a rotating front picks the upstream: download until each was used rep + 1 times (bounded)
            for _ in range(3 * len(upstreams)):
                if all(len(speeds[u.name].get(name, [])) > rep for u in upstreams):
                    break
                fetch(name, address, pid)
    out: dict[str, Any] = {}
    for upstream in upstreams:
        row: dict[str, Any] = {"software": upstream.software, "exit": upstream.exit_host}
        for path_name, values in speeds[upstream.name].items():
            row[path_name] = round(statistics.median(values), 1)  # the median of the downloads
            row.setdefault("_each", {})[path_name] = [round(v, 1) for v in values]
        out[upstream.name] = row
        say(f"(c) {upstream.name:<12} " + "  ".join(f"{k} {v} MB/s" for k, v in row.items() if isinstance(v, float)))
    out["_cpu_ms_per_mb"] = {k: round(statistics.median(v), 2) for k, v in cpu.items()}
    say(f"(c) CPU ms per MB of the relaying process: {out['_cpu_ms_per_mb']}")
    return out


# (f) pools with SOCKS upstreams: proxy-pool against pproxy -s rr over the same upstreams ------------------
POOLS = {
    "mixed": ("tinyproxy", "squid", "microsocks", "pproxy-socks5"),
    "socks5": ("microsocks", "pproxy-socks5"),
    "http": ("tinyproxy", "squid"),
}
POOL_ROWS = [  # (row, pool, close, body bytes, a browser's changing head instead of wrk's fixed one)
    ("keep-alive mixed", "mixed", False, 0, False),
    ("keep-alive SOCKS5 only", "socks5", False, 0, False),
    ("keep-alive HTTP only", "http", False, 0, False),
    ("keep-alive browser head mixed", "mixed", False, 0, True),
    ("keep-alive browser head SOCKS5 only", "socks5", False, 0, True),
    ("keep-alive browser head HTTP only", "http", False, 0, True),
    ("Connection: close mixed", "mixed", True, 0, False),
    ("Connection: close HTTP only", "http", True, 0, False),
    ("1 MiB POST keep-alive mixed", "mixed", False, 1 << 20, False),
]
BULK_ROW = "CONNECT bulk HTTP only"  # (c) through the HTTP pool's upstreams, beside the rows above


def _pool_upstream(services: Services, software: str, host: str) -> Service:
    if software == "pproxy-socks5":
        return services.pproxy(host, schemes="socks5", leave_from_self=True)
    return getattr(services, software)(host)


def pools_case(services: Services, origin: Origin, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Each pool once (its upstreams, a proxy-pool gateway and a pproxy -s rr front over them), then every
    row as interleaved rounds (proxy-pool, pproxy, proxy-pool, ...); medians, CPU per request, errors."""
    hosts = iter(f"127.0.0.{i}" for i in range(20, 60))
    software = sorted({s for pool in POOLS.values() for s in pool})
    ups = {name: _pool_upstream(services, name, next(hosts)) for name in software}
    fronts: dict[str, dict[str, tuple[tuple[str, int], int]]] = {}
    gateways: dict[str, Gateway] = {}
    for pool, members in POOLS.items():
        wanted = any(row[1] == pool for row in POOL_ROWS if row[0] in args.rows)
        if not wanted and not (pool == "http" and BULK_ROW in args.rows):
            continue
        urls = [ups[m].url for m in members]
        fronts[pool] = {}
        for label, root in (("proxy-pool", ROOT), *((("proxy-pool (old)", r),) if (r := args.old_root) else ())):
            gw = Gateway(services, work / f"gw-{pool}-{len(fronts[pool])}", proxies=urls,
                         db=work / f"gw-{pool}-{len(fronts[pool])}.db", root=root)
            gw.wait_active(len(urls))
            fronts[pool][label] = (gw.address, gw.proc.pid)
            if label == "proxy-pool":
                gateways[pool] = gw
        pp = services.pproxy("127.0.0.1", remotes=urls)
        fronts[pool]["pproxy -s rr"] = ((pp.host, pp.port), pp.pid)
        say(f"(f) pool {pool}: {', '.join(urls)}")
    out: dict[str, Any] = {"pools": {k: [ups[m].url for m in v] for k, v in POOLS.items()}, "rows": []}
    page = f"{origin.base()}/"
    post = f"{origin.base()}/post"
    for row, pool, close, body, browser in POOL_ROWS:
        if row not in args.rows:
            continue
        target = post if body else page
        for address, _ in fronts[pool].values():  # warm-up
            run_wrk(address, target, close=close, duration=1, connections=args.connections, threads=args.threads,
                    body_bytes=body, browser=browser)
        runs: dict[str, list[WrkResult]] = {name: [] for name in fronts[pool]}
        for _ in range(max(1, args.rounds)):
            for name, (address, pid) in fronts[pool].items():
                runs[name].append(wrk_case(f"(f) {row}", name, address, pid, target, args, close=close,
                                           body_bytes=body, browser=browser))
        out["rows"].append({"row": row, "pool": pool, "results": {n: asdict(median_of(r)) for n, r in runs.items()}})
    if BULK_ROW in args.rows:
        out["bulk"] = bulk_downloads(origin, [ups[m] for m in POOLS["http"]], fronts["http"], args.bulk_reps)
    if args.profile and "mixed" in gateways:
        out["profile"] = profile_gateway(gateways["mixed"], page, args, args.output.with_name("gateway-pools-profile"))
    return out


def render_pools(data: dict[str, Any]) -> str:
    """The (f) table: one line per row, proxy-pool (and the old code) beside pproxy, with the ratio;
    then the CONNECT bulk table (MB/s and % of straight per upstream, CPU ms per MB per front)."""
    lines: list[str] = []
    if data["rows"]:
        lines += ["| row | " + " | ".join(next(iter(data["rows"]))["results"]) + " | ratio |", "|---|"]
        lines[1] += "---|" * (len(next(iter(data["rows"]))["results"]) + 1)
    for row in data["rows"]:
        results = row["results"]
        cells = []
        for r in results.values():
            errors = sum(r["errors"].values())
            cells.append(f"{r['rps']:,.0f} req/s, p50 {r['p50_ms']:.1f} ms, CPU {r['cpu_us_per_request']:.0f} µs/req"
                         + (f", {errors} errors/non-2xx" if errors else "") + f" (rounds {r['runs']})")
        ratio = results["proxy-pool"]["rps"] / max(1.0, results["pproxy -s rr"]["rps"])
        lines.append(f"| {row['row']} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    if data.get("bulk"):
        lines += ["", f"{BULK_ROW}: CONNECT download of the big file, MB/s (% of straight through the same upstream)", ""]
        bulk = data["bulk"]
        cpu = bulk["_cpu_ms_per_mb"]
        fronts = [name for name in cpu if name != "straight"]
        lines += ["| upstream | straight | " + " | ".join(fronts) + " |", "|---|---|" + "---|" * len(fronts)]
        for name, row in bulk.items():
            if name.startswith("_"):
                continue
            straight = row.get("straight", 0.0)
            cells = [f"{row[f]} ({100 * row[f] / straight:.0f} %)" if f in row and straight else "-" for f in fronts]
            lines.append(f"| {name} ({row['software']}) | {straight} | " + " | ".join(cells) + " |")
        lines.append("| CPU ms per MB | " + f"{cpu.get('straight', '-')} (the upstream) | "
                     + " | ".join(str(cpu[f]) for f in fronts) + " |")
        lines += ["", "Medians; each download in MB/s:", ""]
        lines += [f"- {name}: " + "; ".join(f"{path} {each}" for path, each in row.get("_each", {}).items())
                  for name, row in bulk.items() if not name.startswith("_")]
    return "\n".join(lines) + "\n"


# (e) memory with a big pool, and the filtered pick -----------------------------------------
async def write_big_db(path: Path, count: int) -> None:
    """The generated pool into a fresh store, half active and half dead, all just checked (so the
    scheduler has nothing due while memory is measured); only the store writes SQL."""
    from pool.store import SqliteStore

    store = await SqliteStore.open(path)
    try:
        rng = random.Random(11)
        await fill_pool(store, count, latency=lambda: rng.uniform(50, 2000))
    finally:
        await store.close()


def pick_timings(count: int) -> dict[str, float]:
    """µs per ``Selector.pick`` on ``count`` proxies (and on 5,000, to show it does not scan)."""
    from pool.models import AnonymityLevel, Proxy, ProxyProtocol, ProxyStatus, UpstreamURL
    from pool.selector import Route, Selector

    def selector(n: int) -> Selector:
        sel = Selector("round_robin")
        sel.load(
            Proxy(i + 1, UpstreamURL(ProxyProtocol(p), h, port), status=ProxyStatus.ACTIVE, country=c,
                  anonymity=AnonymityLevel(a), latency_ms=100.0)
            for i, (h, port, p, c, a) in enumerate(generated_pool(n))
        )
        return sel

    routes = {
        "any": Route(),
        "country+protocol": Route(protocol=ProxyProtocol.HTTP, country="DE"),
        "country+protocol+anonymity": Route(protocol=ProxyProtocol.SOCKS5, country="JP",
                                            anonymity=AnonymityLevel.ELITE),
    }
    out: dict[str, float] = {}
    for n in (count, 5000):
        sel = selector(n)
        for label, route in routes.items():
            assert sel.pick(route) is not None, f"nothing matches {label} in {n}"
            number = 50_000
            best = min(timeit.repeat(lambda sel=sel, route=route: sel.pick(route), number=number, repeat=3))
            out[f"{label} @ {n}"] = best / number * 1e6
        # the gateway builds a Route per request: that cost too
        number = 50_000
        best = min(timeit.repeat(lambda sel=sel: sel.pick(Route(protocol=ProxyProtocol.HTTP, country="de")),
                                 number=number, repeat=3))
        out[f"Route() + country+protocol pick @ {n}"] = best / number * 1e6
    for k, v in out.items():
        say(f"(e) pick {k}: {v:.2f} µs")
    return out


def memory_case(services: Services, work: Path, count: int) -> dict[str, Any]:
    db = work / "big.db"
    start = time.monotonic()
    asyncio.run(write_big_db(db, count))
    say(f"(e) wrote {count} proxies to {db.name} in {time.monotonic() - start:.1f} s")
    gw = Gateway(services, work / "gw-big", proxies=None, db=db)
    took = gw.wait_active(count // 2, timeout=90)
    # let start-up allocations settle, then sample
    samples = []
    for _ in range(10):
        samples.append(gw.rss_mb()[0])
        time.sleep(0.2)
    gw.admin("/api/stats")  # the admin answers with the whole pool loaded
    hwm = gw.rss_mb()[1]
    result = {
        "proxies": count,
        "active": gw.admin("/api/proxies?status=active&limit=1")["total"],
        "ready_s": round(took, 1),
        "rss_mb": round(max(samples), 1),
        "peak_rss_mb": round(hwm, 1),
    }
    say(f"(e) serve with {count} proxies: RSS {result['rss_mb']} MB (peak {result['peak_rss_mb']} MB)")
    _stop_process(gw.proc)
    return result


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# profile ---------------------------------------------------------------------------------
def profile_gateway(gw: Gateway, target: str, args: argparse.Namespace, out: Path) -> list[tuple[str, float]]:
    """py-spy during one more keep-alive run (not a measured one): the functions with the most own time."""
    raw = out.with_suffix(".txt")
    for _ in range(2):  # py-spy sometimes fails to attach to a busy process: once more
        raw.unlink(missing_ok=True)
        err = _spy_run(gw, target, args, raw)
        if raw.exists():
            break
    if not raw.exists():
        say(f"py-spy wrote nothing: {err.strip()[-500:]}")
        return []
    return _spy_summary(raw, out)


def _spy_run(gw: Gateway, target: str, args: argparse.Namespace, raw: Path) -> str:
    spy = subprocess.Popen(
        ["py-spy", "record", "--pid", str(gw.proc.pid), "--duration", str(max(2, round(args.duration))),
         "--rate", "200", "--format", "raw", "--output", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        time.sleep(0.5)  # py-spy attaches
        run_wrk(gw.address, target, close=False, duration=args.duration, connections=args.connections,
                threads=args.threads)
        spy.wait(30)
    finally:
        if spy.poll() is None:
            os.killpg(spy.pid, signal.SIGKILL)
            spy.wait(5)
    return spy.stderr.read().decode(errors="replace") if spy.stderr else ""


def _spy_summary(raw: Path, out: Path) -> list[tuple[str, float]]:
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        total += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    top = sorted(own.items(), key=lambda kv: -kv[1])[:25]
    with open(out.with_name(out.stem + "-top.txt"), "w") as f:
        f.write(f"{total} samples\n\nown time:\n")
        for frame, n in top:
            f.write(f"{100 * n / total:6.2f}%  {frame}\n")
        f.write("\ninclusive time:\n")
        for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:40]:
            f.write(f"{100 * n / total:6.2f}%  {frame}\n")
    say(f"profile: {raw} and {out.with_name(out.stem + '-top.txt')}")
    return [(frame, round(100 * n / total, 2)) for frame, n in top]


# report ----------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (proc.stdout + proc.stderr).strip().splitlines()
        return text[0] if text else "?"

    try:
        import uvloop  # noqa: F401

        uv = "yes"
    except ImportError:
        uv = "no"
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import pproxy

    return {
        "python": platform.python_version(),
        "uvloop_in_gateway": uv,
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "tinyproxy": first_line(["tinyproxy", "-v"]),
        "squid": first_line([shutil.which("squid") or "/usr/sbin/squid", "-v"]),
        "nginx": first_line([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "pproxy": getattr(pproxy, "__version__", "?"),
    }


def render(data: dict[str, Any]) -> str:
    cfg = data["config"]
    lines = [
        f"# Gateway bench ({data['at']})",
        "",
        (
            f"Machine: {data['versions']['cpu']}; Python {data['versions']['python']}, uvloop in proxy-pool: "
            f"{data['versions']['uvloop_in_gateway']}. Origin: {data['versions']['nginx']} (a "
            f"{cfg['small_bytes']}-byte page, a {cfg['big_mb']} MB file). Upstreams: {', '.join(cfg['upstreams'])}. "
            f"wrk: {cfg['threads']} threads, {cfg['connections']} connections, {cfg['duration']} s a run; "
            f"(a) and (b): {cfg.get('rounds', 1)} interleaved rounds per target, medians shown (each round's req/s "
            "in brackets); "
            "everything (wrk, origin, upstreams, proxies) shares the same cores; load average before the run: "
            f"{data.get('loadavg_before', '?')}. pproxy forwards plain HTTP through an HTTP upstream as one "
            "CONNECT tunnel per client connection (so in (a) it relays 32 long-lived tunnels); proxy-pool parses "
            "every request and picks an upstream per request."
        ),
        "",
        "| case | target | req/s | p50 ms | p99 ms | CPU µs/req | errors |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in data["wrk"]:
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        if r["note"]:
            errors += f" ({r['note']})"
        rps = f"{r['rps']:.0f}"
        if r.get("runs"):
            rps += f" ({' / '.join(str(x) for x in r['runs'])})"
        lines.append(f"| {r['case']} | {r['target']} | {rps} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {r['cpu_us_per_request']:.0f} | {errors} |")
    cpu_note = (
        "CPU µs/req: user + system CPU time of the proxy's own process divided by the requests of that "
        "run; it depends far less than req/s on how busy the machine is. Straight squid/tinyproxy rows count "
        "the upstream itself; proxy-pool and pproxy rows count only the front, not the upstreams behind it."
    )
    lines += ["", cpu_note]
    if data.get("bulk"):
        fronts = [k for k in data["bulk_paths"] if k != "straight"]
        title = (
            f"(c) CONNECT download of {cfg['big_mb']} MB (a socket client reading 1 MiB at a time), MB/s, "
            "by the upstream that carried it:"
        )
        lines += ["", title, "", "| upstream | straight | " + " | ".join(fronts) + " |",
                  "|---|---:|" + "---:|" * len(fronts)]
        for name, row in data["bulk"].items():
            straight = row.get("straight")
            cells = []
            for front in fronts:
                v = row.get(front)
                if v is None:
                    cells.append("-")
                elif straight:
                    cells.append(f"{v:.0f} ({100 * v / straight:.0f} %)")
                else:
                    cells.append(f"{v:.0f}")
            lines.append(f"| {name} ({row['exit']}) | {straight:.0f} | " + " | ".join(cells) + " |")
        if data.get("bulk_cpu_ms_per_mb"):
            lines += ["", "CPU of the relaying process per MB: " + ", ".join(
                f"{k} {v:.1f} ms" for k, v in data["bulk_cpu_ms_per_mb"].items()) + "."]
    if data.get("memory"):
        m = data["memory"]
        lines += ["", "(e) memory and pick:", "", "| figure | value |", "|---|---:|",
                  f"| RSS of `proxy-pool serve`, {m['proxies']:,} proxies ({m['active']:,} active), idle | {m['rss_mb']:.0f} MB |",
                  f"| peak RSS of that process (VmHWM, includes start-up) | {m['peak_rss_mb']:.0f} MB |",
                  f"| start until all {m['active']:,} active are served | {m['ready_s']} s |"]
        if data.get("gateway_rss_after_load_mb"):
            lines.append(f"| RSS of the bench's `proxy-pool serve` (3 proxies) after (a)-(d) | "
                         f"{data['gateway_rss_after_load_mb']:.0f} MB |")
        for k, v in data.get("pick_us", {}).items():
            lines.append(f"| `Selector.pick` {k} | {v:.2f} µs |")
    if data.get("summary"):
        lines += ["", "Against the targets of issue 6:", ""]
        lines += [f"- {s}" for s in data["summary"]]
    if data.get("profile"):
        lines += ["", "py-spy, own time during an extra keep-alive run (top 12):", ""]
        lines += [f"- {pct:.1f} % {frame}" for frame, pct in data["profile"][:12]]
    return "\n".join(lines) + "\n"


def summarise(data: dict[str, Any]) -> list[str]:
    by = {(r["case"], r["target"]): r for r in data["wrk"]}
    out = []

    def get(case: str, target: str) -> dict[str, Any] | None:
        return by.get((case, target))

    for case, goal in (("(a) keep-alive", 1.0), ("(b) close", 2.0)):
        gw = get(case, "proxy-pool")
        for front in ("pproxy (asyncio)", "pproxy (uvloop)"):
            pp = get(case, front)
            if gw and pp and pp["rps"]:
                ratio = gw["rps"] / pp["rps"]
                out.append(f"{case}: proxy-pool {ratio:.2f}x {front} req/s (goal >= {goal:g}x): "
                           f"{'met' if ratio >= goal else 'NOT met'}")
    gw = get("(a) keep-alive", "proxy-pool")
    for r in data["wrk"]:
        if r["case"] == "(d) keep-alive" and gw:
            out.append(f"(a) vs {r['target']}: added p50 {gw['p50_ms'] - r['p50_ms']:+.2f} ms (goal <= 1 ms)")
    for name, row in data.get("bulk", {}).items():
        if row.get("straight") and row.get("proxy-pool"):
            pct = 100 * row["proxy-pool"] / row["straight"]
            out.append(f"(c) through {name}: proxy-pool at {pct:.0f} % of straight (goal >= 70 %): "
                       f"{'met' if pct >= 70 else 'NOT met'}")
    m = data.get("memory")
    if m:
        out.append(f"(e) RSS {m['rss_mb']:.0f} MB with {m['proxies']:,} proxies (goal < 200 MB): "
                   f"{'met' if m['rss_mb'] < 200 else 'NOT met'}")
    return out


# main ------------------------------------------------------------------------------------
def _software_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in ("tinyproxy", "squid")]
    if bad or len(items) < 1:
        raise argparse.ArgumentTypeError(f"HTTP upstreams are tinyproxy and squid, not {', '.join(bad) or 'nothing'}")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run (default 6)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved runs of (a) and (b) per target; the table shows medians (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--big-mb", type=int, default=200, help="size of the CONNECT download")
    parser.add_argument("--bulk-reps", type=int, default=1, help="downloads per upstream and path")
    parser.add_argument("--pool-size", type=int, default=100_000, help="proxies for the memory case")
    parser.add_argument("--upstreams", type=_software_list, default=["tinyproxy", "tinyproxy", "squid"],
                        help="comma-separated HTTP upstream software, one process each (default tinyproxy,tinyproxy,squid)")
    parser.add_argument("--skip", action="append", default=[], choices=["a", "b", "c", "d", "e", "uvloop"],
                        help="leave out a case (repeatable); 'uvloop' leaves out pproxy on uvloop")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the gateway during one extra keep-alive run (needs py-spy)")
    parser.add_argument("--pools", action="store_true",
                        help="run only (f): pools with SOCKS upstreams (mixed, SOCKS5 only, HTTP only) against pproxy -s rr")
    parser.add_argument("--rows", type=lambda t: [r.strip() for r in t.split(",")],
                        default=[r[0] for r in POOL_ROWS] + [BULK_ROW],
                        help=f"(f) rows to run, comma-separated (default all: {', '.join(r[0] for r in POOL_ROWS)}, {BULK_ROW})")
    parser.add_argument("--old-root", type=Path, default=None,
                        help="(f) also run proxy-pool from this source tree (e.g. an export of the previous commit)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file (default bench/results/gateway.md)")
    args = parser.parse_args(argv)

    missing = [b for b in ("wrk",) if shutil.which(b) is None]
    missing += [s for s in sorted({*args.upstreams, "nginx"}) if not have(s)]
    if missing:
        print(f"gateway_bench: missing {', '.join(missing)} (apt-get install wrk tinyproxy squid nginx-light)",
              file=sys.stderr)
        return 2

    # SIGTERM unwinds like Ctrl-C, so every process started below is still killed (a second one,
    # e.g. from `timeout` passing it on, must not interrupt that clean-up)
    def on_term(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="proxy-pool-bench-"))
    data: dict[str, Any] = {"at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "versions": versions(),
                            "loadavg_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
                            "wrk": [], "bulk": {}, "bulk_paths": [], "memory": None, "pick_us": {}}
    if args.pools:
        try:
            with Services(log=say) as services:
                origin = services.nginx("127.0.0.1", big_mb=args.big_mb)
                data["pools"] = pools_case(services, origin, work, args)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        data["config"] = {"duration": args.duration, "connections": args.connections, "rounds": args.rounds}
        text = f"# (f) pools, {data['at']}, loadavg before {data['loadavg_before']}\n\n" + render_pools(data["pools"])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_name("gateway-pools.md").write_text(text)
        print(json.dumps(data, indent=2) if args.format == "json" else text)
        return 0
    try:
        with Services(log=say) as services:  # its own 0755 temp root: nginx/squid drop privileges
            origin = services.nginx("127.0.0.1", big_mb=args.big_mb)
            upstreams = [getattr(services, software)(f"127.0.0.{2 + i}") for i, software in enumerate(args.upstreams)]
            urls = [u.url for u in upstreams]
            gw = Gateway(services, work / "gw", proxies=urls, db=work / "gw.db")
            fronts: dict[str, Service] = {"pproxy (asyncio)": services.pproxy("127.0.0.1", remotes=urls)}
            if "uvloop" not in args.skip:
                try:
                    import uvloop  # noqa: F401

                    fronts["pproxy (uvloop)"] = services.pproxy("127.0.0.1", remotes=urls, uvloop=True)
                except ImportError:
                    say("uvloop is not installed: pproxy runs on asyncio only")
            took = gw.wait_active(len(upstreams))
            say(f"proxy-pool: {len(upstreams)} upstreams active after {took:.1f} s")
            data["config"] = {
                "duration": args.duration, "connections": args.connections, "threads": args.threads,
                "rounds": max(1, args.rounds),
                "big_mb": args.big_mb, "small_bytes": origin.small_size,
                "upstreams": [f"{u.name} on {u.host}" for u in upstreams],
            }
            page = f"{origin.base()}/"
            targets: list[tuple[str, tuple[str, int], int, str]] = [
                ("proxy-pool", gw.address, gw.proc.pid, "rotates per request")
            ]
            targets += [(name, (s.host, s.port), s.pid, "rotates per client connection") for name, s in fronts.items()]
            for name, address, _, _ in targets:  # warm-up: pools, caches, first allocations
                run_wrk(address, page, close=False, duration=1, connections=args.connections, threads=args.threads)
            for case, close in (("(a) keep-alive", False), ("(b) close", True)):
                if case[1] in args.skip:
                    continue
                # rounds interleave the targets (A B C A B C ...) so a slow spell of the shared machine
                # falls on all of them alike; the medians are compared
                runs: dict[str, list[WrkResult]] = {name: [] for name, _, _, _ in targets}
                for round_ in range(max(1, args.rounds)):
                    for name, address, pid, note in targets:
                        runs[name].append(wrk_case(case, name, address, pid, page, args, close=close, note=note))
                for name in runs:
                    data["wrk"].append(asdict(median_of(runs[name])))
            if "d" not in args.skip:
                seen: set[str] = set()
                for upstream in upstreams:
                    if upstream.software in seen:
                        continue
                    seen.add(upstream.software)
                    note = "closes after each answer" if upstream.software == "tinyproxy" else ""
                    for case, close in (("(d) keep-alive", False), ("(d) close", True)):
                        data["wrk"].append(asdict(wrk_case(case, f"{upstream.name} straight",
                                                           (upstream.host, upstream.port), upstream.pid, page,
                                                           args, close=close, note=note)))
            if "c" not in args.skip:
                front_addrs = {"proxy-pool": (gw.address, gw.proc.pid)}
                front_addrs.update({name: ((s.host, s.port), s.pid) for name, s in fronts.items()})
                data["bulk"] = bulk_downloads(origin, upstreams, front_addrs, args.bulk_reps)
                data["bulk_cpu_ms_per_mb"] = data["bulk"].pop("_cpu_ms_per_mb")
                data["bulk_paths"] = ["straight", *front_addrs]
            gw_rss = gw.rss_mb()[0]
            data["gateway_rss_after_load_mb"] = round(gw_rss, 1)
            if args.profile:
                if shutil.which("py-spy"):
                    data["profile"] = profile_gateway(gw, page, args, args.output.with_name("gateway-profile"))
                else:
                    say("py-spy is not installed: no profile")
            _stop_process(gw.proc)
            if "e" not in args.skip:
                data["memory"] = memory_case(services, work, args.pool_size)
                data["pick_us"] = pick_timings(args.pool_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["summary"] = summarise(data)
    data["seconds"] = round(time.monotonic() - started, 1)
    text = render(data)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        print(text)
    say(f"done in {data['seconds']} s; written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
