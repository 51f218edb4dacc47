"""SOCKS bench: SOCKS5 clients through proxy-pool against pproxy's SOCKS5 listener, same run, same upstreams.

Starts an nginx origin, tinyproxy x2 and squid as HTTP upstreams (each on its own 127.0.0.x), ``proxy-pool
serve`` over them (SOCKS on its one mixed port) and pproxy ``-l socks5://... -r URL1 -r URL2 -r URL3 -s rr``
(on uvloop when installed, as its best), then measures:

  (a) connections per second: a new SOCKS5 connection per request (greeting, CONNECT to the origin, one
      HTTP/1.1 GET inside, read to the end), N concurrent clients in a separate process on uvloop;
      also the proxy process's CPU time per connection, which depends far less on other load, and the
      whole run's (client, proxy, upstreams, origin: every process this bench started), which is what
      the connection rate follows on a CPU-bound machine;
  (b) CONNECT bulk: MB/s of a large download through a SOCKS5 tunnel of the gateway (HTTP/1.1 inside,
      served over a pooled connection; and HTTP/1.0 inside, relayed raw), against the same download
      through an HTTP CONNECT tunnel straight to each upstream.

(a) runs in interleaved rounds (proxy-pool, pproxy, again), so a slow spell of the shared machine falls
on both alike.  Run:  python bench/socks_bench.py [--duration 5] [--rounds 3] [--concurrency 32]
[--old-root DIR: also the gateway from another source tree, e.g. ``git archive`` of an older commit]
Needs: nginx, tinyproxy, squid (Debian packages), pproxy.  Every process is killed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, say, timed_get, tunnel_download  # noqa: E402
from bench.gateway_bench import Gateway  # noqa: E402
from bench.upstreams import Services  # noqa: E402

# the load generator, run in its own process so it never shares the proxy's core budget by accident
CLIENT = textwrap.dedent(
    r"""
    import asyncio, json, struct, sys, time
    try:
        import uvloop; uvloop.install()
    except ImportError:
        pass
    proxy_host, proxy_port, origin_host, origin_port, duration, concurrency = sys.argv[1:7]
    proxy_port, origin_port, duration, concurrency = int(proxy_port), int(origin_port), float(duration), int(concurrency)
    request = b"\x05\x01\x00\x01" + bytes(map(int, origin_host.split("."))) + struct.pack("!H", origin_port)
    get = f"GET / HTTP/1.1\r\nHost: {origin_host}:{origin_port}\r\nConnection: close\r\n\r\n".encode()
    done = errors = 0
    latencies = []

    async def one():
        global done, errors
        start = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(proxy_host, proxy_port)
            writer.write(b"\x05\x01\x00")
            if await reader.readexactly(2) != b"\x05\x00":
                raise RuntimeError("method")
            writer.write(request)
            reply = await reader.readexactly(10)
            if reply[1] != 0:
                raise RuntimeError(f"reply {reply[1]}")
            writer.write(get)
            body = await reader.read(-1)
            writer.close()
            if not body.startswith(b"HTTP/1.1 200"):
                raise RuntimeError("status")
            done += 1
            latencies.append(time.perf_counter() - start)
        except Exception:
            errors += 1

    async def worker(deadline):
        while time.perf_counter() < deadline:
            await one()

    async def main():
        deadline = time.perf_counter() + duration
        start = time.perf_counter()
        await asyncio.gather(*(worker(deadline) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        latencies.sort()
        p = lambda q: latencies[int(q * (len(latencies) - 1))] * 1000 if latencies else 0.0
        print(json.dumps({"cps": done / elapsed, "done": done, "errors": errors, "p50_ms": p(0.5), "p99_ms": p(0.99)}))

    asyncio.run(main())
    """
)


def group_cpu_seconds(groups: set[int]) -> float:
    """User + system CPU of every process in these process groups, with the children they reaped
    (tinyproxy's and squid's workers, nginx's), so far."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups:
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def connections_per_second(
    proxy: tuple[str, int], pid: int, origin: tuple[str, int], args: argparse.Namespace, groups: set[int]
) -> dict[str, Any]:
    before = cpu_seconds(pid)
    total_before = group_cpu_seconds(groups) + children_cpu_seconds()
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, proxy[0], str(proxy[1]), origin[0], str(origin[1]), str(args.duration), str(args.concurrency)],
        capture_output=True, text=True, timeout=args.duration + 60, check=True,
    ).stdout
    result = json.loads(out)
    result["cpu_us_per_conn"] = (cpu_seconds(pid) - before) / max(result["done"], 1) * 1e6
    total = group_cpu_seconds(groups) + children_cpu_seconds() - total_before  # the client is a reaped child
    result["total_cpu_us_per_conn"] = total / max(result["done"], 1) * 1e6
    return result


def socks_download(proxy: tuple[str, int], origin: tuple[str, int], path: str, version: str = "1.1") -> tuple[float, int]:
    """GET ``path`` through a SOCKS5 tunnel of ``proxy``: (bytes/s, body bytes), one 1 MiB read buffer.
    HTTP/1.1 inside is served by proxy-pool as HTTP over a pooled connection; HTTP/1.0 is relayed raw."""
    host, port = origin
    with socket.create_connection(proxy, timeout=60) as sock:
        sock.sendall(b"\x05\x01\x00")
        if sock.recv(2) != b"\x05\x00":
            raise RuntimeError(f"{proxy}: no method accepted")
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port))
        reply = b""
        while len(reply) < 10:
            chunk = sock.recv(10 - len(reply))
            if not chunk:
                raise RuntimeError(f"{proxy} closed the SOCKS request")
            reply += chunk
        if reply[1] != 0:
            raise RuntimeError(f"{proxy}: SOCKS reply {reply[1]}")
        return timed_get(sock, proxy, origin, path, version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per (a) round and target")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--downloads", type=int, default=3, help="(b) downloads per path")
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument("--old-root", type=Path, default=None,
                        help="also run the gateway from this source tree (e.g. a `git archive` of main), interleaved")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="proxy-pool-socks-bench-"))
    work.chmod(0o755)  # nginx workers and squid drop privileges and must reach their files below
    data: dict[str, Any] = {"args": vars(args)}
    with Services(work / "services", log=say) as services:
        origin = services.nginx(big_mb=args.big_mb)
        upstreams = [services.tinyproxy("127.0.0.2"), services.tinyproxy("127.0.0.3"), services.squid("127.0.0.4")]
        gateway = Gateway(services, work / "gateway", proxies=[u.url for u in upstreams], db=work / "pool.db")
        gateway.wait_active(len(upstreams))
        fronts = {"proxy-pool": (gateway.address, gateway.proc.pid)}
        if args.old_root is not None:  # another source tree beside it, same run (A/B of a change)
            old = Gateway(services, work / "gateway-old", proxies=[u.url for u in upstreams], db=work / "old.db",
                          root=args.old_root)
            old.wait_active(len(upstreams))
            fronts["proxy-pool (old)"] = (old.address, old.proc.pid)
        pproxies = {}
        for uvloop in (False, True):  # the pproxy command runs asyncio; on uvloop it is at its best
            name = "pproxy (uvloop)" if uvloop else "pproxy (asyncio)"
            try:
                p = services.pproxy("127.0.0.1", remotes=[u.url for u in upstreams], schemes="socks5", uvloop=uvloop)
            except RuntimeError as exc:  # uvloop not installed
                say(f"{name} did not start: {str(exc).splitlines()[0]}")
                continue
            pproxies[name] = p
            fronts[name] = ((p.host, p.port), p.pid)
        target = (origin.host, origin.port)
        groups = {os.getpgid(p.pid) for p in services.services}
        groups.add(os.getpgid(gateway.proc.pid))
        for address, _ in fronts.values():  # warm-up: every upstream connection path once
            socks_download(address, target, "/")
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in fronts}
        for r in range(args.rounds):
            for name, (address, pid) in fronts.items():
                result = connections_per_second(address, pid, target, args, groups)
                rounds[name].append(result)
                say(f"(a) round {r + 1} {name:<10} {result['cps']:8.0f} conn/s  p50 {result['p50_ms']:.1f} ms  "
                    f"p99 {result['p99_ms']:.1f} ms  errors {result['errors']}  CPU {result['cpu_us_per_conn']:.0f} us/conn"
                    f"  total CPU {result['total_cpu_us_per_conn']:.0f} us/conn")
        data["cps"] = {
            name: {
                "cps": round(statistics.median(x["cps"] for x in rs)),
                "runs": [round(x["cps"]) for x in rs],
                "p50_ms": round(statistics.median(x["p50_ms"] for x in rs), 2),
                "p99_ms": round(statistics.median(x["p99_ms"] for x in rs), 2),
                "errors": sum(x["errors"] for x in rs),
                "cpu_us_per_conn": round(statistics.median(x["cpu_us_per_conn"] for x in rs)),
                "total_cpu_us_per_conn": round(statistics.median(x["total_cpu_us_per_conn"] for x in rs)),
            }
            for name, rs in rounds.items()
        }
        others = [name for name in fronts if name != "proxy-pool"]
        data["cps_ratio"] = {
            name: round(data["cps"]["proxy-pool"]["cps"] / max(data["cps"][name]["cps"], 1), 2) for name in others
        }
        data["cpu_ratio"] = {
            name: round(data["cps"][name]["cpu_us_per_conn"] / max(data["cps"]["proxy-pool"]["cpu_us_per_conn"], 1), 2)
            for name in others
        }
        data["total_cpu_ratio"] = {
            name: round(
                data["cps"][name]["total_cpu_us_per_conn"] / max(data["cps"]["proxy-pool"]["total_cpu_us_per_conn"], 1), 2
            )
            for name in others
        }
        # (b) bulk: straight HTTP CONNECT through each upstream, and SOCKS5 through the gateway
        straight = [tunnel_download((u.host, u.port), target, "/big.bin")[0] / 1e6 for u in upstreams for _ in range(args.downloads)]
        via = [socks_download(gateway.address, target, "/big.bin")[0] / 1e6 for _ in range(args.downloads * len(upstreams))]
        raw = [socks_download(gateway.address, target, "/big.bin", "1.0")[0] / 1e6 for _ in range(args.downloads * len(upstreams))]
        data["bulk_mb_s"] = {
            "straight (HTTP CONNECT to the upstreams)": round(statistics.mean(straight), 1),
            "proxy-pool SOCKS5": round(statistics.mean(via), 1),
            "proxy-pool SOCKS5, raw relay (HTTP/1.0 inside)": round(statistics.mean(raw), 1),
        }
        for name, p in pproxies.items():
            speeds = [socks_download((p.host, p.port), target, "/big.bin")[0] / 1e6 for _ in range(args.downloads * len(upstreams))]
            data["bulk_mb_s"][f"{name} SOCKS5"] = round(statistics.mean(speeds), 1)
        data["bulk_ratio"] = round(statistics.mean(via) / statistics.mean(straight), 2)
        data["bulk_raw_ratio"] = round(statistics.mean(raw) / statistics.mean(straight), 2)
    if args.format == "json":
        print(json.dumps(data, indent=2))
        return 0
    print("| SOCKS5, new connection per request | conn/s (rounds) | p50 ms | p99 ms | proxy CPU us/conn | total CPU us/conn | errors |")
    print("|---|---|---|---|---|---|---|")
    for name, row in data["cps"].items():
        runs = ", ".join(str(r) for r in row["runs"])
        print(f"| {name} | {row['cps']} ({runs}) | {row['p50_ms']} | {row['p99_ms']} | {row['cpu_us_per_conn']} "
              f"| {row['total_cpu_us_per_conn']} | {row['errors']} |")
    for name, ratio in data["cps_ratio"].items():
        print(f"\nproxy-pool / {name}: {ratio}x conn/s, {data['cpu_ratio'][name]}x less proxy CPU per connection, "
              f"{data['total_cpu_ratio'][name]}x less total CPU per connection")
    print()
    print("| CONNECT bulk | MB/s |")
    print("|---|---|")
    for name, value in data["bulk_mb_s"].items():
        print(f"| {name} | {value} |")
    print(f"\nproxy-pool SOCKS5 / straight: {data['bulk_ratio']:.0%} (raw relay: {data['bulk_raw_ratio']:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
