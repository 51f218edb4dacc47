"""Requests/s through the gateway with ``auth = "users"`` (Basic auth + a charge per request) against
``auth = "none"``, in the same run, on the same machine, against the same upstream and origin.

    python bench/auth_bench.py [--seconds 5] [--connections 32] [--rounds 2] [--client wrk|aiohttp]

Three kinds of process so the gateway has a core to itself as far as the machine allows:

- this process starts an "infra" child: in-process pproxy SOCKS5 upstreams on 127.0.0.2.. and an
  aiohttp origin (``tests/support/upstreams.py``), all on loopback;
- per round and mode, a real ``python -m gateway serve`` (uvloop when installed) on a fresh database,
  fed the upstream list with ``--proxies``; the users mode gets a user made by ``users add``;
- the load: ``wrk`` when installed (absolute-form GETs with a Lua script), else N keep-alive aiohttp
  clients in a child process.

Rounds alternate none/users so drift in machine load hits both.  After each users round the ledger
is read back with ``users list`` to show the bench really was billed (spent == 2xx answers).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PY = sys.executable
CREDITS = 10**9


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (steadier than req/s on a shared machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# infra child ----------------------------------------------------------------------------------
async def run_infra(upstreams: int) -> None:
    """Serve upstreams and an origin until stdin closes; print their addresses as one JSON line."""
    from aiohttp.test_utils import TestServer

    from tests.support.upstreams import origin_app, start_pproxy

    ups = [await start_pproxy(f"127.0.0.{i + 2}", "socks5") for i in range(upstreams)]
    origin = TestServer(origin_app(), host="127.0.0.1")
    await origin.start_server()
    print(json.dumps({"upstreams": [u.url("socks5") for u in ups], "origin": origin.port}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await origin.close()
    for up in ups:
        await up.stop()


# one gateway ---------------------------------------------------------------------------------
async def cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "gateway", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"proxy-pool {' '.join(args)}: {err.decode().strip()}")
    return out.decode()


async def wait_ready(admin: str, want: int, timeout: float = 60.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with client.get(f"{admin}/api/stats") as resp:
                    if resp.status == 200 and (await resp.json())["pool"]["selectable"] >= want:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway not ready with {want} active upstreams after {timeout}s")


class Gateway:
    """A ``proxy-pool serve`` subprocess on a fresh database."""

    def __init__(self, workdir: Path, mode: str, upstreams: list[str]) -> None:
        self.dir = workdir / f"{mode}-{time.monotonic_ns()}"
        self.dir.mkdir()
        self.mode = mode
        self.upstreams = upstreams
        self.port, self.admin_port = free_port(), free_port()
        self.db = str(self.dir / "pool.db")
        self.password: str | None = None
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Gateway:  # noqa: PYI034
        config = self.dir / "proxy-pool.toml"
        config.write_text(
            f'[gateway]\nlisten = "127.0.0.1:{self.port}"\nauth = "{self.mode}"\n'
            f'[admin]\nlisten = "127.0.0.1:{self.admin_port}"\n'
            f'[storage]\npath = "{self.db}"\n'
            "[checker]\njudges = []\n"
            '[log]\nlevel = "warning"\n'
        )
        listing = self.dir / "upstreams.txt"
        listing.write_text("\n".join(self.upstreams) + "\n")
        if self.mode == "users":
            out = await cli(
                "users", "add", "bench", "--credits", str(CREDITS), "--format", "json", "--db", self.db
            )
            added = json.loads(out)
            self.password = added["password"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_POOL_")}
        serve = ["serve", "--config", str(config), "--proxies", str(listing), "--no-default-sources"]
        self.proc = await asyncio.create_subprocess_exec(
            PY,
            "-m",
            "gateway",
            *serve,
            cwd=self.dir,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_ready(f"http://127.0.0.1:{self.admin_port}", len(self.upstreams))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    @property
    def auth_header(self) -> str | None:
        if self.password is None:
            return None
        return "Basic " + base64.b64encode(f"bench:{self.password}".encode()).decode()

    async def spent(self) -> int:
        users = json.loads(await cli("users", "list", "--format", "json", "--db", self.db))
        return CREDITS - users[0]["credits"]


# load generators -----------------------------------------------------------------------------
async def load_wrk(gw: Gateway, target: str, seconds: float, connections: int) -> tuple[int, int]:
    script = gw.dir / "bench.lua"
    lines = ['wrk.method = "GET"', f'wrk.path = "{target}"']
    if gw.auth_header:
        lines.append(f'wrk.headers["Proxy-Authorization"] = "{gw.auth_header}"')
    script.write_text("\n".join(lines) + "\n")
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t",
        "2",
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{gw.port}/",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    text = out.decode()
    found = re.search(r"(\d+) requests in", text)
    if found is None:
        raise RuntimeError(f"wrk output not understood: {text!r}")
    total = int(found.group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = int(bad.group(1)) if bad else 0
    return total - errors, errors


async def _aiohttp_clients(
    proxy: str, target: str, auth: str | None, seconds: float, connections: int
) -> list[int]:
    import aiohttp

    headers = {"Proxy-Authorization": auth} if auth else {}
    ok = bad = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal ok, bad
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < stop:
                async with session.get(target, proxy=proxy, proxy_headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        ok += 1
                    else:
                        bad += 1

    await asyncio.gather(*(client() for _ in range(connections)))
    return [ok, bad]


async def load_aiohttp(gw: Gateway, target: str, seconds: float, connections: int) -> tuple[int, int]:
    args = json.dumps([f"http://127.0.0.1:{gw.port}", target, gw.auth_header, seconds, connections])
    proc = await asyncio.create_subprocess_exec(
        PY, __file__, "--load", args, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, _ = await proc.communicate()
    ok, bad = json.loads(out)
    return ok, bad


# the per-request cost itself ------------------------------------------------------------------
async def micro(n: int = 200_000) -> dict[str, float]:
    """Microseconds per request spent in header decoding + authenticate + charge, in this process."""
    from config.settings import CreditsSettings
    from gateway.proxy.routing import parse_proxy_authorization, route_for
    from pool.accounts import Accounts
    from pool.store import SqliteStore

    with tempfile.TemporaryDirectory(prefix="auth-micro-") as tmp:
        store = await SqliteStore.open(Path(tmp) / "m.db")
        try:
            accounts = await Accounts.open(store, CreditsSettings())
            new = await accounts.add_user("bench", CREDITS)
            header = "Basic " + base64.b64encode(f"bench-session-s1:{new.password}".encode()).decode()
            started = time.perf_counter()
            for _ in range(n):
                creds = parse_proxy_authorization(header)
                assert creds is not None
                name, _route = route_for(creds.username, {}, with_name=True)
                user = accounts.check_cached(name or "", creds.password)
                accounts.charge(user or "", 1)
            per_request = (time.perf_counter() - started) / n * 1e6
            started = time.perf_counter()
            for _ in range(n):
                accounts.check_cached("bench", new.password)
                accounts.charge("bench", 1)
            accounts_only = (time.perf_counter() - started) / n * 1e6
            await accounts.close()
        finally:
            await store.close()
    return {
        "us_header_route_auth_charge": round(per_request, 2),
        "us_authenticate_and_charge": round(accounts_only, 2),
    }


# main ----------------------------------------------------------------------------------------
async def bench(opts: argparse.Namespace) -> dict[str, Any]:
    infra = await asyncio.create_subprocess_exec(
        PY,
        __file__,
        "--infra",
        str(opts.upstreams),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,  # pproxy complains about tasks cut at exit
    )
    assert infra.stdout is not None and infra.stdin is not None
    info = json.loads(await asyncio.wait_for(infra.stdout.readline(), 30))
    target = f"http://127.0.0.1:{info['origin']}/echo"
    client = opts.client or ("wrk" if shutil.which("wrk") else "aiohttp")
    load = load_wrk if client == "wrk" else load_aiohttp
    results: dict[str, list[float]] = {"none": [], "users": []}
    cpu: dict[str, list[float]] = {"none": [], "users": []}
    billing: list[tuple[int, int]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
            for round_ in range(opts.rounds):
                for mode in ("none", "users"):
                    async with Gateway(Path(tmp), mode, info["upstreams"]) as gw:
                        warm, _ = await load(gw, target, 1.0, opts.connections)  # pools, scrypt cache
                        before = cpu_seconds(gw.proc.pid)  # type: ignore[union-attr]
                        ok, errors = await load(gw, target, opts.seconds, opts.connections)
                        used = cpu_seconds(gw.proc.pid) - before  # type: ignore[union-attr]
                    rps = ok / opts.seconds
                    results[mode].append(rps)
                    per_request = used / max(ok, 1) * 1e6
                    cpu[mode].append(per_request)
                    line = (
                        f"round {round_ + 1} auth={mode:<5} {rps:9.0f} req/s  cpu {per_request:5.0f} us/req"
                        f"  ({ok} ok, {errors} non-2xx)"
                    )
                    if mode == "users":
                        spent = await gw.spent()
                        billing.append((spent, warm + ok))
                        # wrk cuts in-flight requests at the deadline: those were billed but not counted
                        line += f"  billed {spent} credits for {warm + ok} 2xx (warm-up included)"
                    print(line, flush=True)
    finally:
        infra.stdin.close()
        await infra.wait()
    none, users = statistics.median(results["none"]), statistics.median(results["users"])
    return {
        **await micro(),
        "client": client,
        "connections": opts.connections,
        "seconds": opts.seconds,
        "rounds": opts.rounds,
        "cpu_us_per_request_none_median": round(statistics.median(cpu["none"]), 1),
        "cpu_us_per_request_users_median": round(statistics.median(cpu["users"]), 1),
        "cpu_users_vs_none_percent": round(
            (statistics.median(cpu["users"]) - statistics.median(cpu["none"])) / statistics.median(cpu["none"]) * 100, 1
        ),
        "rps_none_median": round(none),
        "rps_users_median": round(users),
        "users_vs_none_percent": round((users - none) / none * 100, 1),
        "rounds_none": [round(r) for r in results["none"]],
        "rounds_users": [round(r) for r in results["users"]],
        "billed_vs_2xx": billing,
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--infra":
        asyncio.run(run_infra(int(sys.argv[2])))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--load":
        proxy, target, auth, seconds, connections = json.loads(sys.argv[2])
        print(json.dumps(asyncio.run(_aiohttp_clients(proxy, target, auth, seconds, connections))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--upstreams", type=int, default=2)
    parser.add_argument("--client", choices=("wrk", "aiohttp"))
    opts = parser.parse_args()
    summary = asyncio.run(bench(opts))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
