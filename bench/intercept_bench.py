"""HTTPS interception bench: proxy-pool's interception port against mitmproxy's ``mitmdump --mode upstream:``,
same run, same upstream, same origin, with the main port's plain CONNECT pass-through as the ceiling.

Starts real local software: nginx as the origin (HTTPS with a trustme certificate for ``bench.test`` and
127.0.0.1, and plain HTTP), tinyproxy on 127.0.0.2 as the one HTTP upstream, the gateway in its own process
(``GatewayServer`` with the interception port, uvloop when installed, one active upstream: what ``serve``
runs, without the scraper and checker), and ``mitmdump --mode upstream:http://TINYPROXY`` (its CA trusted by
the client, the origin verified against the same bundle the gateway gets).  The load generator is Python in
several processes, each holding one kept-alive TLS session (CONNECT, TLS, then GET after GET) for the run:

  intercepted   HTTPS through the interception port: TLS terminated, every request its own exchange
  mitmdump      HTTPS through mitmdump in upstream mode (TLS terminated, one upstream connection per client)
  pass-through  HTTPS through the main port's CONNECT: no TLS in the gateway at all (the ceiling)
  plain HTTP    absolute-form GETs through the main port to nginx's plain port (the same exchange, no TLS)

For each: requests/s (median of rounds) and the proxy's CPU per request (``/proc/PID/stat``); what TLS
costs per request is intercepted CPU/request minus plain-HTTP CPU/request.  Then the certificate minting
cost: a leaf for a new name (one signature and a context load, in the worker thread) and a cached one.

Run:  python bench/intercept_bench.py [--duration 5] [--rounds 3] [--clients 8] [--mitmdump PATH] [--format json]
Needs Debian packages nginx, tinyproxy; Python: trustme (test extra), and mitmproxy (NOT a project
dependency; best in its own environment, as its pins clash with ours: ``python -m venv mitm &&
mitm/bin/pip install mitmproxy``, then ``--mitmdump mitm/bin/mitmdump``).  Every process it starts is killed at the
end.  All traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, say
from bench.upstreams import Service, Services, free_port, wait_port

SITE = "bench.test"
BODY = b"<!doctype html><title>proxy-pool bench</title><p>" + b"a" * 160 + b"</p>\n"


# the load generator: one kept-alive session per process ----------------------------------------
def _open(mode: str, proxy: tuple[str, int], target: tuple[str, int], cafile: str | None) -> socket.socket:
    sock = socket.create_connection(proxy, timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode == "http":
        return sock
    sock.sendall(f"CONNECT {target[0]}:{target[1]} HTTP/1.1\r\nHost: {target[0]}:{target[1]}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        piece = sock.recv(1)
        if not piece:
            raise ConnectionError("proxy closed during CONNECT")
        head += piece
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        raise ConnectionError(f"CONNECT refused: {head[:60]!r}")
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    return context.wrap_socket(sock, server_hostname=SITE)


def _exchange(sock: socket.socket, request: bytes, buffer: bytearray) -> None:
    sock.sendall(request)
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buffer[:end]).lower()
            at = head.find(b"content-length:")
            if at < 0:
                raise ConnectionError(f"answer without Content-Length: {head[:200]!r}")
            length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else len(head)])
            total = end + 4 + length
            while len(buffer) < total:
                piece = sock.recv(65536)
                if not piece:
                    raise ConnectionError("closed mid-answer")
                buffer += piece
            if not head.startswith(b"http/1.1 200"):
                raise ConnectionError(f"status: {head[:40]!r}")
            del buffer[:total]
            return
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError("closed before the answer")
        buffer += piece


def _client(
    mode: str, proxy: tuple[str, int], target: tuple[str, int], cafile: str | None, duration: float,
    barrier: Any, results: Any,
) -> None:  # fmt: skip
    try:
        sock = _open(mode, proxy, target, cafile)
        if mode == "http":
            request = f"GET http://{target[0]}:{target[1]}/ HTTP/1.1\r\nHost: {target[0]}:{target[1]}\r\n\r\n".encode()
        else:
            request = f"GET / HTTP/1.1\r\nHost: {SITE}\r\n\r\n".encode()
        buffer = bytearray()
        for _ in range(20):  # warm: the first dials, pools and leaves are not what is measured
            _exchange(sock, request, buffer)
        barrier.wait(60)
        count = 0
        deadline = time.perf_counter() + duration
        while time.perf_counter() < deadline:
            _exchange(sock, request, buffer)
            count += 1
        results.put(("ok", count))
        sock.close()
    except Exception as exc:  # reported to the parent, which fails the run
        results.put(("error", f"{type(exc).__name__}: {exc}"))
        try:
            barrier.abort()
        except Exception:
            pass


def load(
    mode: str, proxy: tuple[str, int], target: tuple[str, int], cafile: str | None, clients: int, duration: float,
    proxy_pid: int,
) -> tuple[float, float]:  # fmt: skip
    """Requests/s over all clients, and the proxy's CPU microseconds per request."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(mode, proxy, target, cafile, duration, barrier, results))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait(120)
    except Exception:
        pass
    cpu0 = cpu_seconds(proxy_pid)
    total = 0
    errors = []
    for _ in procs:
        kind, value = results.get(timeout=duration + 120)
        if kind == "ok":
            total += value
        else:
            errors.append(value)
    cpu1 = cpu_seconds(proxy_pid)
    for p in procs:
        p.join(10)
    if errors:
        raise RuntimeError(f"{mode}: {errors[0]}")
    return total / duration, (cpu1 - cpu0) / max(total, 1) * 1e6


