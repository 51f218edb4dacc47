"""What the benches share: their progress line, a process's CPU time, a timed download through a proxy,
and a generated pool of 100,000-odd proxies written into a store."""

from __future__ import annotations

import os
import random
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["COUNTRIES", "cpu_seconds", "fill_pool", "generated_pool", "say", "timed_get", "tunnel_download"]

COUNTRIES = ["US", "DE", "FR", "GB", "NL", "RU", "CN", "BR", "IN", "JP",
             "KR", "CA", "AU", "IT", "ES", "PL", "UA", "SE", "TR", "ID"]  # fmt: skip


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (threads included; children not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# downloads --------------------------------------------------------------------------------
def timed_get(
    sock: socket.socket, proxy: tuple[str, int], origin: tuple[str, int], path: str, version: str = "1.1",
    first: bytes = b"",
) -> tuple[float, int]:
    """GET ``path`` on a tunnel already open to ``origin`` and read it to the end: (bytes/s, body bytes).

    A plain socket reading into one 1 MiB buffer, so the client is never the bottleneck (curl reads
    16 KiB at a time and caps a fast path well below what squid delivers); ``first`` is what the
    tunnel's setup already read past its own answer."""
    host, port = origin
    started = time.perf_counter()
    sock.sendall(f"GET {path} HTTP/{version}\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
    view = memoryview(bytearray(1 << 20))
    total = len(first)  # the response head (and the start of the body), to check the status
    while True:
        n = sock.recv_into(view)
        if not n:
            break
        if len(first) < 4096:
            first += bytes(view[: min(n, 4096)])
        total += n
    elapsed = time.perf_counter() - started
    head_end = first.find(b"\r\n\r\n")
    if head_end < 0 or first.split(b" ", 2)[1:2] != [b"200"]:
        raise RuntimeError(f"GET {path} via {proxy}: {first[:80]!r}")
    body = total - head_end - 4
    return body / elapsed, body


def tunnel_download(proxy: tuple[str, int], origin: tuple[str, int], path: str) -> tuple[float, int]:
    """GET ``path`` from ``origin`` through a CONNECT tunnel of ``proxy``: (bytes/s, body bytes)."""
    host, port = origin
    with socket.create_connection(proxy, timeout=30) as sock:
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"{proxy} closed the CONNECT")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        if head.split(b" ", 2)[1:2] != [b"200"]:
            raise RuntimeError(f"CONNECT via {proxy}: {head[:80]!r}")
        return timed_get(sock, proxy, origin, path, first=rest)


# a big pool -------------------------------------------------------------------------------
def generated_pool(count: int, seed: int = 7) -> list[tuple[str, int, str, str, str]]:
    """``count`` distinct (host, port, protocol, country, anonymity) on 127.0.0.0/8 (never dialled
    during the bench, but even a check would stay on loopback)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        host = f"127.{10 + i // 60000}.{(i // 250) % 240 + 1}.{i % 250 + 1}"
        out.append((host, 1024 + rng.randrange(60000), rng.choice(["http", "http", "socks5", "socks4"]),
                    rng.choice(COUNTRIES), rng.choice(["transparent", "anonymous", "elite"])))
    return out


async def fill_pool(store: Any, count: int, *, latency: Callable[[], float]) -> None:
    """The generated pool into ``store`` (SQLite or PostgreSQL), half active and half dead, all just
    checked (so a scheduler has nothing due); only the store writes SQL."""
    from pool.models import AnonymityLevel, ProxyProtocol, ProxyStatus, UpstreamURL

    rows = generated_pool(count)
    half = count // 2
    urls = [UpstreamURL(ProxyProtocol(p), h, port) for h, port, p, _, _ in rows]
    await store.insert_proxies_bulk(urls[:half], ProxyStatus.ACTIVE)
    await store.insert_proxies_bulk(urls[half:], ProxyStatus.DEAD)
    facts = {(h, port, p): (c, a) for h, port, p, c, a in rows}
    now = datetime.now(UTC)
    proxies = await store.all_proxies()
    for proxy in proxies:
        country, anonymity = facts[(proxy.host, proxy.port, proxy.protocol.value)]
        proxy.country, proxy.anonymity, proxy.last_checked = country, AnonymityLevel(anonymity), now
        proxy.latency_ms, proxy.success_ratio, proxy.check_history = latency(), 1.0, "1"
        if proxy.status is ProxyStatus.DEAD:
            proxy.dead_since, proxy.consecutive_failures, proxy.check_history = now, 1, "0"
    for start in range(0, len(proxies), 10_000):
        await store.save_results([(p, ()) for p in proxies[start : start + 10_000]])
