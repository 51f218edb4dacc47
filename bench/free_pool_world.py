"""One copy of the free-pool bench's world, in one process: misbehaving upstreams, sites, and a scraper.

Run by ``bench/free_pool_bench.py`` (one process per gateway measured, so that a gateway's learning
cannot spill into another's world and each world's CPU is its own):

    python bench/free_pool_world.py --spec SPEC.json --world N

Everything listens on 127.<base+N>.0.0/16 (ephemeral ports) and stays on loopback:

- upstreams: HTTP proxies (absolute-form GET and CONNECT, keep-alive) and SOCKS5 proxies (no auth,
  names resolved by the proxy), each listening on its own 127.B.X.1 and leaving from its exit address
  (``local_addr``), so the sites and the judge see which exit carried a request.  Every answer's first
  byte is ``base`` seconds late (each proxy's own latency).  Behaviours, as the spec gives them:
  ``healthy``; ``slow`` (the first byte of every answer ``delay`` seconds later still);
  ``turns_slow`` (the same, from ``at`` seconds after go); ``dies`` (at ``at``: listener closed, live
  connections reset, later ones refused); ``stalls`` (at ``at``: becomes a black hole); ``black_hole``
  (accepts and never answers); ``resets`` (a ``share`` of connections reset before any answer byte);
  ``truncates`` (a ``share`` of answers cut half-way); ``shared_exit`` / ``subnet`` (healthy, but
  several leave from one exit address / one /24).
- sites: one origin on 127.B.250.1 answering ``site-*.test`` (the upstreams resolve those names to it;
  no gateway needs to): ``/p/N`` is a page of known content; per site, some exits get a 403, some a 200
  captcha page, and exits over a rate get 429 (limits are per exit address, as a site sees them).
- the scraper (after ``go``): N GETs at concurrency C, paced at R a second, through one gateway, a new
  connection each (the gateway rotates per request), each checked for status 200 and the exact page; which upstreams a
  request went through is recorded by the upstreams themselves (the ``rid`` in the URL).

Protocol on stdin/stdout, one JSON object a line: the world prints ``{"ready": ...}``; the bench sends
``{"go": {...}}``; the world prints ``{"result": ...}`` and keeps serving until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import socket
import struct
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

PAGE_PATH = "/p/"
CAPTCHA_PAGE = (
    b"<!doctype html><html><head><title>Just a moment...</title></head><body>"
    b"<h1>Please verify you are a human</h1><div class=\"captcha\">complete the captcha to continue</div>"
    b"</body></html>\n"
)
BANNED_PAGE = b"<!doctype html><title>403 Forbidden</title><h1>Access denied</h1>\n"
LIMITED_PAGE = b"<!doctype html><title>429 Too Many Requests</title><h1>Slow down</h1>\n"
MAX_HEAD = 65536


def page_body(site: str, n: int, size: int) -> bytes:
    """The page ``/p/N`` of ``site``: ``size`` bytes any client can recompute (never says captcha)."""
    head = f"<!doctype html><title>{site} page {n}</title><pre>\n".encode()
    digest = hashlib.sha256(f"{site}/{n}".encode()).hexdigest().encode() + b"\n"
    body = head + digest * (size // len(digest) + 1)
    return body[: size - 7] + b"</pre>\n"


def address(base: int, world: int, third: int, fourth: int) -> str:
    return f"127.{base + world}.{third}.{fourth}"


# plumbing ----------------------------------------------------------------------------------
def rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashing or overloaded proxy does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    except asyncio.LimitOverrunError:
        return b""


def parse_headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
    return lines[0], headers


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def rid_of(target: str) -> str | None:
    query = urlsplit(target).query
    values = parse_qs(query).get("rid")
    return values[0] if values else None


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


# the world -------------------------------------------------------------------------------
@dataclass
class Upstream:
    name: str
    scheme: str  # http | socks5
    kind: str
    listen: str
    exit: str
    delay: float = 0.0
    at: float = 0.0
    share: float = 0.0
    base: float = 0.0  # every answer's first byte this late (a free proxy's own latency)
    port: int = 0
    server: asyncio.base_events.Server | None = None
    live: set[asyncio.StreamWriter] = field(default_factory=set)
    dead: bool = False  # dies: listener closed;  stalls: black hole from now on
    slow_now: bool = False
    connections: int = 0


class World:
    def __init__(self, spec: dict[str, Any], world: int) -> None:
        self.spec = spec
        self.world = world
        base = spec["base"]
        self.origin_host = address(base, world, 250, 1)
        self.origin_port = 0
        self.sites: dict[str, dict[str, Any]] = spec["sites"]
        self.upstreams = [
            Upstream(u["name"], u["scheme"], u["kind"], address(base, world, *u["listen"]),
                     address(base, world, *u["exit"]), u.get("delay", 0.0), u.get("at", 0.0), u.get("share", 0.0),
                     base=u.get("base", 0.0))
            for u in spec["upstreams"]
        ]
        self.rng = random.Random(spec["seed"] * 1000 + world)
        self.seen: dict[str, list[str]] = defaultdict(list)  # rid -> upstream names, in order
        self.exit_of: dict[str, str] = {}  # rid -> exit address the site saw (last)
        self.windows: dict[tuple[str, str], tuple[float, int]] = {}
        self.site_hits: dict[str, int] = defaultdict(int)
        self.exit_hits: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # site -> exit -> n
        self.t0: float | None = None

    def exit_key(self, ip: str) -> str:
        parts = ip.split(".")
        return f"{parts[2]}.{parts[3]}" if len(parts) == 4 else ip

    def resolve(self, host: str) -> str | None:
        host = host.lower().rstrip(".")
        if host in self.sites:
            return self.origin_host
        try:
            socket.inet_aton(host)
        except OSError:
            return None
        return host if host.startswith("127.") else None  # loopback only, even for a judge

    def note(self, up: Upstream, rid: str | None) -> None:
        if rid is not None:
            self.seen[rid].append(up.name)

    async def start(self) -> None:
        origin = await asyncio.start_server(self.site, self.origin_host, 0, backlog=1024)
        self.origin_port = origin.sockets[0].getsockname()[1]
        for up in self.upstreams:
            handler = self.http_client if up.scheme == "http" else self.socks_client
            up.server = await asyncio.start_server(
                lambda r, w, up=up, handler=handler: handler(r, w, up), up.listen, 0, backlog=1024
            )
            up.port = up.server.sockets[0].getsockname()[1]

    def go(self) -> None:
        self.t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        for up in self.upstreams:
            if up.kind == "dies":
                loop.call_later(up.at, self.kill, up)
            elif up.kind == "stalls":
                loop.call_later(up.at, setattr, up, "dead", True)
            elif up.kind == "turns_slow":
                loop.call_later(up.at, setattr, up, "slow_now", True)

    def kill(self, up: Upstream) -> None:
        up.dead = True
        if up.server is not None:
            up.server.close()
        for w in list(up.live):
            rst(w)
        up.live.clear()

    # behaviour -------------------------------------------------------------------------------
    def delay_of(self, up: Upstream) -> float:
        if up.kind == "slow" or (up.kind == "turns_slow" and up.slow_now):
            return up.base + up.delay
        return up.base

    def black(self, up: Upstream) -> bool:
        return up.kind == "black_hole" or (up.kind == "stalls" and up.dead)

    def resets_now(self, up: Upstream) -> bool:
        return up.kind == "resets" and self.rng.random() < up.share

    def truncates_now(self, up: Upstream) -> bool:
        return up.kind == "truncates" and self.rng.random() < up.share

    async def hold(self, reader: asyncio.StreamReader, up: Upstream) -> None:
        """A black hole: take what comes (noting the requests inside a tunnel) and never answer."""
        try:
            while data := await reader.read(65536):
                self.sniff(up, data)
        except (ConnectionError, OSError):
            pass

    def sniff(self, up: Upstream, data: bytes) -> None:
        if data[:4] in (b"GET ", b"HEAD", b"POST"):  # a request's first line inside a tunnel
            self.note(up, rid_of(data.split(b" ", 2)[1].decode("latin-1", "replace")))

    async def dial(self, up: Upstream, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ip = self.resolve(host)
        if ip is None:
            raise OSError(f"cannot resolve {host}")
        return await asyncio.wait_for(asyncio.open_connection(ip, port, local_addr=(up.exit, 0)), 10)

    # HTTP upstream -----------------------------------------------------------------------------
    async def http_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream) -> None:
        if up.dead and up.kind == "dies":
            rst(writer)
            return
        up.live.add(writer)
        up.connections += 1
        try:
            while True:
                head = await read_head(reader)
                if not head:
                    return
                line, headers = parse_headers(head)
                parts = line.split(" ")
                if len(parts) != 3:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                method, target, version = parts
                self.note(up, rid_of(target))
                if self.black(up):
                    if method == "CONNECT":
                        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await self.hold(reader, up)
                    return
                if self.resets_now(up):
                    rst(writer)
                    return
                if method == "CONNECT":
                    await self.http_connect(reader, writer, up, target)
                    return
                if not await self.http_forward(reader, writer, up, method, target, version, headers):
                    return
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            up.live.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def http_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream,
                           target: str) -> None:
        host, _, port = target.rpartition(":")
        try:
            o_reader, o_writer = await self.dial(up, host.strip("[]"), int(port))
        except (OSError, ValueError, TimeoutError):
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await self.relay(reader, writer, o_reader, o_writer, up, sniff=True)

    async def http_forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream,
                           method: str, target: str, version: str, headers: list[tuple[str, str]]) -> bool:
        """One absolute-form request; True when the client connection stays open for another."""
        parts = urlsplit(target)
        client_keep = (header(headers, "connection") or header(headers, "proxy-connection") or "").lower() != "close"
        client_keep = client_keep and version == "HTTP/1.1"
        length = int(header(headers, "content-length") or 0)
        body = await reader.readexactly(length) if length else b""
        if parts.scheme != "http" or not parts.hostname:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        delay = self.delay_of(up)
        if delay:
            await asyncio.sleep(delay)
        try:
            o_reader, o_writer = await self.dial(up, parts.hostname, parts.port or 80)
        except (OSError, TimeoutError):
            msg = b"cannot reach the site\n"
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(msg), msg))
            return False
        try:
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            drop = {"connection", "proxy-connection", "keep-alive", "proxy-authorization"}
            lines = [f"{method} {path} HTTP/1.1"]
            lines += [f"{k}: {v}" for k, v in headers if k.lower() not in drop]
            lines += ["Connection: close", "", ""]
            o_writer.write("\r\n".join(lines).encode("latin-1") + body)
            o_head = await read_head(o_reader)
            if not o_head:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return False
            status_line, o_headers = parse_headers(o_head)
            o_length = header(o_headers, "content-length")
            o_body = await o_reader.readexactly(int(o_length)) if o_length is not None else await o_reader.read()
        finally:
            o_writer.close()
        keep = client_keep and o_length is not None
        out = [status_line] + [f"{k}: {v}" for k, v in o_headers if k.lower() not in {"connection", "keep-alive"}]
        out += [f"Connection: {'keep-alive' if keep else 'close'}", "", ""]
        answer = "\r\n".join(out).encode("latin-1") + o_body
        if self.truncates_now(up):
            writer.write(answer[: len(answer) - max(1, len(o_body) // 2)])
            await writer.drain()
            rst(writer)
            return False
        writer.write(answer)
        await writer.drain()
        return keep

    # SOCKS5 upstream ---------------------------------------------------------------------------
    async def socks_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Upstream) -> None:
        if up.dead and up.kind == "dies":
            rst(writer)
            return
        up.live.add(writer)
        up.connections += 1
        try:
            ver, n = await reader.readexactly(2)
            await reader.readexactly(n)
            if ver != 5:
                return
            writer.write(b"\x05\x00")
            ver, cmd, _, atyp = await reader.readexactly(4)
            if atyp == 1:
                host = socket.inet_ntoa(await reader.readexactly(4))
            elif atyp == 3:
                (size,) = await reader.readexactly(1)
                host = (await reader.readexactly(size)).decode("idna")
            elif atyp == 4:
                host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
            else:
                return
            (port,) = struct.unpack("!H", await reader.readexactly(2))
            if self.black(up):  # the handshake goes through, then nothing ever comes back
                writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
                await self.hold(reader, up)
                return
            if self.resets_now(up):
                rst(writer)
                return
            if cmd != 1:
                writer.write(b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00")
                return
            try:
                o_reader, o_writer = await self.dial(up, host, port)
            except (OSError, TimeoutError):
                writer.write(b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00")
                return
            bound = o_writer.get_extra_info("sockname")
            writer.write(b"\x05\x00\x00\x01" + socket.inet_aton(bound[0]) + struct.pack("!H", bound[1]))
            await self.relay(reader, writer, o_reader, o_writer, up, sniff=True)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            up.live.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, o_reader: asyncio.StreamReader,
                    o_writer: asyncio.StreamWriter, up: Upstream, sniff: bool = False) -> None:
        """Bytes both ways.  Each answer (the bytes after a request went up) starts ``delay_of`` late and
        may be cut half-way: a kept-alive tunnel pays the proxy's latency on every round trip."""
        asked = False  # a request went up and its answer has not started yet

        async def upward() -> None:
            nonlocal asked
            try:
                while data := await reader.read(65536):
                    if sniff:
                        self.sniff(up, data)
                    asked = True
                    o_writer.write(data)
                    await o_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                if not o_writer.transport.is_closing():
                    try:
                        o_writer.write_eof()
                    except (OSError, RuntimeError):
                        o_writer.close()

        async def downward() -> None:
            nonlocal asked
            first = True
            try:
                while data := await o_reader.read(65536):
                    if first or asked:
                        first, asked = False, False
                        delay = self.delay_of(up)
                        if delay:
                            await asyncio.sleep(delay)
                        if self.truncates_now(up):
                            writer.write(data[: max(1, len(data) // 2)])
                            await writer.drain()
                            rst(writer)
                            return
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                if not writer.transport.is_closing():
                    writer.close()

        up_task = asyncio.ensure_future(upward())
        try:
            await downward()
        finally:
            up_task.cancel()
            o_writer.close()

    # the sites ---------------------------------------------------------------------------------
    async def site(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        try:
            while True:
                head = await read_head(reader)
                if not head:
                    return
                line, headers = parse_headers(head)
                parts = line.split(" ")
                target = parts[1] if len(parts) == 3 else "/"
                host = (header(headers, "host") or "").rsplit(":", 1)[0].lower()
                status, body, extra = self.answer(host, target, peer)
                keep = (header(headers, "connection") or "").lower() != "close"
                head_out = (
                    f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'OK')}\r\nContent-Type: text/html\r\n"
                    f"Content-Length: {len(body)}\r\n{extra}Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
                )
                writer.write(head_out.encode() + body)
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def answer(self, host: str, target: str, peer: str) -> tuple[int, bytes, str]:
        site = self.sites.get(host)
        path = urlsplit(target).path
        if site is None or not path.startswith(PAGE_PATH):
            return 404, b"not here\n", ""
        rid = rid_of(target)
        if rid is not None:
            self.exit_of[rid] = peer
        key = self.exit_key(peer)
        self.site_hits[host] += 1
        self.exit_hits[host][key] += 1
        if key in site.get("ban403", ()):
            return 403, BANNED_PAGE, ""
        if key in site.get("captcha", ()):
            return 200, CAPTCHA_PAGE, ""
        rate = site.get("rate")
        if rate:
            limit, window = rate
            now = time.monotonic()
            start, count = self.windows.get((host, peer), (now, 0))
            if now - start >= window:
                start, count = now, 0
            count += 1
            self.windows[(host, peer)] = (start, count)
            if count > limit:
                return 429, LIMITED_PAGE, f"Retry-After: {int(window)}\r\n"
        try:
            n = int(path[len(PAGE_PATH):])
        except ValueError:
            return 404, b"no such page\n", ""
        return 200, page_body(host, n, site["page"]), ""

    # the scraper -------------------------------------------------------------------------------
    async def scrape(self, proxy: tuple[str, int], requests: int, concurrency: int, timeout: float,
                     seed: int, label: str, rate: float) -> dict[str, Any]:
        """``requests`` GETs, at most ``concurrency`` at once, request i not before i/``rate`` s (a
        polite scraper's pace, the same timeline through every gateway; 0: as fast as they answer)."""
        rng = random.Random(seed)
        names = sorted(self.sites)
        plan = [(rng.choice(names), rng.randrange(1, 10**6)) for _ in range(requests)]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)
        rows: list[dict[str, Any]] = [{} for _ in range(requests)]

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                site, n = plan[i]
                rid = f"{label}-{i}"
                if rate > 0:
                    await asyncio.sleep(max(0.0, begun + i / rate - time.perf_counter()))
                started = time.perf_counter()
                outcome = await self.fetch(proxy, site, n, rid, timeout)
                rows[i] = {"i": i, "site": site, "rid": rid, "outcome": outcome,
                           "seconds": time.perf_counter() - started}

        begun = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - begun
        await asyncio.sleep(0.2)  # let the last hedges and retries reach the upstreams' records
        kinds = {u.name: u.kind for u in self.upstreams}
        exit_kinds = {u.exit: u.kind for u in self.upstreams}
        for row in rows:
            row["upstreams"] = self.seen.get(row["rid"], [])
            row["kinds"] = [kinds[n] for n in row["upstreams"]]
            row["exit"] = self.exit_of.get(row["rid"])
            row["exit_kind"] = exit_kinds.get(row["exit"] or "")
        return {"wall_seconds": wall, "rows": rows}

    async def fetch(self, proxy: tuple[str, int], site: str, n: int, rid: str, timeout: float) -> str:
        url = f"http://{site}:{self.origin_port}{PAGE_PATH}{n}?rid={rid}"
        request = (f"GET {url} HTTP/1.1\r\nHost: {site}:{self.origin_port}\r\nUser-Agent: free-pool-bench\r\n"
                   "Accept: text/html\r\nConnection: close\r\n\r\n").encode()
        writer = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(*proxy)
                writer.write(request)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    return "no_answer" if not exc.partial else "truncated"
                status_line, headers = parse_headers(head)
                try:
                    status = int(status_line.split(" ")[1])
                except (IndexError, ValueError):
                    return "garbled"
                body = await read_body(reader, headers)
        except TimeoutError:
            return "timeout"
        except (ConnectionError, OSError):
            return "reset"
        finally:
            if writer is not None:
                writer.transport.abort()
        if body is None:
            return "truncated"
        if status != 200:
            return f"status_{status}"
        if body == CAPTCHA_PAGE:
            return "captcha"
        if body != page_body(site, n, self.sites[site]["page"]):
            return "corrupt"
        return "ok"


async def read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes | None:
    """The body by Content-Length, chunked coding, or to EOF; None when it ended short."""
    length = header(headers, "content-length")
    try:
        if (header(headers, "transfer-encoding") or "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return bytes(out)
                out += await reader.readexactly(size)
                await reader.readexactly(2)
        if length is not None:
            return await reader.readexactly(int(length))
        return await reader.read()
    except (asyncio.IncompleteReadError, ValueError, asyncio.LimitOverrunError):
        return None


STATUS_TEXT = {200: "OK", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}


def send(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main_async(spec: dict[str, Any], world_index: int) -> None:
    world = World(spec, world_index)
    await world.start()
    send({"ready": {"origin": [world.origin_host, world.origin_port],
                    "upstreams": [{"name": u.name, "kind": u.kind, "url": f"{u.scheme}://{u.listen}:{u.port}",
                                   "exit": u.exit} for u in world.upstreams]}})
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := await stdin.readline():
        if not line.strip():
            continue
        msg = json.loads(line)
        if "go" in msg:
            go = msg["go"]
            world.go()
            result = await world.scrape((go["proxy"][0], go["proxy"][1]), go["requests"], go["concurrency"],
                                        go["timeout"], go["seed"], go["label"], go.get("rate", 0.0))
            result["connections"] = {u.name: u.connections for u in world.upstreams}
            result["exit_hits"] = {site: sorted(hits.values(), reverse=True) for site, hits in world.exit_hits.items()}
            by_exit = {world.exit_key(u.exit): u for u in world.upstreams}
            result["busiest_exits"] = {
                site: [{"exit": key, "requests": n, "kind": by_exit[key].kind, "latency_s": by_exit[key].base}
                       for key, n in sorted(hits.items(), key=lambda kv: -kv[1])[:5] if key in by_exit]
                for site, hits in world.exit_hits.items()
            }
            send({"result": result})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--world", type=int, required=True)
    args = parser.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)
    try:
        asyncio.run(main_async(spec, args.world))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