# the gateway in its own process ------------------------------------------------------------------
def serve_gateway(config: dict[str, Any]) -> None:
    """``--serve-gateway``: a GatewayServer with the interception port over one upstream, until killed."""
    from config import Settings
    from gateway.proxy.certs import ensure_ca
    from gateway.proxy.server import GatewayServer
    from pool.models import Proxy, ProxyStatus, UpstreamURL
    from pool.selector import Selector

    async def main() -> None:
        settings = Settings(
            storage={"path": config["db"]},
            gateway={
                "listen": f"127.0.0.1:{config['port']}", "intercept_listen": f"127.0.0.1:{config['intercept_port']}",
                "intercept_verify": config["bundle"], "allowed_connect_ports": "*", "max_connections": 10000,
            },
        )  # fmt: skip
        selector = Selector()
        selector.load([Proxy(1, UpstreamURL.parse(config["upstream"]), status=ProxyStatus.ACTIVE)])
        server = GatewayServer(settings, selector, intercept_ca=ensure_ca(settings))
        await server.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# the parts ----------------------------------------------------------------------------------------
def nginx_tls(services: Services, cert: Path, key: Path) -> tuple[int, int, subprocess.Popen[bytes]]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    name, work = services._workdir("nginx")  # noqa: SLF001
    https, http = free_port(), free_port()
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    body = BODY.decode().replace('"', '\\"')
    temp = "".join(f"  {kind}_temp_path {work / 'tmp' / sub};\n" for kind, sub in (
        ("client_body", "body"), ("proxy", "proxy"), ("fastcgi", "fastcgi"), ("uwsgi", "uwsgi"), ("scgi", "scgi")))  # fmt: skip
    (work / "nginx.conf").write_text(
        "worker_processes 1;\n"
        f"pid {work / 'nginx.pid'};\n"
        f"error_log {work / 'error.log'} warn;\n"
        "events { worker_connections 8192; }\n"
        "http {\n"
        "  access_log off;\n"
        f"{temp}"
        "  keepalive_requests 10000000;\n"
        "  keepalive_timeout 120s;\n"
        "  default_type text/html;\n"
        f"  server {{ listen 127.0.0.1:{https} ssl backlog=4096; ssl_certificate {cert}; ssl_certificate_key {key};\n"
        f"    location / {{ return 200 \"{body}\"; }} }}\n"
        f"  server {{ listen 127.0.0.1:{http} backlog=4096; location / {{ return 200 \"{body}\"; }} }}\n"
        "}\n"
    )
    proc = services.spawn([binary, "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"], work)
    services.services.append(Service(name, "nginx", "127.0.0.1", https, "https", proc, work))  # killed at the end
    wait_port("127.0.0.1", https, 15, proc)
    wait_port("127.0.0.1", http, 15, proc)
    return https, http, proc


def mitmdump(
    services: Services, binary: str, upstream: str, bundle: Path
) -> tuple[int, Path, subprocess.Popen[bytes], str]:
    name, work = services._workdir("mitmdump")  # noqa: SLF001
    port = free_port()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60).stdout.split("\n")[0]
    proc = services.spawn([
        binary, "-q", "--mode", f"upstream:{upstream}", "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--set", f"confdir={work}", "--set", f"ssl_verify_upstream_trusted_ca={bundle}",
        "--set", "flow_detail=0", "--set", "termlog_verbosity=error",
    ], work)  # fmt: skip
    services.services.append(Service(name, "mitmdump", "127.0.0.1", port, "http", proc, work))  # killed at the end
    wait_port("127.0.0.1", port, 60, proc)
    ca = work / "mitmproxy-ca-cert.pem"
    for _ in range(600):
        if ca.exists():
            break
        time.sleep(0.05)
    return port, ca, proc, version


def minting_cost() -> dict[str, float]:
    """Microseconds for a leaf for a new name (signature and context) and for a cached one."""
    from config import Settings
    from gateway.proxy.certs import LeafStore, ensure_ca

    with tempfile.TemporaryDirectory() as folder:
        store = LeafStore(ensure_ca(Settings(storage={"path": os.path.join(folder, "pool.db")})), size=100_000)
        n = 300
        started = time.perf_counter()
        for i in range(n):
            store.mint(f"host{i}.bench.test")
        new = (time.perf_counter() - started) / n * 1e6

        async def fill() -> None:
            await store.context("cached.bench.test")

        asyncio.run(fill())
        cached = min(timeit.repeat(lambda: store.cached("cached.bench.test"), number=100_000, repeat=3)) / 100_000 * 1e6
    return {"mint_new_name_us": round(new, 1), "cached_lookup_us": round(cached, 3)}


