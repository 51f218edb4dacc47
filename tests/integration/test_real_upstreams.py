"""`proxy-pool serve` over real upstream software: tinyproxy, squid, microsocks (Debian) and pproxy.

Each upstream listens on its own 127.0.0.x and leaves from it (tinyproxy ``Bind``, squid
``tcp_outgoing_address``, microsocks ``-b``, pproxy ``@in``), so the origin's echo of the peer address
says which upstream carried a request.  The gateway is the real command in a subprocess, the client is
the real curl.  A software whose binary is absent is left out (CI installs them all: see .ci/run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp.test_utils import TestServer

from bench.upstreams import Service, Services, free_port, have
from tests.support.upstreams import Upstream, origin_app, start_pproxy
from tests.support.admin import token_beside

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = {"tinyproxy": "127.0.0.21", "squid": "127.0.0.22", "microsocks": "127.0.0.23"}
PPROXY_HOST = "127.0.0.24"


class Serve:
    """`python -m gateway serve` (the same as `proxy-pool serve`) in its own process group."""

    def __init__(self, tmp: Path, proxies: list[str]) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.admin_port = free_port()
        (tmp / "list.txt").write_text("\n".join(proxies) + "\n")
        (tmp / "pp.toml").write_text(
            # no public judges: loopback upstreams are judged by the admin's own /judge (no DNS, no internet)
            '[gateway]\nallowed_connect_ports = "*"\n[checker]\njudges = []\n'
        )
        self.argv = [
            sys.executable, "-m", "gateway", "serve", "--config", str(tmp / "pp.toml"),
            "--no-default-sources", "--proxies", str(tmp / "list.txt"), "--db", str(tmp / "pool.db"),
            "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}",
        ]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_POOL_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with (self.tmp / "serve.log").open("wb") as log:  # the child keeps its own descriptor
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self.tmp, start_new_session=True,
            )  # fmt: skip

    async def wait_active(self, count: int) -> list[dict]:
        """Poll the admin API until ``count`` proxies are active (bounded by the timeout)."""
        assert self.proc is not None
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(f"serve exited {self.proc.returncode}: {self.output()}")
                with contextlib.suppress(aiohttp.ClientError, FileNotFoundError):
                    auth = token_beside(self.tmp / "pool.db")  # written before the admin answers
                    async with http.get(
                        f"http://127.0.0.1:{self.admin_port}/api/proxies?status=active", headers=auth
                    ) as r:
                        body = await r.json()
                        if body["total"] >= count:
                            return body["proxies"]
                await asyncio.sleep(0.1)

    def output(self) -> str:
        return (self.tmp / "serve.log").read_text(errors="replace")[-3000:]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()


@pytest.fixture
async def real_upstreams() -> AsyncIterator[dict[str, str]]:
    """software -> proxy URL, for every software installed here; each leaves from its own address."""
    with Services() as services:
        started: list[Service] = []
        for software, host in DEBIAN.items():
            if have(software):
                started.append(getattr(services, software)(host))
        pproxy: Upstream = await start_pproxy(PPROXY_HOST, "http+socks5")
        try:
            urls = {s.software: s.url for s in started}
            urls["pproxy"] = pproxy.url("http")
            yield urls
        finally:
            await pproxy.stop()


@pytest.fixture
async def tls_origin() -> AsyncIterator[tuple[TestServer, Path]]:
    """An HTTPS origin echoing the peer address, and the CA file that curl should trust."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    server = TestServer(origin_app(), host="127.0.0.1")
    await server.start_server(ssl=ctx)
    with ca.cert_pem.tempfile() as ca_file:
        yield server, Path(ca_file)
    await server.close()


async def curl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "15", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"curl {' '.join(args)}: {err.decode().strip()}"
    return out.decode()


def exit_hosts(urls: dict[str, str]) -> dict[str, str]:
    """exit address -> software (each upstream leaves from the address it listens on)."""
    return {url.rsplit(":", 1)[0].split("//")[1]: software for software, url in urls.items()}


async def test_serve_rotates_http_and_https_across_real_upstream_software(real_upstreams, origin, tls_origin, tmp_path):
    """curl -x through `proxy-pool serve` over tinyproxy, squid, microsocks and pproxy: plain HTTP on one
    keep-alive client connection and HTTPS tunnels both rotate across every upstream."""
    exits = exit_hosts(real_upstreams)
    serve = Serve(tmp_path, list(real_upstreams.values()))
    await serve.start()
    try:
        active = await serve.wait_active(len(real_upstreams))
        assert {p["host"] for p in active} == set(exits)

        # plain HTTP: one curl, one keep-alive client connection, several requests
        n = 3 * len(exits)
        out = await curl("-x", serve.url, "-w", "\\n", *[f"http://127.0.0.1:{origin.port}/echo?i={i}" for i in range(n)])
        answers = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert len(answers) == n
        http_peers = Counter(exits.get(a["peer"], a["peer"]) for a in answers)
        assert set(http_peers) == set(real_upstreams), http_peers

        # HTTPS: a CONNECT tunnel per curl, TLS end to end with the origin
        tls, ca_file = tls_origin
        outs = await asyncio.gather(
            *[
                curl("-x", serve.url, "--cacert", str(ca_file), f"https://127.0.0.1:{tls.port}/echo?t={i}")
                for i in range(n)
            ]
        )
        https_peers = Counter(exits.get(json.loads(o)["peer"], json.loads(o)["peer"]) for o in outs)
        assert set(https_peers) == set(real_upstreams), https_peers
    except BaseException:
        print(serve.output())
        raise
    finally:
        await serve.stop()
    assert serve.proc is not None and serve.proc.returncode == 0, serve.output()