@dataclass
class Row:
    case: str
    rps: float
    cpu_us_per_request: float


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument(
        "--mitmdump", default=shutil.which("mitmdump") or str(Path(sys.executable).with_name("mitmdump")),
        help="the mitmdump to compare with (pip install mitmproxy, in this or another environment)",
    )
    parser.add_argument("--serve-gateway", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        serve_gateway(json.loads(args.serve_gateway))
        return 0
    import trustme

    root = Path(tempfile.mkdtemp(prefix="intercept-bench-"))
    os.chmod(root, 0o755)
    site_ca = trustme.CA()
    leaf = site_ca.issue_cert(SITE, "127.0.0.1")
    cert, key, bundle = root / "site.pem", root / "site-key.pem", root / "site-ca.pem"
    for blob in leaf.cert_chain_pems:
        with open(cert, "ab") as out:
            out.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key))
    site_ca.cert_pem.write_to_path(str(bundle))
    for path in (cert, key, bundle):
        os.chmod(path, 0o644)
    rows: dict[str, list[Row]] = {}
    info: dict[str, Any] = {}
    with Services(root / "services") as services:
        https, http, _ = nginx_tls(services, cert, key)
        upstream = services.tinyproxy("127.0.0.2")
        upstream_url = f"http://{upstream.host}:{upstream.port}"
        gw_port, ic_port = free_port(), free_port()
        config = {"db": str(root / "pool.db"), "port": gw_port, "intercept_port": ic_port, "bundle": str(bundle), "upstream": upstream_url}
        gw_name, gw_work = services._workdir("gateway")  # noqa: SLF001
        gateway = services.spawn([sys.executable, __file__, "--serve-gateway", json.dumps(config)], gw_work)
        services.services.append(Service(gw_name, "proxy-pool", "127.0.0.1", ic_port, "http", gateway, gw_work))
        wait_port("127.0.0.1", ic_port, 30, gateway)
        ca_file = root / "pool.db.ca.pem"
        mitm_port, mitm_ca, mitm, mitm_version = mitmdump(services, args.mitmdump, upstream_url, bundle)
        info["mitmproxy"] = mitm_version
        cases = [
            ("intercepted", "intercept", ("127.0.0.1", ic_port), ("127.0.0.1", https), str(ca_file), gateway.pid),
            ("mitmdump", "intercept", ("127.0.0.1", mitm_port), ("127.0.0.1", https), str(mitm_ca), mitm.pid),
            ("pass-through", "intercept", ("127.0.0.1", gw_port), ("127.0.0.1", https), str(bundle), gateway.pid),
            ("plain HTTP", "http", ("127.0.0.1", gw_port), ("127.0.0.1", http), None, gateway.pid),
        ]
        for round_no in range(args.rounds):
            for case, mode, proxy, target, cafile, pid in cases:
                rps, cpu = load(mode, proxy, target, cafile, args.clients, args.duration, pid)
                rows.setdefault(case, []).append(Row(case, rps, cpu))
                say(f"round {round_no + 1}: {case:13} {rps:9.0f} req/s  {cpu:7.1f} us CPU/request")
    shutil.rmtree(root, ignore_errors=True)
    summary = {
        case: Row(case, statistics.median(r.rps for r in rs), statistics.median(r.cpu_us_per_request for r in rs))
        for case, rs in rows.items()
    }
    info.update(minting_cost())
    info["ratio_vs_mitmdump"] = round(summary["intercepted"].rps / summary["mitmdump"].rps, 2)
    info["share_of_pass_through"] = round(summary["intercepted"].rps / summary["pass-through"].rps, 2)
    info["tls_cpu_us_per_request"] = round(summary["intercepted"].cpu_us_per_request - summary["plain HTTP"].cpu_us_per_request, 1)
    info["clients"], info["duration"], info["rounds"] = args.clients, args.duration, args.rounds
    try:
        import uvloop  # noqa: F401

        info["gateway_loop"] = "uvloop"
    except ImportError:
        info["gateway_loop"] = "asyncio"
    if args.format == "json":
        print(json.dumps({"rows": [asdict(r) for r in summary.values()], **info}, indent=2))
        return 0
    print(f"\n{'case':14} {'req/s':>9} {'proxy CPU us/req':>17}   (median of {args.rounds} rounds, {args.clients} kept-alive clients)")
    for row in summary.values():
        print(f"{row.case:14} {row.rps:9.0f} {row.cpu_us_per_request:17.1f}")
    for k, v in info.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
